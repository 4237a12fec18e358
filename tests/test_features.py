"""Feature-transfer helpers that must not scale with the vocabulary in memory."""

from __future__ import annotations

import pytest
import torch

from saetransfer.features import frobenius


def test_frobenius_in_column_blocks_equals_the_one_shot_norm():
    """||W_U|| and ||W_U - W_U'|| a block of columns at a time (a ragged last block included) = torch's norm."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 1001, generator=gen), torch.randn(16, 1001, generator=gen)
    assert frobenius(a, columns=64) == pytest.approx(torch.linalg.norm(a.double()).item(), rel=1e-12)
    assert frobenius(a, b, columns=64) == pytest.approx(torch.linalg.norm(a.double() - b.double()).item(), rel=1e-12)
    assert frobenius(a, a, columns=64) == 0.0  # the identity pair's distance is exactly 0
    assert frobenius(a.to(torch.bfloat16), columns=7) > 0
