"""The notebook entry point: the same pair, validation, errors and cache as the registry and `engine.run`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from saetransfer import api, engine
from saetransfer.paths import RECORDS, ZOO
from saetransfer.registry import RegistryError, get_pair, load_registry, parse_registry_file

TOKENS = 2048
"""Enough to be judged (masking.KEPT_FLOOR.min_count is 1024) and quick on 2 cores."""
CODE_PAIR = dict(  # fixtures/pairs.toml's tiny-gpt2__code, as a notebook user would pass it
    base=ZOO / "models" / "base", finetune=ZOO / "models" / "code",
    sae={"name": "tiny-res-relu", "path": str(ZOO / "saes" / "base-relu"), "trained_on": "zoo prose (train split)"},
    native_sae={"name": "tiny-code-res-relu", "path": str(ZOO / "saes" / "code-relu"),
                "trained_on": "zoo prose (train split), on the code model"},
    hook="blocks.2.hook_resid_pre",
    dataset={"name": "prose", "path": str(ZOO / "data" / "prose-eval.parquet"), "column": "input_ids"},
    id="tiny-gpt2__code", batch_size=16,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAETRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def evaluation(cache) -> api.Evaluation:
    return api.evaluate(**CODE_PAIR, tokens=TOKENS)


def test_arguments_make_the_registry_pair():
    registry_pair = get_pair(load_registry(), "tiny-gpt2__code")
    pair = api.make_pair(**CODE_PAIR)
    # the registry entry's further axes and datasets are its own; this evaluation is the same
    assert pair == dataclasses.replace(registry_pair, description="", expected=None, axes=pair.axes,
                                       datasets=pair.datasets)
    config = engine.RunConfig(n_tokens=TOKENS, progress=False)
    assert engine.result_key(pair, config) == engine.result_key(registry_pair, config)  # one cache entry


def test_sources_as_paths_or_hub_ids(tmp_path: Path):
    local = tmp_path / "my-finetune"
    local.mkdir()
    raw = api.pair_table(base="openai-community/gpt2", finetune=str(local), sae=("gpt2-small-res-jb", "blocks.6.x"),
                         hook="blocks.6.hook_resid_pre", dataset="Skylion007/openwebtext")
    assert raw["base"] == {"hub": "openai-community/gpt2"}
    assert raw["finetune"] == {"path": str(local.resolve())}
    assert raw["sae"] == {"release": "gpt2-small-res-jb", "id": "blocks.6.x"}
    assert raw["dataset"] == {"hub": "Skylion007/openwebtext"}
    assert raw["id"] == "gpt2__my-finetune"
    assert api.pair_table("./base", "m", tmp_path / "saes" / "My SAE", "blocks.0.hook_resid_pre", "d")["sae"] == {
        "path": str((tmp_path / "saes" / "My SAE").resolve()), "name": "my-sae"}


@pytest.mark.parametrize("bad", [{"hook": "blocks.two.hook_resid_pre"}, {"n_token": 5}, {"batch_size": 0},
                                 {"sae": ("gpt2-small-res-jb", None)}], ids=["hook", "unknown-field", "batch", "sae-id"])
def test_bad_input_raises_the_registrys_error(bad, tmp_path: Path):
    """The same raw table written as a TOML entry fails with the same message, bar where the entry is."""
    args = {**CODE_PAIR, **bad}
    with pytest.raises(RegistryError) as from_api:
        api.make_pair(**args)
    raw = api.pair_table(**args)
    toml = tmp_path / "pairs.toml"
    toml.write_text("[[pair]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in raw.items() if v is not None))
    with pytest.raises(RegistryError) as from_file:
        parse_registry_file(toml)
    api_where, api_message = str(from_api.value).split(": ", 1)
    file_where, file_message = str(from_file.value).split(": ", 1)
    assert api_message == file_message
    assert api_where.startswith(api.WHERE) and file_where.startswith(str(toml))


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(value)  # strings, ints and bools read the same in TOML


def test_evaluate_returns_the_typed_result_and_its_headline(evaluation: api.Evaluation):
    r = evaluation.result
    assert r.provenance.n_tokens == TOKENS and r.judged
    table = evaluation.headline()
    assert table.loc["ev_ratio", "value"] == r.comparisons.ev_ratio.value
    assert table.loc["cosine", "low"] == r.comparisons.cosine.low
    assert list(table.columns) == ["value", "low", "high", "description"]
    assert table.loc["verdict", "description"].startswith(f"{r.verdict.verdict}: ")
    assert r.verdict.verdict == "fails"  # the zoo's Gemma analogue, even on a small sample
    assert {c.claim for c in evaluation.claims} >= {"bos-cosine-at-least-mean", "verdict-as-expected"}
    html = evaluation._repr_html_()
    assert "<table>" in html and "tiny-gpt2__code: fails" in html and "<style>" not in html


def test_evaluate_reads_the_cache_and_writes_no_record(evaluation: api.Evaluation, monkeypatch: pytest.MonkeyPatch):
    before = sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []
    mtimes = [p.stat().st_mtime_ns for p in before]

    def recompute(*args, **kwargs):
        raise AssertionError("recomputed a cached result")

    monkeypatch.setattr(engine, "evaluate_pair", recompute)
    again = api.evaluate(**CODE_PAIR, tokens=TOKENS)
    assert again.result == evaluation.result and again.record is None and evaluation.record is None
    after = sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []
    assert after == before and [p.stat().st_mtime_ns for p in after] == mtimes


def test_records_dir_writes_the_record_with_its_claims(evaluation: api.Evaluation, tmp_path: Path):
    saved = api.evaluate(**CODE_PAIR, tokens=TOKENS, records_dir=tmp_path)
    assert saved.record == tmp_path / f"{saved.pair.test_id}.json"
    data = json.loads(saved.record.read_text())
    assert data["provenance"]["test_id"] == saved.pair.test_id
    assert [c["claim"] for c in data["claims"]] == [c.claim for c in saved.claims]
