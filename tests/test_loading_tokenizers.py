"""Tokenizer comparison reproduces the post's code's table; compatibility is decided on the sample's ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saetransfer.loading import (
    IncompatibleTokenizersError, check_compatible, compare_tokenizers, compare_vocabs, good_token_pct,
    require_compatible,
)
from saetransfer.loading.testing import save_bpe_tokenizer, save_word_tokenizer, word_vocab

WORDS = [f"w{i}" for i in range(40)]
PROSE = ["the cat sat on the mat and the dog sat on the log " * 4, "a quick brown fox jumps over the lazy dog " * 4,
         "she sells sea shells by the sea shore " * 4] * 20
CODE = ["def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n", "import os\nos.path.join(a, b)\n"] * 20


def load(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize(("size", "only", "mismatched", "expected"), [
    (50257, 37309, 12946, 0.00398),   # GPT-2 vs GPT-2-Portuguese, seed README (two good tokens)
    (256000, 1, 0, 99.999609),        # Gemma-2b vs the python-codes finetune, seed log
    (100, 0, 0, 100.0),
])
def test_good_token_pct_matches_the_seed(size: int, only: int, mismatched: int, expected: float) -> None:
    """The post's code's good-token percentage, already in percent (0.00398 means 0.00398 %)."""
    assert good_token_pct(size, only, mismatched) == pytest.approx(expected, abs=5e-6)


def test_comparison_counts_like_the_seed() -> None:
    """Keys only on one side, mismatched ids of shared keys, and both good-token percentages."""
    base = {"a": 0, "b": 1, "c": 2, "d": 3}
    ft = {"a": 0, "b": 2, "c": 1, "e": 3, "f": 4}
    cmp = compare_vocabs(base, ft)
    assert (cmp.base_size, cmp.finetune_size, cmp.only_in_base, cmp.only_in_finetune, cmp.mismatched) == (4, 5, 1, 2, 2)
    assert cmp.good_base_pct == pytest.approx(25.0) and cmp.good_finetune_pct == pytest.approx(20.0)
    assert cmp.only_in_finetune_keys == ("e", "f") and cmp.mismatched_keys == (("b", 1, 2), ("c", 2, 1))
    assert json.loads(json.dumps(cmp.to_dict())) == cmp.to_dict()  # builtins only


def test_differing_key_lists_are_bounded() -> None:
    base = {f"b{i}": i for i in range(200)}
    ft = {f"f{i}": i for i in range(200)}
    cmp = compare_vocabs(base, ft)
    assert cmp.only_in_base == 200 and len(cmp.only_in_base_keys) == 50 and cmp.good_base_pct == 0.0


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tok")
    vocab = word_vocab(WORDS, specials=["<bos>", "<eos>", "<unk>", "<unused99>"])
    gemma_ft = {("<start_of_image>" if k == "<unused99>" else k): v for k, v in vocab.items()}
    extended = {**vocab, "<pad>": len(vocab)}
    return {
        "base": load(save_word_tokenizer(root / "base", vocab)),
        "gemma_ft": load(save_word_tokenizer(root / "gemma_ft", gemma_ft)),
        "extended": load(save_word_tokenizer(root / "extended", extended)),
        "bpe_prose": load(save_bpe_tokenizer(root / "bpe_prose", PROSE)),
        "bpe_code": load(save_bpe_tokenizer(root / "bpe_code", CODE)),
    }


def sample(tok, texts: list[str]) -> torch.Tensor:
    ids = tok(texts[:3], add_special_tokens=False)["input_ids"]
    return torch.tensor([i[:8] for i in ids])


def test_gemma_like_unused_special_token_is_compatible(toks) -> None:
    """One unused special token differs on each side (Gemma's <unused99>/<start_of_image>): compatible."""
    cmp = compare_tokenizers(toks["base"], toks["gemma_ft"])
    assert cmp.only_in_base_keys == ("<unused99>",) and cmp.only_in_finetune_keys == ("<start_of_image>",)
    assert cmp.mismatched == 0
    ids = sample(toks["base"], [" ".join(WORDS[:10]), " ".join(WORDS[10:20]), " ".join(WORDS[20:30])])
    verdict = check_compatible(toks["base"], toks["gemma_ft"], ids)
    assert verdict.compatible and verdict.n_differing == 0 and verdict.n_distinct_ids == 24
    assert not check_compatible(toks["base"], toks["gemma_ft"], torch.tensor([3])).compatible  # if it were used


def test_extended_vocabulary_is_compatible_on_shared_ids(toks) -> None:
    """A finetune that appends tokens (MetaMath's PAD) reads every base id as the same token."""
    cmp = compare_tokenizers(toks["base"], toks["extended"])
    assert cmp.only_in_base == 0 and cmp.only_in_finetune == 1 and cmp.good_base_pct == 100.0
    ids = torch.arange(len(toks["base"].get_vocab()))
    assert require_compatible(toks["base"], toks["extended"], ids).compatible


def test_independent_bpes_are_incompatible_despite_shared_bytes(toks) -> None:
    """Two BPEs trained on different text share byte tokens but not merges: incompatible, with examples."""
    base, other = toks["bpe_prose"], toks["bpe_code"]
    bytes_only = torch.tensor([base.get_vocab()[c] for c in "abc"])
    assert check_compatible(base, other, bytes_only).compatible  # the shared byte alphabet
    verdict = check_compatible(base, other, sample(base, PROSE))
    assert not verdict.compatible and 0 < verdict.n_differing <= verdict.n_distinct_ids
    token_id, base_token, ft_token = verdict.examples[0]
    assert base.convert_ids_to_tokens(token_id) == base_token != ft_token
    assert "map to different tokens" in verdict.reason
    assert compare_tokenizers(base, other).good_base_pct < 100
    with pytest.raises(IncompatibleTokenizersError, match="different tokens"):
        require_compatible(base, other, sample(base, PROSE))
