"""`availability` says in one line what a pair lacks, offline or with --hub, without any request;
a local path that is wrong is an error naming the entry and the field, never a skip."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from saetransfer.loading import MissingPathError, SaeConfigError, availability
from saetransfer.loading.testing import fake_hub_cache, save_tiny_sae
from saetransfer.paths import ZOO
from saetransfer.registry import DatasetSource, ModelSource, Pair, SaeSource, load_registry

HOOK = "blocks.6.hook_resid_post"


@pytest.fixture(autouse=True)
def _offline(no_network: None) -> None:
    """Every test here must decide without a single connection."""


@pytest.fixture
def local_pair(tmp_path: Path) -> Pair:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text("{}")
    sae = tmp_path / "sae"
    sae.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        (sae / name).write_text("{}")
    (tmp_path / "eval.parquet").write_bytes(b"")
    return Pair(id="tiny__x", base=ModelSource(path=model), finetune=ModelSource(path=model),
                sae=SaeSource(name="s", path=sae), hook=HOOK,
                dataset=DatasetSource(path=tmp_path / "eval.parquet", column="input_ids"))


HUB_PAIR = Pair(id="gemma-2b__python-codes", base=ModelSource(hub="google/gemma-2b"),
                finetune=ModelSource(hub="shahdishank/gemma-2b-it-finetune-python-codes"),
                sae=SaeSource(name="gemma-2b-res-jb", release="gemma-2b-res-jb", sae_id=HOOK), hook=HOOK,
                dataset=DatasetSource(hub="HuggingFaceFW/fineweb", config="sample-10BT"))


def test_local_pair_present(local_pair: Pair) -> None:
    assert availability(local_pair, allow_hub=False) is None
    assert availability(local_pair, allow_hub=True) is None


def test_missing_zoo_path_is_an_error_naming_the_field(local_pair: Pair) -> None:
    pair = replace(local_pair, finetune=ModelSource(path=ZOO / "models" / "no-such-finetune"))
    expected = ("registry entry 'tiny__x', field 'finetune': missing local path fixtures/zoo/models/no-such-finetune "
                "(run `python -m saetransfer zoo build`?); fix the path")
    for allow_hub in (False, True):  # --hub does not build the zoo
        with pytest.raises(MissingPathError, match=re.escape(expected)):
            availability(pair, allow_hub=allow_hub)


def test_the_registry_file_is_named(local_pair: Pair, tmp_path: Path) -> None:
    pair = replace(local_pair, dataset=DatasetSource(path=tmp_path / "typo.parquet"),
                   source_file=tmp_path / "my-pairs.toml")
    with pytest.raises(MissingPathError, match=rf"registry entry 'tiny__x' \({tmp_path}/my-pairs.toml\), "
                                               r"field 'dataset': missing local path .*typo\.parquet"):
        availability(pair, allow_hub=False)


@pytest.mark.parametrize(("directory", "remove", "problem"), [
    ("sae", "cfg.json", "has no cfg.json"),
    ("sae", "sae_weights.safetensors", "has cfg.json but no sae_weights.safetensors"),
    ("model", "config.json", "has no config.json"),
    ("model", "model.safetensors", "has config.json but no weights"),
    ("model", "tokenizer.json", "holds no tokenizer files"),
])
def test_local_dirs_must_be_usable(local_pair: Pair, tmp_path: Path, directory: str, remove: str, problem: str) -> None:
    (tmp_path / directory / remove).unlink()
    field = "sae" if directory == "sae" else "base"
    with pytest.raises(MissingPathError, match=rf"field '{field}': {tmp_path / directory} {problem}"):
        availability(local_pair, allow_hub=False)


def test_an_interpolation_start_needs_no_tokenizer(local_pair: Pair, tmp_path: Path) -> None:
    start = tmp_path / "start"
    start.mkdir()
    (start / "config.json").write_text("{}")
    pair = replace(local_pair, finetune=ModelSource(path=tmp_path / "model", interpolate_from=start, alpha=0.5))
    with pytest.raises(MissingPathError, match=r"field 'finetune' \(interpolate_from\): .*start has config.json "
                                               "but no weights"):
        availability(pair, allow_hub=False)
    (start / "model.safetensors").write_text("{}")
    assert availability(pair, allow_hub=False) is None


@pytest.mark.usefixtures("hf_cache")
def test_uncached_hub_pair_offline() -> None:
    assert availability(HUB_PAIR, allow_hub=False) == (
        "base: offline: google/gemma-2b is not in the HF cache (pass --hub to download; gated: set HF_TOKEN)")


def _model_files(tmp_path: Path) -> Path:
    """What availability looks for in a cached model: a config and a weights file."""
    model = tmp_path / "files" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    return model


def test_cached_hub_pair_is_available_offline(hf_cache: Path, tmp_path: Path) -> None:
    """Models (config + weights), the SAE's folder and the dataset found in the HF cache: nothing missing."""
    model = _model_files(tmp_path)
    for repo in ("google/gemma-2b", "shahdishank/gemma-2b-it-finetune-python-codes"):
        fake_hub_cache(hf_cache, repo, model)
    assert availability(HUB_PAIR, allow_hub=False).startswith("sae: offline: jbloom/Gemma-2b-Residual-Stream-SAEs")
    from saetransfer.loading.saes import release_location

    _, folder = release_location("gemma-2b-res-jb", HOOK)
    save_tiny_sae(tmp_path / "files" / "sae" / folder, d_in=8, d_sae=8, hook_name=HOOK)
    fake_hub_cache(hf_cache, "jbloom/Gemma-2b-Residual-Stream-SAEs", tmp_path / "files" / "sae")
    assert availability(HUB_PAIR, allow_hub=False) == (
        "dataset: offline: HuggingFaceFW/fineweb is not in the HF cache (pass --hub to download)")
    (tmp_path / "files" / "data").mkdir()
    fake_hub_cache(hf_cache, "HuggingFaceFW/fineweb", tmp_path / "files" / "data", repo_type="dataset")
    assert availability(HUB_PAIR, allow_hub=False) is None


@pytest.mark.usefixtures("hf_cache")
def test_with_hub_only_gated_repos_without_a_token_are_reported(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from huggingface_hub import constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert availability(HUB_PAIR, allow_hub=True) == (
        "base: google/gemma-2b is gated and no HF token is configured (accept its licence, then set HF_TOKEN)")
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert availability(HUB_PAIR, allow_hub=True) is None
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE=1 blocks downloads" in availability(HUB_PAIR, allow_hub=True)


def test_unknown_release_is_an_error_not_a_skip(local_pair: Pair) -> None:
    pair = replace(local_pair, sae=SaeSource(name="x", release="no-such-release", sae_id=HOOK))
    with pytest.raises(SaeConfigError, match="registry entry 'tiny__x', field 'sae': unknown SAELens release "
                                             "'no-such-release'"):
        availability(pair, allow_hub=True)


@pytest.mark.usefixtures("hf_cache")
def test_every_registry_pair_gets_an_answer() -> None:
    """The committed registry: tiny pairs need the zoo, real pairs the Hub; one line each, no request."""
    for pair in load_registry():
        reason = availability(pair, allow_hub=False)
        assert reason is None or ("\n" not in reason and reason.split(": ")[0] in
                                  ("base", "finetune", "sae", "native_sae", "dataset"))
        if not pair.is_tiny:
            assert reason is not None and "offline:" in reason


GEMMA3_PAIR = Pair(
    id="gemma-3-270m__it", base=ModelSource(hub="google/gemma-3-270m"),
    finetune=ModelSource(hub="google/gemma-3-270m-it"),
    sae=SaeSource(name="gs2-pt", release="gemma-scope-2-270m-pt-res", sae_id="layer_12_width_16k_l0_medium"),
    native_sae=SaeSource(name="gs2-it", release="gemma-scope-2-270m-it-res", sae_id="layer_12_width_16k_l0_medium"),
    hook="blocks.12.hook_resid_post", dataset=DatasetSource(hub="HuggingFaceFW/fineweb", config="sample-10BT"))


def test_a_gemma_3_pair_offline_says_what_it_lacks(hf_cache: Path, tmp_path: Path) -> None:
    """Gemma 3 models (gated) and the Gemma Scope 2 SAEs of both sides, one missing piece at a time."""
    from saetransfer.loading.testing import save_gemma_scope_2_folder

    assert availability(GEMMA3_PAIR, allow_hub=False) == (
        "base: offline: google/gemma-3-270m is not in the HF cache (pass --hub to download; gated: set HF_TOKEN)")
    model = _model_files(tmp_path)
    for repo in ("google/gemma-3-270m", "google/gemma-3-270m-it"):
        fake_hub_cache(hf_cache, repo, model)
    assert availability(GEMMA3_PAIR, allow_hub=False).startswith(
        "sae: offline: google/gemma-scope-2-270m-pt is not in the HF cache")
    folder = "resid_post/layer_12_width_16k_l0_medium"
    for repo in ("google/gemma-scope-2-270m-pt", "google/gemma-scope-2-270m-it"):
        save_gemma_scope_2_folder(tmp_path / repo / folder, layer=12, d_in=8, d_sae=8)
        fake_hub_cache(hf_cache, repo, tmp_path / repo)
    snapshot = next((hf_cache / "models--google--gemma-scope-2-270m-it" / "snapshots").iterdir())
    (snapshot / folder / "params.safetensors").unlink()  # config.json alone is not an SAE
    assert availability(GEMMA3_PAIR, allow_hub=False).startswith(
        "native_sae: offline: google/gemma-scope-2-270m-it is not in the HF cache")
    fake_hub_cache(hf_cache, "google/gemma-scope-2-270m-it", tmp_path / "google/gemma-scope-2-270m-it")
    assert availability(GEMMA3_PAIR, allow_hub=False) == (
        "dataset: offline: HuggingFaceFW/fineweb is not in the HF cache (pass --hub to download)")
