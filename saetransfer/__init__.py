"""saetransfer: does an SAE trained on a base language model still work on its finetune?

The core package: registry, loading, one streaming evaluation pass, metrics, verdicts and the report.
It knows nothing of pytest; `findings/` turns its results into tests. In a notebook:
`saetransfer.evaluate(base=..., finetune=..., sae=..., hook=..., dataset=...)` (`saetransfer.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"evaluate": "saetransfer.api", "Evaluation": "saetransfer.api"}
"""Loaded on first use, so `import saetransfer` stays cheap (no torch, no SAELens)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saetransfer' has no attribute {name!r}")


__all__ = ["Evaluation", "__version__", "evaluate"]
