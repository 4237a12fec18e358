"""Writing files safely: one atomic writer for the cache, the records and the report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, and only when the bytes change (unchanged files keep their mtime).

    A reader (another xdist worker, a report render) never sees a half-written file.
    """
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # unique per writer
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are files to share and commit
    os.replace(tmp, path)
