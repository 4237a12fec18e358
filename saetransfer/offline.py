"""The process environment the entry points set, in one place: offline by default, and the libraries' switches.

The Hub libraries (huggingface_hub, datasets, transformers) read these variables when first
imported, and torch's CPU allocator at its first large allocation, so callers set them before anything
imports those libraries. This module therefore imports nothing but `os` and `sys`: the root conftest
calls it before torch or saetransfer's modules load.
"""

from __future__ import annotations

import os
import sys

HUB_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Set to 1 unless downloads are allowed: only local files and the HF cache are read."""
HUGE_PAGES = {"THP_MEM_ALLOC_ENABLE": "1"} if sys.platform == "linux" else {}
"""torch's CPU allocator (`c10/core/impl/alloc_cpu.cpp`, `is_thp_alloc_enabled`) then page-aligns every buffer of
2 MiB or more and advises the kernel to back it with transparent huge pages (`madvise(MADV_HUGEPAGE)`, which
Linux honours under its default `madvise` policy; a failure is one warning, never an error). The pass's buffers
(activations, the [positions, latents] encodings, blocks of logits) are then reached through far fewer TLB
entries. torch reads the variable once, at its first such allocation, so it is set before any model loads.
Measured in `benchmarks/README.md`. Linux only: torch advises nothing elsewhere."""
ALWAYS = {"WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", **HUGE_PAGES}
"""SAELens imports wandb (never wanted here); fast tokenizers warn after a fork without the second."""


def set_offline_environment(*, allow_hub: bool = False) -> None:
    """Offline unless `allow_hub`; a variable the user already set wins (setdefault)."""
    if not allow_hub:
        for var in HUB_OFFLINE:
            os.environ.setdefault(var, "1")
    for var, value in ALWAYS.items():
        os.environ.setdefault(var, value)
