"""Are the base's token ids safe to feed the finetune? Vocabulary comparison and compatibility.

`compare_tokenizers` reproduces the informational table of the post's code exactly (`compare_tokenizers` in
`saetuning/get_results.py` of github.com/tommasomncttn/SAE-Transferability).
`check_compatible` is the decision the post's code never made: every id that occurs in the evaluation
sample must map to the same token string in both tokenizers (the finetune is fed the base's ids).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Int
from torch import Tensor

from saetransfer.loading.errors import IncompatibleTokenizersError

MAX_KEYS = 50
"""Differing keys kept per list in a comparison (the post's code logged all of them to a file)."""
MAX_EXAMPLES = 10


@runtime_checkable  # the shape-checking hook checks arguments against it
class HasVocab(Protocol):
    def get_vocab(self) -> dict[str, int]: ...


def good_token_pct(size: int, only_here: int, mismatched: int) -> float:
    """The post's code's "Good Tokens (%)": (|vocab| - |keys only here| - |mismatched ids|) / |vocab| x 100.

    Already a percentage: GPT-2 vs GPT-2-Portuguese gives (50257 - 37309 - 12946) / 50257 x 100
    = 0.00398 (two tokens), not 0.4 %.
    """
    if size <= 0:
        raise ValueError(f"vocabulary size must be positive, got {size}")
    return (size - only_here - mismatched) / size * 100


@dataclass(frozen=True)
class TokenizerComparison:
    """The post's code's vocabulary comparison, plus the first differing keys (sorted)."""

    base_size: int
    finetune_size: int
    only_in_base: int
    only_in_finetune: int
    mismatched: int
    """Keys in both vocabularies whose ids differ."""
    good_base_pct: float
    good_finetune_pct: float
    only_in_base_keys: tuple[str, ...]
    only_in_finetune_keys: tuple[str, ...]
    mismatched_keys: tuple[tuple[str, int, int], ...]
    """(key, base id, finetune id)."""

    @property
    def identical(self) -> bool:
        return self.only_in_base == self.only_in_finetune == self.mismatched == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("only_in_base_keys", "only_in_finetune_keys"):
            out[key] = list(out[key])
        out["mismatched_keys"] = [list(k) for k in self.mismatched_keys]
        return out


def compare_vocabs(base: Mapping[str, int], finetune: Mapping[str, int], *,
                   keep: int = MAX_KEYS) -> TokenizerComparison:
    """`compare_tokenizers` on two `get_vocab()` dicts."""
    only_base = sorted(base.keys() - finetune.keys())
    only_ft = sorted(finetune.keys() - base.keys())
    mismatched = sorted(k for k in base.keys() & finetune.keys() if base[k] != finetune[k])
    return TokenizerComparison(
        base_size=len(base), finetune_size=len(finetune), only_in_base=len(only_base),
        only_in_finetune=len(only_ft), mismatched=len(mismatched),
        good_base_pct=good_token_pct(len(base), len(only_base), len(mismatched)),
        good_finetune_pct=good_token_pct(len(finetune), len(only_ft), len(mismatched)),
        only_in_base_keys=tuple(only_base[:keep]), only_in_finetune_keys=tuple(only_ft[:keep]),
        mismatched_keys=tuple((k, base[k], finetune[k]) for k in mismatched[:keep]))


def compare_tokenizers(base_tok: HasVocab, ft_tok: HasVocab) -> TokenizerComparison:
    """The post's code's tokenizer comparison (sizes, keys only on one side, mismatched ids, good-token %)."""
    return compare_vocabs(base_tok.get_vocab(), ft_tok.get_vocab())


@dataclass(frozen=True)
class Compatibility:
    """Whether the ids of an evaluation sample mean the same tokens in both tokenizers."""

    compatible: bool
    reason: str
    n_distinct_ids: int
    n_differing: int
    examples: tuple[tuple[int, str | None, str | None], ...]
    """Up to 10 differing ids as (id, base token, finetune token); None = id not in that vocabulary."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples": [list(e) for e in self.examples]}


def check_compatible(base_tok: HasVocab, ft_tok: HasVocab, token_ids: Int[Tensor, "..."]) -> Compatibility:
    """Compatible iff every id used in `token_ids` maps to the same token string in both tokenizers.

    A finetune that differs only in unused special tokens (Gemma) or appends tokens (MetaMath's PAD)
    is compatible; two independently trained BPEs are not, even though they share byte tokens.
    """
    if token_ids.is_floating_point() or token_ids.is_complex():
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    ids = torch.unique(token_ids.detach().cpu()).tolist()
    base = {i: k for k, i in base_tok.get_vocab().items()}
    ft = {i: k for k, i in ft_tok.get_vocab().items()}
    differing = [(i, base.get(i), ft.get(i)) for i in ids if base.get(i) is None or base.get(i) != ft.get(i)]
    if not differing:
        reason = f"all {len(ids)} distinct ids of the sample map to the same tokens in both tokenizers"
    else:
        shown = ", ".join(f"{i}: {b!r} vs {f!r}" for i, b, f in differing[:3])
        reason = (f"{len(differing)} of {len(ids)} distinct ids of the sample map to different tokens "
                  f"(base vs finetune: {shown})")
    return Compatibility(compatible=not differing, reason=reason, n_distinct_ids=len(ids),
                         n_differing=len(differing), examples=tuple(differing[:MAX_EXAMPLES]))


def require_compatible(base_tok: HasVocab, ft_tok: HasVocab, token_ids: Int[Tensor, "..."]) -> Compatibility:
    """`check_compatible`, raising `IncompatibleTokenizersError` instead of returning an incompatible verdict."""
    result = check_compatible(base_tok, ft_tok, token_ids)
    if not result.compatible:
        raise IncompatibleTokenizersError(
            f"the finetune would read the base tokenizer's ids as other tokens: {result.reason}")
    return result
