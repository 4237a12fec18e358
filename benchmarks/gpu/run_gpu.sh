#!/usr/bin/env bash
# The GPU check on a machine without network: install the carried wheels, check the imports, run run_gpu.py.
#
#   benchmarks/gpu/run_gpu.sh [--dry-run] [run_gpu.py options]
#
# Environment: PYTHON (default python3), WHEELS (default .whl/ in the checkout: see benchmarks/gpu/README.md),
# SITE (where the wheels go; default /tmp/saetransfer-site), OUT (if set, results are copied there too).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-$ROOT/.whl}"
SITE="${SITE:-/tmp/saetransfer-site}"

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (no index, no dependencies)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in $WHEELS: using what $PYTHON already has"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

# Everything the project and its tests import; a missing one is named before anything runs.
"$PYTHON" - <<'PY'
import importlib, sys
names = ["torch", "transformers", "sae_lens", "transformer_lens", "datasets", "tokenizers", "safetensors",
         "pandas", "pyarrow", "matplotlib", "tqdm", "filelock", "jaxtyping", "scipy",
         "pytest", "xdist", "hypothesis", "syrupy", "beartype"]  # sentencepiece: only for tokenizer.model-only repos
missing = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as err:  # an import that fails for another reason is as fatal
        missing.append(f"{name} ({type(err).__name__}: {err})")
if missing:
    sys.exit("cannot import: " + "; ".join(missing) + "\ncarry their wheels (benchmarks/gpu/README.md)")
import torch, sae_lens, transformer_lens, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}), "
      f"sae_lens {getattr(sae_lens, '__version__', '?')}, transformers {transformers.__version__}")
PY

exec "$PYTHON" benchmarks/gpu/run_gpu.py "$@"
