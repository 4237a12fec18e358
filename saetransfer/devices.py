"""Which GPU an xdist worker uses: one worker per GPU, chosen before CUDA initialises.

`pytest -n N --gpu` with `CUDA_VISIBLE_DEVICES=0,1,2,3` binds worker `gwK` to the K-th listed device
(modulo the count, so more workers than GPUs share them in turn) by narrowing the worker's own
`CUDA_VISIBLE_DEVICES` to that one entry; CUDA reads the variable when it initialises, so this must run
before anything touches CUDA (the root conftest's `pytest_configure` does it first). Each pair's tests
stay on one worker (`--dist loadgroup`), so a pair runs on one GPU. Without `CUDA_VISIBLE_DEVICES` the
workers are not bound (listing the GPUs would initialise CUDA), so set it to use several GPUs. A model
larger than one GPU is TransformerLens's to split (`n_devices`, set from `SAETRANSFER_N_DEVICES` by
`loading.load_model`), not this module's.

Imports nothing heavy: it runs before torch initialises CUDA.
"""

from __future__ import annotations


def worker_index(worker_id: str) -> int:
    """`gw3` -> 3 (pytest-xdist's worker ids)."""
    if not worker_id.startswith("gw") or not worker_id[2:].isdigit():
        raise ValueError(f"not a pytest-xdist worker id: {worker_id!r} (expected gw0, gw1, ...)")
    return int(worker_id[2:])


def worker_gpu(visible: str | None, worker_id: str) -> str | None:
    """The one `CUDA_VISIBLE_DEVICES` entry (index or GPU UUID) for `worker_id`, or None to leave it unbound.

    Raises:
        ValueError: `visible` is set but lists no device (CUDA would then see none: a run with --gpu
            could only fail later, with a less clear message).
    """
    if visible is None:
        return None
    devices = [d.strip() for d in visible.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"CUDA_VISIBLE_DEVICES={visible!r} lists no device; unset it or list the GPUs to use")
    return devices[worker_index(worker_id) % len(devices)]
