"""How a pair is evaluated, and the one place that turns command-line options into that."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from saetransfer.registry import Pair

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_and_dtype(gpu: bool) -> tuple[str, str]:
    """CUDA in bf16 under --gpu (fp16 overflows Gemma), else CPU in fp32. Metrics are fp32/fp64 either way."""
    return ("cuda", "bfloat16") if gpu else ("cpu", "float32")


@dataclass(frozen=True)
class RunConfig:
    """How a pair is evaluated; everything here is part of the cache key."""

    n_tokens: int
    device: str = "cpu"
    dtype: str = "float32"
    allow_hub: bool = False
    progress: bool = True
    tokens_override: bool = False
    """`n_tokens` came from `--tokens`: it is then every evaluation's budget, not just this one's."""

    @classmethod
    def for_pair(cls, pair: Pair, *, tokens: int | None = None, gpu: bool = False, hub: bool = False,
                 progress: bool = True) -> RunConfig:
        """From the options (--tokens, --gpu, --hub): `tokens` overrides the pair's own budget."""
        device, dtype = device_and_dtype(gpu)
        return cls(n_tokens=tokens or pair.n_tokens, device=device, dtype=dtype, allow_hub=hub, progress=progress,
                   tokens_override=tokens is not None)

    def for_member(self, member: Pair, of: Pair) -> RunConfig:
        """The config of `member`, evaluated in one pass with `of` (whose config this is): its own budget,
        unless this budget is an override (`--tokens`, or a budget other than `of`'s own), which then
        applies to every evaluation of the pass."""
        override = self.tokens_override or self.n_tokens != of.n_tokens
        return self if override else replace(self, n_tokens=member.n_tokens)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]
