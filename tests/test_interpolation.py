"""Weight interpolation between two checkpoints: the finetune-strength axis used by the zoo's ladder pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saetransfer.loading import load_model
from saetransfer.loading.testing import save_tiny_model, save_word_tokenizer, word_vocab
from saetransfer.registry import ModelSource, RegistryError, parse_pair

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*This SAE has non-empty:UserWarning")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lerp")
    vocab = word_vocab([f"w{i}" for i in range(40)])
    dirs = []
    for seed in (0, 1):
        folder = root / f"m{seed}"
        save_word_tokenizer(folder, vocab)
        save_tiny_model(folder, "GPT2LMHeadModel", vocab_size=len(vocab), seed=seed)
        dirs.append(folder)
    return dirs[0], dirs[1]


def weights(source: ModelSource) -> torch.Tensor:
    model = load_model(source, processing={k: False for k in ("fold_ln", "center_writing_weights",
                                                                "center_unembed", "fold_value_biases")}).model
    return model.blocks[0].attn.W_Q.detach().clone()


def test_alpha_moves_along_the_line(checkpoints):
    start, end = checkpoints
    w0, w1 = weights(ModelSource(path=start)), weights(ModelSource(path=end))
    half = weights(ModelSource(path=end, interpolate_from=start, alpha=0.5))
    torch.testing.assert_close(half, (w0 + w1) / 2)
    torch.testing.assert_close(weights(ModelSource(path=end, interpolate_from=start, alpha=0.0)), w0)


def test_registry_validates_interpolation_fields(tmp_path):
    raw = {"id": "a__b", "base": {"path": "m"}, "finetune": {"hub": "x/y", "interpolate_from": "m"},
           "sae": {"name": "s", "path": "s"}, "hook": "blocks.0.hook_resid_pre", "dataset": {"path": "d"}}
    with pytest.raises(RegistryError, match="interpolate_from"):
        parse_pair(raw, tmp_path, "t")
    raw["finetune"] = {"path": "m", "alpha": 0.5}
    with pytest.raises(RegistryError, match="'alpha' needs"):
        parse_pair(raw, tmp_path, "t")
