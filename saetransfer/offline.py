"""The offline environment, in one place.

The Hub libraries (huggingface_hub, datasets, transformers) read these variables when first
imported, so callers set them before anything imports those libraries. This module therefore
imports nothing but `os`: the root conftest calls it before torch or saetransfer's modules load.
"""

from __future__ import annotations

import os

HUB_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Set to 1 unless downloads are allowed: only local files and the HF cache are read."""
ALWAYS = {"WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
"""SAELens imports wandb (never wanted here); fast tokenizers warn after a fork without the second."""


def set_offline_environment(*, allow_hub: bool = False) -> None:
    """Offline unless `allow_hub`; a variable the user already set wins (setdefault)."""
    if not allow_hub:
        for var in HUB_OFFLINE:
            os.environ.setdefault(var, "1")
    for var, value in ALWAYS.items():
        os.environ.setdefault(var, value)
