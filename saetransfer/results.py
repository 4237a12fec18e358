"""The result of evaluating one pair: a frozen dataclass of builtins, JSON-ready, cached on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

METRIC_VERSION = 2
"""Bump when any metric's definition or the engine's masking changes: cached results are keyed on it."""


@dataclass(frozen=True)
class PairResult:
    """Everything the findings and the report read about one registry entry.

    Sub-results are dicts of builtins (floats, ints, strings, lists) so the whole record
    round-trips through JSON. A section is None when it was not computed (e.g. nothing past the
    tokenizer check for a pair whose tokenizers are incompatible).
    """

    provenance: dict[str, Any]
    tokenizer: dict[str, Any]
    """The seed's comparison table (sizes, keys only in one side, mismatched ids, good-token %)."""
    compatibility: dict[str, Any]
    """Whether the evaluation sample's ids mean the same in both tokenizers, and why."""
    verdict: dict[str, Any]
    masking: dict[str, Any] | None = None
    similarity: dict[str, Any] | None = None
    sae: dict[str, dict[str, Any]] = field(default_factory=dict)
    """'base', 'finetune' (the base SAE on each model) and 'native_on_finetune' when the pair has one."""
    density: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    worst_tokens: dict[str, Any] | None = None

    @property
    def comparable(self) -> bool:
        return bool(self.compatibility.get("compatible"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        # NaN/Infinity are written as Python's json writes them (JS literals): undefined metrics stay
        # floats on the way back, and a decoded token that reads "nan" stays a string.
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairResult:
        return cls(**data)
