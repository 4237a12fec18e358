"""RunConfig.for_pair: the one place options become a run configuration."""

from __future__ import annotations

import torch

from saetransfer import engine
from saetransfer.config import RunConfig
from saetransfer.registry import load_registry


def _pair():
    return load_registry()[0]


def test_cpu_defaults_take_the_pairs_budget() -> None:
    pair = _pair()
    config = RunConfig.for_pair(pair)
    assert (config.n_tokens, config.device, config.dtype, config.allow_hub) == (pair.n_tokens, "cpu", "float32", False)
    assert config.torch_dtype is torch.float32


def test_options_override() -> None:
    config = RunConfig.for_pair(_pair(), tokens=1024, gpu=True, hub=True, progress=False)
    assert (config.n_tokens, config.device, config.dtype, config.allow_hub, config.progress) == (
        1024, "cuda", "bfloat16", True, False)
    assert config.torch_dtype is torch.bfloat16


def test_engine_keeps_the_old_name() -> None:
    assert engine.RunConfig is RunConfig
