"""Every bad input stops with a LoadingError naming the problem, and offline never touches the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from saetransfer.loading import (
    HubUnavailableError, IncompatibleTokenizersError, LoadedModel, LoadingError, MissingPathError,
    ProcessingFlagError, SaeMismatchError, UnsupportedArchitectureError, check_sae_fits, load_model, load_sae,
    load_tokenizer,
    require_compatible, sample_tokens,
)
from saetransfer.loading.testing import save_tiny_model, save_tiny_sae, save_word_tokenizer, word_vocab
from saetransfer.paths import ZOO
from saetransfer.registry import DatasetSource, ModelSource, SaeSource

# see test_loading_saes.py: pytest.ini's ignore for this warning cannot match its leading newline
pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*This SAE has non-empty model_from_pretrained_kwargs:UserWarning")

WORDS = [f"w{i}" for i in range(30)]
HOOK = "blocks.1.hook_resid_pre"
ABSENT = ZOO / "models" / "no-such-model-for-tests"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    directory = tmp_path_factory.mktemp("gpt2")
    save_tiny_model(directory, "GPT2LMHeadModel", vocab_size=len(word_vocab(WORDS)))
    save_word_tokenizer(directory, word_vocab(WORDS))
    return load_model(ModelSource(path=directory))


def test_error_family() -> None:
    """One family: every loading error is a LoadingError and a ValueError."""
    for kind in (MissingPathError, HubUnavailableError, SaeMismatchError, IncompatibleTokenizersError):
        assert issubclass(kind, LoadingError) and issubclass(kind, ValueError)


def test_missing_local_paths_name_the_path_and_the_fix(model: LoadedModel) -> None:
    """Model, SAE and dataset paths that do not exist; zoo paths point at the zoo build command."""
    zoo_hint = (r"missing local path fixtures/zoo/models/no-such-model-for-tests "
                r"\(run `python -m saetransfer zoo build`\?\)")
    with pytest.raises(MissingPathError, match=zoo_hint):
        load_model(ModelSource(path=ABSENT))
    with pytest.raises(MissingPathError, match=r"tokenizer: missing local path fixtures/zoo/models/no-such-model"):
        load_tokenizer(ModelSource(path=ABSENT))
    with pytest.raises(MissingPathError, match=r"SAE tiny: missing local path .*no-such-sae"):
        load_sae(SaeSource(name="tiny", path=Path("/nonexistent/no-such-sae")))
    with pytest.raises(MissingPathError, match=r"dataset: missing local path .*eval\.parquet"):
        sample_tokens(DatasetSource(path=ZOO / "data" / "no-such-dir" / "eval.parquet", column="input_ids"),
                      model.tokenizer, n_tokens=8, context_size=4, prepend_bos=True, seed=0)


def test_directory_without_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(MissingPathError, match="holds no tokenizer files"):
        load_tokenizer(ModelSource(path=tmp_path))
    with pytest.raises(MissingPathError, match="has no config.json"):
        load_model(ModelSource(path=tmp_path))
    with pytest.raises(MissingPathError, match="has no cfg.json"):
        load_sae(SaeSource(name="tiny", path=tmp_path))


def test_sae_width_must_match_d_model(tmp_path: Path, model: LoadedModel) -> None:
    save_tiny_sae(tmp_path, d_in=16, d_sae=32, hook_name=HOOK)
    sae = load_sae(SaeSource(name="narrow", path=tmp_path))
    with pytest.raises(SaeMismatchError, match=r"has d_in 16 but .* has d_model 32 at blocks\.1\.hook_resid_pre"):
        check_sae_fits(model.model, sae, HOOK)


def test_hook_must_exist_and_be_the_saes_own(tmp_path: Path, model: LoadedModel) -> None:
    """A hook the model lacks lists close names; a registry hook other than the SAE's is refused."""
    save_tiny_sae(tmp_path, d_in=32, d_sae=32, hook_name=HOOK)
    sae = load_sae(SaeSource(name="tiny", path=tmp_path))
    with pytest.raises(SaeMismatchError, match=r"'blocks\.7\.hook_resid_pre' is not a hook of .*2 layers.*close"):
        check_sae_fits(model.model, sae, "blocks.7.hook_resid_pre")
    with pytest.raises(SaeMismatchError, match=r"registry hook 'blocks\.0\.hook_resid_pre' differs .*'blocks\.1"):
        check_sae_fits(model.model, sae, "blocks.0.hook_resid_pre")


def test_incompatible_tokenizers(tmp_path: Path, model: LoadedModel) -> None:
    """A finetune whose vocabulary renumbers the sample's ids is refused with examples."""
    from transformers import AutoTokenizer

    shuffled = word_vocab(list(reversed(WORDS)))
    other = AutoTokenizer.from_pretrained(save_word_tokenizer(tmp_path, shuffled))
    ids = model.tokenizer(" ".join(WORDS[:5]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with pytest.raises(IncompatibleTokenizersError, match=r"5 of 5 distinct ids .* 4: 'w0' vs 'w29'"):
        require_compatible(model.tokenizer, other, ids)


@pytest.mark.usefixtures("no_network", "hf_cache")
def test_hub_sources_offline_fail_fast_without_network(model: LoadedModel) -> None:
    """Offline, an uncached Hub model, SAE release or dataset says so (and how to fix it) without any request."""
    with pytest.raises(HubUnavailableError, match=r"offline: google/gemma-2b \(model\) is not in the HF cache "
                                                   r"\(pass --hub to download; gated: set HF_TOKEN\)"):
        load_model(ModelSource(hub="google/gemma-2b", tl_name="gemma-2b"))
    with pytest.raises(HubUnavailableError, match=r"offline: google/gemma-2b \(tokenizer\) is not in the HF cache"):
        load_tokenizer(ModelSource(hub="google/gemma-2b"))
    sae_offline = (r"gpt2-small-res-jb/blocks\.6\.hook_resid_pre: offline: "
                   r"jbloom/GPT2-Small-SAEs-Reformatted \(SAE\) is not in the HF cache")
    with pytest.raises(HubUnavailableError, match=sae_offline):
        load_sae(SaeSource(name="jb", release="gpt2-small-res-jb", sae_id="blocks.6.hook_resid_pre"))
    with pytest.raises(HubUnavailableError, match=r"offline: Skylion007/openwebtext \(dataset\)"):
        sample_tokens(DatasetSource(hub="Skylion007/openwebtext"), model.tokenizer, n_tokens=8, context_size=4,
                      prepend_bos=True, seed=0)


@pytest.mark.usefixtures("no_network", "hf_cache")
def test_allow_hub_under_hf_hub_offline_says_which_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With allow_hub but HF_HUB_OFFLINE=1 in the environment, the message names the variable."""
    from huggingface_hub import constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE=1 blocks downloads"):
        load_model(ModelSource(hub="openai-community/gpt2"), allow_hub=True)


def test_unknown_architecture_and_flags(tmp_path: Path) -> None:
    """An architecture without a mapping, and a processing flag TL does not have."""
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["FancyForCausalLM"]).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="'FancyForCausalLM' is not supported; supported: "):
        load_model(ModelSource(path=tmp_path))
    with pytest.raises(ProcessingFlagError, match="unknown processing flag 'fold_layernorm'"):
        load_model(ModelSource(path=tmp_path), processing={"fold_layernorm": True})


def test_unknown_release_suggests_names() -> None:
    from saetransfer.loading import SaeConfigError

    with pytest.raises(SaeConfigError, match=r"unknown SAELens release 'gpt2-small-res-jbb'; did you mean"):
        load_sae(SaeSource(name="x", release="gpt2-small-res-jbb", sae_id="blocks.6.hook_resid_pre"))
    with pytest.raises(SaeConfigError, match=r"has no sae_id 'blocks\.66\.hook_resid_pre'"):
        load_sae(SaeSource(name="x", release="gpt2-small-res-jb", sae_id="blocks.66.hook_resid_pre"))
