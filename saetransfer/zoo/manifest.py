"""manifest.json: what was built, from what, with which numbers, and the sha256 of every file."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_PACKAGES = ("torch", "transformers", "tokenizers", "transformer-lens", "sae-lens", "datasets", "numpy", "pyarrow")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under root except the manifest itself, keyed by POSIX relative path."""
    return {p.relative_to(root).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def write(root: Path, body: dict[str, Any]) -> dict[str, Any]:
    manifest = {"format_version": FORMAT_VERSION, **body, "files": file_table(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return manifest


def read(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST}")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path} is not a zoo manifest (format_version {FORMAT_VERSION} with a files table)")
    return manifest


def verify(root: Path) -> list[str]:
    """Problems found (empty = every file matches the manifest and no file is unlisted)."""
    try:
        listed = read(root)["files"]
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        return [str(e)]
    problems = []
    for rel, entry in sorted(listed.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"missing: {rel}")
        elif p.stat().st_size != entry["bytes"] or sha256(p) != entry["sha256"]:
            problems.append(f"changed: {rel} (sha256 {sha256(p)[:12]}…, manifest {entry['sha256'][:12]}…)")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.name != MANIFEST and rel not in listed:
            problems.append(f"not in manifest: {rel}")
    return problems


def python_tag() -> str:
    return f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}"
