"""The shared token sample: seeded, hashed, laid out as SAELens lays it out, and strict about BOS."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from saetransfer.loading import (
    BosMismatchError, DatasetFormatError, TooFewTokensError, sample_tokens, tokens_sha256,
)
from saetransfer.loading.testing import fake_hub_cache, save_word_tokenizer, word_vocab
from saetransfer.registry import DatasetSource

WORDS = [f"w{i}" for i in range(50)]
BOS = 0
N_ROWS, ROW = 40, 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(save_word_tokenizer(tmp_path_factory.mktemp("tok"), word_vocab(WORDS)))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretokenized rows (BOS + 15 ids, row i starts BOS, 4+i), rows without BOS, and documents as text."""
    root = tmp_path_factory.mktemp("data")
    gen = torch.Generator().manual_seed(0)
    rows = [[BOS, 4 + i, *torch.randint(4, 54, (ROW - 2,), generator=gen).tolist()] for i in range(N_ROWS)]
    pq.write_table(pa.table({"input_ids": rows}), root / "rows.parquet")
    pq.write_table(pa.table({"input_ids": [r[1:] for r in rows]}), root / "nobos.parquet")
    docs = [" ".join(WORDS[(7 * i) % 50:(7 * i) % 50 + 3 + i % 11]) for i in range(60)]
    pq.write_table(pa.table({"text": docs}), root / "docs.parquet")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root


def rows_of(data: Path, **kw) -> DatasetSource:
    return DatasetSource(path=data / kw.pop("file", "rows.parquet"), column=kw.pop("column", "input_ids"), **kw)


def test_pretokenized_rows_are_a_seeded_choice(tokenizer, data: Path) -> None:
    """ceil(n_tokens/ctx) whole rows, truncated to ctx, chosen by a seeded permutation; same seed, same hash."""
    a = sample_tokens(rows_of(data), tokenizer, n_tokens=95, context_size=12, prepend_bos=True, seed=3)
    b = sample_tokens(rows_of(data), tokenizer, n_tokens=95, context_size=12, prepend_bos=True, seed=3)
    c = sample_tokens(rows_of(data), tokenizer, n_tokens=95, context_size=12, prepend_bos=True, seed=4)
    assert a.tokens.shape == (8, 12) and a.tokens.dtype == torch.int64 and a.n_rows == 8
    assert torch.equal(a.tokens, b.tokens) and a.sha256 == b.sha256 == tokens_sha256(b.tokens)
    assert a.sha256 != c.sha256
    assert (a.tokens[:, 0] == BOS).all()
    chosen = (a.tokens[:, 1] - 4).tolist()  # row ids; distinct rows, not in file order
    assert len(set(chosen)) == 8 and chosen != sorted(chosen)
    table = pq.read_table(data / "rows.parquet").column("input_ids").to_pylist()
    assert all(a.tokens[k].tolist() == table[i][:12] for k, i in enumerate(chosen))
    assert a.dataset_revision is None and "8 rows x 12 tokens" in a.description


def test_rows_with_bos_refuse_prepend_bos_false(tokenizer, data: Path) -> None:
    """An SAE trained without BOS (Mistral's) must not be fed BOS-first rows."""
    with pytest.raises(BosMismatchError, match="prepend_bos=False.*starts with BOS"):
        sample_tokens(rows_of(data), tokenizer, n_tokens=32, context_size=16, prepend_bos=False, seed=0)
    no_bos = sample_tokens(rows_of(data, file="nobos.parquet"), tokenizer, n_tokens=30, context_size=15,
                           prepend_bos=False, seed=0)
    assert not (no_bos.tokens[:, 0] == BOS).any()
    with pytest.raises(BosMismatchError, match="do not start"):
        sample_tokens(rows_of(data, file="nobos.parquet"), tokenizer, n_tokens=30, context_size=15,
                      prepend_bos=True, seed=0)


def test_too_few_tokens_is_an_error(tokenizer, data: Path) -> None:
    with pytest.raises(TooFewTokensError, match="40 rows.*fewer than the 1000 tokens"):
        sample_tokens(rows_of(data), tokenizer, n_tokens=1000, context_size=16, prepend_bos=True, seed=0)
    with pytest.raises(DatasetFormatError, match="at least context_size=32"):
        sample_tokens(rows_of(data), tokenizer, n_tokens=64, context_size=32, prepend_bos=True, seed=0)


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_text_is_packed_like_saelens(tokenizer, data: Path, prepend_bos: bool) -> None:
    """Documents are shuffled, tokenized without specials and packed with BOS first (if asked) and between docs."""
    source = DatasetSource(path=data / "docs.parquet", column="text")
    a = sample_tokens(source, tokenizer, n_tokens=80, context_size=10, prepend_bos=prepend_bos, seed=1)
    b = sample_tokens(DatasetSource(path=data / "docs.jsonl", column="text"), tokenizer, n_tokens=80,
                      context_size=10, prepend_bos=prepend_bos, seed=1)
    assert a.tokens.shape == (8, 10) and a.sha256 == b.sha256  # same docs, same seed, any file format
    assert bool((a.tokens[:, 0] == BOS).all()) == prepend_bos
    assert (a.tokens != 2).all()  # no <unk>: every word is in the vocabulary
    # the stream without BOS markers is the shuffled documents, in order
    stream = [t for t in a.tokens.flatten().tolist() if t != BOS]
    docs = pq.read_table(data / "docs.parquet").column("text").to_pylist()
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(1)).tolist()
    expected = [i for d in order for i in tokenizer(docs[d], add_special_tokens=False)["input_ids"]]
    assert stream == expected[:len(stream)]
    c = sample_tokens(source, tokenizer, n_tokens=80, context_size=10, prepend_bos=prepend_bos, seed=2)
    assert c.sha256 != a.sha256


def test_text_running_out_is_an_error(tokenizer, data: Path) -> None:
    source = DatasetSource(path=data / "docs.parquet", column="text")
    with pytest.raises(TooFewTokensError, match="packs into only"):
        sample_tokens(source, tokenizer, n_tokens=100_000, context_size=10, prepend_bos=True, seed=0)


def test_other_local_formats(tokenizer, data: Path, tmp_path: Path) -> None:
    """A `save_to_disk` dir (with splits) and an .arrow file read the same rows as the parquet."""
    from datasets import Dataset, DatasetDict

    table = pq.read_table(data / "rows.parquet")
    DatasetDict({"test": Dataset(table)}).save_to_disk(str(tmp_path / "saved"))
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    kw = dict(n_tokens=64, context_size=16, prepend_bos=True, seed=5)
    ref = sample_tokens(rows_of(data), tokenizer, **kw).sha256
    assert sample_tokens(DatasetSource(path=tmp_path / "saved", split="test", column="input_ids"), tokenizer,
                         **kw).sha256 == ref
    assert sample_tokens(DatasetSource(path=tmp_path / "rows.arrow", column="input_ids"), tokenizer, **kw).sha256 == ref
    with pytest.raises(DatasetFormatError, match="no split 'train'"):
        sample_tokens(DatasetSource(path=tmp_path / "saved", column="input_ids"), tokenizer, **kw)
    with pytest.raises(DatasetFormatError, match="no column 'tokens'"):
        sample_tokens(DatasetSource(path=data / "rows.parquet", column="tokens"), tokenizer, **kw)


def test_hub_dataset_streams_from_the_hf_cache(tokenizer, data: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, a Hub dataset is read from its cached snapshot (streaming, seeded buffer) and the commit recorded."""
    import datasets
    from huggingface_hub import constants as hub_constants

    # keep datasets' lock files out of ~/.cache; skip its 5 s sleep after each shuffled stream
    # (a guard against an Arrow crash at interpreter exit, not needed between two reads)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    files = tmp_path / "files"
    (files / "data").mkdir(parents=True)
    (files / "data" / "train-00000-of-00001.parquet").write_bytes((data / "docs.parquet").read_bytes())
    fake_hub_cache(tmp_path / "cache", "org/docs", files, repo_type="dataset", commit="d" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    source = DatasetSource(hub="org/docs", column="text")
    a = sample_tokens(source, tokenizer, n_tokens=60, context_size=10, prepend_bos=True, seed=0)
    b = sample_tokens(source, tokenizer, n_tokens=60, context_size=10, prepend_bos=True, seed=0)
    assert a.dataset_revision == "d" * 40 and a.sha256 == b.sha256 and a.tokens.shape == (6, 10)
    assert "org/docs:train" in a.description
