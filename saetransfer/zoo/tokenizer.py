"""Byte-level BPE tokenizers in HF format, and packing text into SAELens-layout token rows."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from saetransfer.loading.tokenizers import compare_tokenizers

BOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerBase:
    """Train, save to `out_dir`, and return the reloaded tokenizer.

    Reloading matters: TransformerLens re-loads a tokenizer from its `name_or_path`, which an in-memory
    tokenizer lacks (KeyError: 'name_or_path').
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS,
                                   model_max_length=1_000_000)
    fast.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def add_pad_token(src_dir: Path, out_dir: Path) -> PreTrainedTokenizerBase:
    """The MetaMath move: one new PAD token appended after the base vocabulary."""
    tok = load_tokenizer(src_dir)
    n = len(tok)
    tok.add_special_tokens({"pad_token": PAD})
    assert len(tok) == n + 1 and tok.convert_tokens_to_ids(PAD) == n, "PAD must be the last id"
    tok.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


def sample_texts(groups: Sequence[tuple[Sequence[str], int]], seed: int) -> list[str]:
    """Up to `max_chars` of each group's documents, in a seeded order (tokenizer training text)."""
    rng = random.Random(seed)
    out: list[str] = []
    for docs, max_chars in groups:
        order = list(range(len(docs)))
        rng.shuffle(order)
        total = 0
        for i in order:
            if total >= max_chars:
                break
            out.append(docs[i][: max_chars - total])
            total += len(out[-1])
    return out


def pack_rows(tok: PreTrainedTokenizerBase, docs: Sequence[str], n_ctx: int,
              max_rows: int | None = None) -> np.ndarray:
    """SAELens layout: documents joined by BOS, cut into rows of n_ctx ids that each start with BOS."""
    bos = tok.bos_token_id
    stream: list[int] = []
    body = n_ctx - 1
    for ids in tok(list(docs), add_special_tokens=False)["input_ids"]:
        stream.append(bos)
        stream.extend(ids)
        if max_rows is not None and len(stream) >= max_rows * body + 1:
            break
    n = len(stream) // body
    if max_rows is not None:
        n = min(n, max_rows)
    arr = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    rows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), arr], axis=1)
    return rows


MANIFEST_KEYS = {"base_size": "base_size", "finetune_size": "finetune_size", "only_in_base": "only_in_base",
                 "only_in_finetune": "only_in_finetune", "mismatched": "mismatched_ids",
                 "good_base_pct": "good_tokens_base_pct", "good_finetune_pct": "good_tokens_finetune_pct"}
"""`TokenizerComparison` field -> its key in the committed manifest.json, whose older names stay so the
committed zoo stays byte-identical (the manifest is data; code uses the field names)."""


def manifest_comparison(base: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase) -> dict[str, int | float]:
    """`loading.compare_tokenizers` (the post's table) under the manifest's keys; percentages are already x100."""
    comparison = compare_tokenizers(base, other)
    return {key: getattr(comparison, name) for name, key in MANIFEST_KEYS.items()}
