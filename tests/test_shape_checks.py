"""The root conftest's claim holds: under pytest, jaxtyping annotations in saetransfer are checked at runtime."""

from __future__ import annotations

import pytest
import torch

from saetransfer.loading.tokens import tokens_sha256


def test_a_wrong_shape_is_refused() -> None:
    tokens_sha256(torch.zeros(2, 4, dtype=torch.long))  # rows x ctx: fine
    with pytest.raises(TypeError, match="rows ctx"):  # jaxtyping's TypeCheckError is a TypeError
        tokens_sha256(torch.zeros(8, dtype=torch.long))


def test_a_wrong_dtype_is_refused() -> None:
    with pytest.raises(TypeError):
        tokens_sha256(torch.zeros(2, 4))
