"""The shared token sample: one seeded [rows, ctx] tensor of base-tokenizer ids per pair.

Pretokenized data (`input_ids`/`tokens` columns, rows already laid out, e.g. BOS + 127 ids) is
sampled by whole rows. Text is tokenized with the base tokenizer and packed exactly as SAELens's
ActivationsStore does (BOS at the start of each row when prepend_bos, BOS between documents).
The same inputs and seed always give the same tensor and hash.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from saetransfer.loading.datasources import open_values, permuted
from saetransfer.loading.errors import BosMismatchError, DatasetFormatError, TooFewTokensError
from saetransfer.registry import DatasetSource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TOKENIZE_BATCH = 256


@dataclass(frozen=True, eq=False)  # eq on tensors is elementwise: compare `sha256` instead
class TokenSample:
    """A seeded token sample, shared by every finding of a pair."""

    tokens: Int[Tensor, "rows ctx"]
    """int64, CPU."""
    sha256: str
    """Of the tokens' bytes (int64, little-endian, row-major)."""
    dataset_revision: str | None
    """The Hub commit the data came from; None for a local file."""
    n_rows: int
    description: str


def tokens_sha256(tokens: Int[Tensor, "rows ctx"]) -> str:
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def sample_tokens(dataset: DatasetSource, tokenizer: PreTrainedTokenizerBase, *, n_tokens: int, context_size: int,
                  prepend_bos: bool, seed: int, allow_hub: bool = False) -> TokenSample:
    """Draw ceil(n_tokens / context_size) rows of `context_size` tokens.

    Args:
        dataset: a local file (parquet, json lines, arrow, a `save_to_disk` dir) or a Hub dataset
            (the HF cache offline; streamed with `allow_hub`).
        tokenizer: the *base* tokenizer (the finetune is fed the same ids).
        prepend_bos: the SAE's training setting; pretokenized rows must agree with it.
        seed: row permutation (local) or shuffle-buffer seed (streaming).

    Raises:
        MissingPathError, HubUnavailableError, DatasetFormatError, BosMismatchError, TooFewTokensError.
    """
    if n_tokens <= 0 or context_size <= 0:
        raise ValueError(f"n_tokens and context_size must be positive, got {n_tokens} and {context_size}")
    n_rows = math.ceil(n_tokens / context_size)
    bos = tokenizer.bos_token_id
    if prepend_bos and bos is None:
        raise BosMismatchError(f"prepend_bos=True but the tokenizer {tokenizer.name_or_path!r} has no BOS token")
    values, revision, ordered = open_values(dataset, seed=seed, allow_hub=allow_hub)
    where = f"{dataset.describe()} [{dataset.column}]"
    if dataset.pretokenized:
        tokens = _rows(values, where, n_rows=n_rows, n_tokens=n_tokens, context_size=context_size,
                       seed=seed, shuffle=ordered)
        _check_bos(tokens, bos, prepend_bos, where)
        how = "pretokenized rows"
    else:
        texts = permuted(values, seed) if ordered else values
        tokens = _pack(texts, tokenizer, where, n_rows=n_rows, n_tokens=n_tokens, context_size=context_size,
                       bos=bos, prepend_bos=prepend_bos)
        how = "text packed as SAELens does"
    return TokenSample(
        tokens=tokens, sha256=tokens_sha256(tokens), dataset_revision=revision, n_rows=n_rows,
        description=(f"{n_rows} rows x {context_size} tokens from {where}{f'@{revision}' if revision else ''}: "
                     f"{how}, seed {seed}, {'BOS first' if prepend_bos else 'no BOS'}"))


# ---------------------------------------------------------------------------------------------


def _rows(values: Iterable[Any], where: str, *, n_rows: int, n_tokens: int, context_size: int, seed: int,
          shuffle: bool) -> Int[Tensor, "rows ctx"]:
    """Whole pretokenized rows, truncated to context_size: a seeded choice (local) or the stream's first."""
    if shuffle:
        rows = list(values)
        short = next(((i, len(r)) for i, r in enumerate(rows) if r is None or len(r) < context_size), None)
        if short is not None:
            raise DatasetFormatError(f"{where}: rows must hold at least context_size={context_size} tokens; "
                                     f"row {short[0]} has {short[1]}")
        if len(rows) < n_rows:
            raise TooFewTokensError(
                f"{where} has {len(rows)} rows of >= {context_size} tokens ({len(rows) * context_size} tokens), "
                f"fewer than the {n_tokens} tokens ({n_rows} rows) asked for")
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:n_rows]
        chosen = [rows[i][:context_size] for i in order.tolist()]
    else:
        chosen = [r[:context_size] for r in itertools.islice((r for r in values if r is not None), n_rows)]
        if len(chosen) < n_rows:
            raise TooFewTokensError(f"{where} ran out after {len(chosen)} rows; {n_rows} rows "
                                    f"({n_tokens} tokens) were asked for")
        if any(len(r) < context_size for r in chosen):
            raise DatasetFormatError(f"{where}: rows must hold at least context_size={context_size} tokens")
    return torch.tensor(chosen, dtype=torch.int64)


def _check_bos(tokens: Int[Tensor, "rows ctx"], bos: int | None, prepend_bos: bool, where: str) -> None:
    starts = tokens[:, 0] == bos if bos is not None else torch.zeros(len(tokens), dtype=torch.bool)
    if prepend_bos and not bool(starts.all()):
        raise BosMismatchError(
            f"{where}: prepend_bos=True but {int((~starts).sum())} of {len(tokens)} sampled rows do not start "
            f"with BOS (id {bos}); pretokenize with BOS first or sample with prepend_bos=False")
    if not prepend_bos and bool(starts.all()):
        raise BosMismatchError(
            f"{where}: prepend_bos=False (the SAE was trained without BOS) but every sampled row starts with BOS "
            f"(id {bos}); use rows without BOS, or a text dataset")


def _pack(texts: Iterable[Any], tokenizer: PreTrainedTokenizerBase, where: str, *, n_rows: int, n_tokens: int,
          context_size: int, bos: int | None, prepend_bos: bool) -> Int[Tensor, "rows ctx"]:
    """Tokenize without special tokens and pack like `ActivationsStore` (BOS first per row, BOS between docs)."""
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    def tokenized() -> Iterator[Tensor]:
        it = iter(texts)
        while batch := list(itertools.islice(it, _TOKENIZE_BATCH)):
            bad = next((t for t in batch if not isinstance(t, str)), None)
            if bad is not None:
                raise DatasetFormatError(f"{where}: expected text, got {type(bad).__name__}")
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                yield torch.tensor(ids, dtype=torch.long)

    rows = list(itertools.islice(concat_and_batch_sequences(
        tokenized(), context_size=context_size, begin_batch_token_id=bos if prepend_bos else None,
        begin_sequence_token_id=None, sequence_separator_token_id=bos), n_rows))
    if len(rows) < n_rows:
        raise TooFewTokensError(f"{where} packs into only {len(rows)} rows of {context_size} tokens; "
                                f"{n_rows} rows ({n_tokens} tokens) were asked for")
    return torch.stack(rows).to(torch.int64)
