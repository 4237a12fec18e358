"""Preflight: what configs and file headers reveal is checked before any weights load (README rows:
test_bad_inputs.py; here the rules behind them and the cases a CLI run cannot show)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from saetransfer.loading import (
    DeviceUnavailableError, MissingPathError, SaeMismatchError, TokenBudgetError, UnsupportedArchitectureError,
    UnsupportedHookError, check_token_budget, preflight,
)
from saetransfer.loading.preflight import ModelShape, check_device, check_hook_kind, check_hook_layer, model_shape
from saetransfer.loading.testing import fake_hub_cache
from saetransfer.masking import KEPT_FLOOR
from saetransfer.registry import DatasetSource, ModelSource, Pair, SaeSource, load_registry


@dataclass(frozen=True)
class Settings:
    n_tokens: int = 4096
    device: str = "cpu"


def zoo_pair(pair_id: str = "tiny-gpt2__math") -> Pair:
    return next(p for p in load_registry() if p.id == pair_id)


def test_every_zoo_pair_passes_with_no_warning() -> None:
    """Including retok: another tokenizer and depth, which the engine stops at the tokenizer check."""
    for pair in load_registry():
        if pair.is_tiny:
            assert preflight(pair, Settings(n_tokens=pair.n_tokens)) == [], pair.id


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "4096", None])
def test_a_budget_is_a_positive_integer(bad: object) -> None:
    with pytest.raises(TokenBudgetError, match=r"--tokens: the token budget must be a positive integer"):
        check_token_budget(bad)


def test_a_budget_covers_one_batch_and_warns_below_the_kept_floor() -> None:
    assert check_token_budget(5) == []  # row and batch unknown (a Hub SAE not cached): positivity only
    with pytest.raises(TokenBudgetError, match=r"2047 tokens are less than one full batch .* = 2048 tokens"):
        check_token_budget(2047, context_size=128, batch_size=16)
    assert check_token_budget(2048, context_size=128, batch_size=16) == []  # 16 rows x 127 kept = 2032
    # the floor in kept positions: 9 rows x 127 (BOS never kept) = 1143 >= 1024 > 8 x 127
    assert check_token_budget(9 * 128, context_size=128, batch_size=1) == []
    [warning] = check_token_budget(8 * 128, context_size=128, batch_size=1)
    assert f"keep at most 1016 positions, below the kept-position floor of {KEPT_FLOOR.min_count}" in warning
    assert "pass --tokens 1152 or more" in warning
    assert check_token_budget(8 * 128, context_size=128, batch_size=1, prepend_bos=False) == []  # 1024 kept


def test_hook_kinds_and_typos() -> None:
    check_hook_kind("blocks.0.hook_resid_post")
    with pytest.raises(UnsupportedHookError, match=r"close: \['blocks.2.hook_resid_pre', 'blocks.2.hook_resid_post'\]"):
        check_hook_kind("blocks.2.hook_resid_pree")
    with pytest.raises(UnsupportedHookError, match="only residual-stream SAEs"):
        check_hook_kind("blocks.2.hook_resid_mid")
    with pytest.raises(UnsupportedHookError, match="must look like"):
        check_hook_kind("hook_resid_pre")


def test_hook_layers_come_from_config_json() -> None:
    shape = ModelShape(name="m", n_layers=4, d_model=8, d_model_key="n_embd", weights={})
    check_hook_layer("blocks.3.hook_resid_post", shape)  # the last block's output: the spliced pass is empty
    with pytest.raises(UnsupportedHookError, match=r"'blocks.4.hook_resid_pre' is not a hook of m \(4 layers"):
        check_hook_layer("blocks.4.hook_resid_pre", shape)


@pytest.mark.parametrize(("config", "n_layers", "d_model", "key"), [
    ({"n_layer": 4, "n_embd": 128}, 4, 128, "n_embd"),  # GPT-2
    ({"num_hidden_layers": 18, "hidden_size": 2048}, 18, 2048, "hidden_size"),  # Gemma, Mistral, Llama
    ({"text_config": {"num_hidden_layers": 26, "hidden_size": 1152}}, 26, 1152, "hidden_size"),  # multimodal
    ({"architectures": ["X"]}, None, None, None),  # unknown: nothing is checked, the loader decides
])
def test_model_shape_reads_the_usual_config_keys(tmp_path: Path, config: dict, n_layers: int | None,
                                                 d_model: int | None, key: str | None) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = model_shape(tmp_path, "label", "m")
    assert (shape.n_layers, shape.d_model, shape.d_model_key, shape.weights) == (n_layers, d_model, key, {})


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(MissingPathError, match=r"absent: \['model-00001-of-00002.safetensors', 'model-00002"):
        model_shape(tmp_path, "label", "m")


def test_cuda_is_checked_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="drop --gpu"):
        preflight(zoo_pair(), Settings(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_device("cuda:0")
    check_device("cpu")


def test_interpolation_endpoints_must_have_one_shape(tmp_path: Path) -> None:
    pair = zoo_pair("tiny-gpt2__lerp50-code")
    start = tmp_path / "start"
    shutil.copytree(pair.finetune.interpolate_from, start)
    config = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    bad = replace(pair, finetune=replace(pair.finetune, interpolate_from=start))
    with pytest.raises(UnsupportedArchitectureError, match=r"cannot interpolate from .*start to .*code: they differ "
                                                          r"in \['d_model'\]"):
        preflight(bad, Settings())


def test_the_native_sae_must_fit_the_finetune(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    pair = zoo_pair("tiny-gpt2__code")
    native = tmp_path / "native"
    shutil.copytree(pair.native_sae.path, native)
    cfg = json.loads((native / "cfg.json").read_text())
    (native / "cfg.json").write_text(json.dumps({**cfg, "d_in": 32}))
    d_sae = cfg["d_sae"]
    save_file({"W_enc": np.zeros((32, d_sae), np.float32), "W_dec": np.zeros((d_sae, 32), np.float32)},
              str(native / "sae_weights.safetensors"))
    bad = replace(pair, native_sae=replace(pair.native_sae, path=native))
    with pytest.raises(SaeMismatchError, match=r"field 'native_sae' .*d_in 32 but the finetune model .* d_model 128"):
        preflight(bad, Settings())


def test_a_cached_hub_model_is_checked_and_an_uncached_one_left_to_the_loader(hf_cache: Path, tmp_path: Path) -> None:
    """Only the config.json (and weight headers) in the HF cache: no request, no download."""
    pair = zoo_pair()
    hub_pair = replace(pair, base=ModelSource(hub="someone/wide-gpt2"))
    assert preflight(hub_pair, Settings()) == []  # not cached: nothing knowable here
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text(json.dumps({"n_layer": 4, "n_embd": 256}))
    fake_hub_cache(hf_cache, "someone/wide-gpt2", files)
    with pytest.raises(SaeMismatchError, match=r"d_in 128 but the base model someone/wide-gpt2 \(HF cache\) has "
                                               r"d_model 256"):
        preflight(hub_pair, Settings())


def test_the_engine_runs_preflight_before_loading_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from saetransfer import engine, loading
    from saetransfer.engine import RunConfig

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded something before preflight failed")

    for name in ("load_sae", "load_model", "load_tokenizer"):
        monkeypatch.setattr(loading, name, no_loading)
    with pytest.raises(UnsupportedHookError, match="hook_resid_pree"):
        engine.evaluate_pair(replace(zoo_pair(), hook="blocks.2.hook_resid_pree"), RunConfig(n_tokens=4096))


GEMMA3_PAIR = Pair(
    id="gemma-3-270m__it", base=ModelSource(hub="google/gemma-3-270m"),
    finetune=ModelSource(hub="google/gemma-3-270m-it"),
    sae=SaeSource(name="gs2-pt", release="gemma-scope-2-270m-pt-res", sae_id="layer_12_width_16k_l0_medium"),
    native_sae=SaeSource(name="gs2-it", release="gemma-scope-2-270m-it-res", sae_id="layer_12_width_16k_l0_medium"),
    hook="blocks.12.hook_resid_post", dataset=DatasetSource(hub="HuggingFaceFW/fineweb", config="sample-10BT"),
    context_size=256, batch_size=8)


@pytest.mark.usefixtures("hf_cache", "no_network")
def test_a_gemma_scope_2_hook_is_known_from_the_sae_lens_directory_alone() -> None:
    """Nothing cached, no request: the Gemma Scope 2 folder name says the hook (SAELens derives it so)."""
    assert preflight(GEMMA3_PAIR, Settings(n_tokens=4096)) == []
    native = replace(GEMMA3_PAIR.native_sae, sae_id="layer_9_width_16k_l0_medium")
    with pytest.raises(SaeMismatchError, match=r"field 'native_sae' .*trained at 'blocks.9.hook_resid_post' but the "
                                               r"entry's hook is 'blocks.12.hook_resid_post'"):
        preflight(replace(GEMMA3_PAIR, native_sae=native), Settings(n_tokens=4096))
    with pytest.raises(SaeMismatchError, match=r"field 'sae' .*set hook = 'blocks.12.hook_resid_post'"):
        preflight(replace(GEMMA3_PAIR, hook="blocks.12.hook_resid_pre"), Settings(n_tokens=4096))


@pytest.mark.usefixtures("no_network")
def test_a_cached_gemma_scope_2_sae_is_checked_against_the_models_width(hf_cache: Path, tmp_path: Path) -> None:
    """params.safetensors's header gives d_in; config.json gives the cached models' width."""
    from saetransfer.loading.testing import save_gemma_scope_2_folder

    for repo in ("google/gemma-3-270m", "google/gemma-3-270m-it"):
        files = tmp_path / repo
        files.mkdir(parents=True)
        (files / "config.json").write_text(json.dumps({"num_hidden_layers": 18, "hidden_size": 640}))
        fake_hub_cache(hf_cache, repo, files)
    for repo, d_in in (("google/gemma-scope-2-270m-pt", 640), ("google/gemma-scope-2-270m-it", 512)):
        save_gemma_scope_2_folder(tmp_path / repo / "resid_post/layer_12_width_16k_l0_medium", layer=12, d_in=d_in,
                                  d_sae=16)
        fake_hub_cache(hf_cache, repo, tmp_path / repo)
    with pytest.raises(SaeMismatchError, match=r"field 'native_sae' .*d_in 512 but the finetune model "
                                               r"google/gemma-3-270m-it \(HF cache\) has d_model 640"):
        preflight(GEMMA3_PAIR, Settings(n_tokens=4096))
