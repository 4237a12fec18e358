#!/usr/bin/env bash
# Download the wheels a GPU machine without network lacks (benchmarks/gpu/wheels.txt) for its Python (3.12,
# x86-64 Linux), on any machine with PyPI access:  benchmarks/gpu/fetch_wheels.sh [DEST]   (default: .whl/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" -r "$ROOT/benchmarks/gpu/wheels.txt"
# wandb's service binaries (wandb/bin: 19 of the wheel's 20 MB) run only for an online or offline wandb.init;
# SAELens imports wandb and this project never starts a run, so they stay behind (a smaller carry).
"$PYTHON" - "$DEST" <<'PY'
import sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("wandb-*.whl"):
    with zipfile.ZipFile(wheel) as src:
        keep = [i for i in src.infolist() if not i.filename.startswith("wandb/bin/")]
        if len(keep) == len(src.infolist()):
            continue
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in keep:
                dst.writestr(info, src.read(info))
    slim.replace(wheel)
    print(f"{wheel.name}: wandb/bin left out ({wheel.stat().st_size / 2**20:.1f} MB)")
PY
