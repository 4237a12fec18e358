"""Local HF checkpoints of every supported architecture load through TransformerLens with HF's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saetransfer.loading import LoadedModel, load_model, load_tokenizer, processing_for
from saetransfer.loading.testing import TINY_CONFIGS, fake_hub_cache, save_tiny_model, save_word_tokenizer, word_vocab
from saetransfer.registry import ModelSource

ATOL = 1e-4  # fp32 on CPU; observed max |dlogit| ~1e-7 (different attention kernels, same math)
WORDS = [f"w{i}" for i in range(60)]
NO_PROCESSING = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                 "fold_value_biases": False}
ARCHITECTURES = sorted(TINY_CONFIGS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """One tiny seeded checkpoint per architecture, with the HF model that wrote it."""
    root = tmp_path_factory.mktemp("ckpt")
    vocab = word_vocab(WORDS)
    out = {}
    for arch in ARCHITECTURES:
        directory = root / arch
        hf = save_tiny_model(directory, arch, vocab_size=len(vocab))
        save_word_tokenizer(directory, vocab)
        out[arch] = (directory, hf)
    return out


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    torch.manual_seed(1)
    ids = torch.randint(4, 4 + len(WORDS), (2, 12))
    ids[:, 0] = 0  # BOS
    return ids


def hf_logits(hf: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(tokens).logits


def tl_logits(loaded: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(tokens)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unprocessed_logits_equal_hf(checkpoints, tokens, arch: str) -> None:
    """Without weight processing, TL's logits are HF's logits (GQA, Gemma's sqrt(d) embed, sliding window)."""
    directory, hf = checkpoints[arch]
    loaded = load_model(ModelSource(path=directory), processing=NO_PROCESSING)
    torch.testing.assert_close(tl_logits(loaded, tokens), hf_logits(hf, tokens), atol=ATOL, rtol=0)
    assert loaded.architecture == arch and loaded.revision is None
    assert loaded.d_vocab == hf.config.vocab_size == loaded.model.cfg.d_vocab
    assert loaded.model.cfg.normalization_type in ("LN", "RMS")  # nothing folded


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_processing_preserves_log_probs(checkpoints, tokens, arch: str) -> None:
    """TL's default processing (fold LN, centre) changes logits by a per-position constant only."""
    directory, hf = checkpoints[arch]
    loaded = load_model(ModelSource(path=directory))
    torch.testing.assert_close(tl_logits(loaded, tokens).log_softmax(-1), hf_logits(hf, tokens).log_softmax(-1),
                               atol=ATOL, rtol=0)
    assert loaded.model.cfg.normalization_type in ("LNPre", "RMSPre")  # folded
    centred = loaded.model.W_U.mean(-1)
    torch.testing.assert_close(centred, torch.zeros_like(centred), atol=1e-6, rtol=0)


def test_gpt2_sae_basis_processing_keeps_writing_weights_uncentred(checkpoints, tokens) -> None:
    """`processing_for` an SAE trained with center_writing_weights=False leaves the residual stream as HF's."""
    directory, hf = checkpoints["GPT2LMHeadModel"]
    flags = processing_for({"center_writing_weights": False})
    assert flags == {"fold_ln": True, "center_writing_weights": False, "center_unembed": True,
                     "fold_value_biases": True}
    loaded = load_model(ModelSource(path=directory), processing=flags)
    _, cache = loaded.model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], hidden, atol=ATOL, rtol=0)


def test_processing_for_reads_sae_kwargs() -> None:
    """TL defaults (all True), overridden by the SAE's flags; device-like keys do not change the basis."""
    assert processing_for({}) == dict.fromkeys(NO_PROCESSING, True)
    assert processing_for({"fold_ln": False, "n_devices": 2, "dtype": "bfloat16"})["fold_ln"] is False


def test_extended_vocabulary_keeps_its_rows(tmp_path: Path, tokens) -> None:
    """A finetune with one added token (MetaMath's PAD) keeps d_vocab = base + 1 and HF's logits on every row."""
    vocab = word_vocab([*WORDS, "<extra_pad>"])
    hf = save_tiny_model(tmp_path, "MistralForCausalLM", vocab_size=len(vocab))
    save_word_tokenizer(tmp_path, vocab)
    loaded = load_model(ModelSource(path=tmp_path), processing=NO_PROCESSING)
    assert loaded.d_vocab == len(vocab) == len(word_vocab(WORDS)) + 1
    torch.testing.assert_close(tl_logits(loaded, tokens), hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_dtype_cast_after_fp32_processing(checkpoints, tokens) -> None:
    """bf16 is a cast of the fp32-processed weights (never processed in reduced precision)."""
    directory, _ = checkpoints["LlamaForCausalLM"]
    fp32 = load_model(ModelSource(path=directory))
    bf16 = load_model(ModelSource(path=directory), dtype=torch.bfloat16)
    assert bf16.model.cfg.dtype == torch.bfloat16 and bf16.model.W_U.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.model.W_U, fp32.model.W_U.to(torch.bfloat16), atol=0, rtol=0)


def test_n_ctx_bounds_the_context(checkpoints) -> None:
    """The default context follows TL's family cap (or the checkpoint); n_ctx sets it explicitly."""
    directory, _ = checkpoints["MistralForCausalLM"]
    assert load_model(ModelSource(path=directory)).model.cfg.n_ctx == 64
    assert load_model(ModelSource(path=directory), n_ctx=16).model.cfg.n_ctx == 16


def test_hub_source_loads_from_the_hf_cache_and_records_the_commit(checkpoints, tokens, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub repo resolves through the HF cache offline, with the snapshot's commit as the revision."""
    from huggingface_hub import constants as hub_constants

    directory, hf = checkpoints["GPT2LMHeadModel"]
    fake_hub_cache(tmp_path, "tiny-org/tiny-gpt2", directory, commit="c" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = load_model(ModelSource(hub="tiny-org/tiny-gpt2"), processing=NO_PROCESSING)
    assert loaded.revision == "c" * 40 and loaded.source.hub == "tiny-org/tiny-gpt2"
    torch.testing.assert_close(tl_logits(loaded, tokens), hf_logits(hf, tokens), atol=ATOL, rtol=0)
    assert loaded.tokenizer.get_vocab() == word_vocab(WORDS)
    assert load_tokenizer(ModelSource(hub="tiny-org/tiny-gpt2")).get_vocab() == word_vocab(WORDS)


def test_load_tokenizer_reads_only_the_tokenizer(checkpoints) -> None:
    """The engine compares tokenizers before loading any weights."""
    directory, _ = checkpoints["GemmaForCausalLM"]
    tok = load_tokenizer(ModelSource(path=directory))
    assert tok.get_vocab() == word_vocab(WORDS) and tok.bos_token_id == 0


def test_hub_repo_with_only_pickled_weights(tmp_path: Path, tokens, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old finetunes (lvwerra/gpt2-imdb era) ship pytorch_model.bin only; it is the fallback to safetensors."""
    from huggingface_hub import constants as hub_constants

    files = tmp_path / "files"
    hf = save_tiny_model(files, "GPT2LMHeadModel", vocab_size=len(word_vocab(WORDS)))
    save_word_tokenizer(files, word_vocab(WORDS))
    (files / "model.safetensors").unlink()
    torch.save(hf.state_dict(), files / "pytorch_model.bin")
    fake_hub_cache(tmp_path / "cache", "old-org/gpt2-finetune", files)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    loaded = load_model(ModelSource(hub="old-org/gpt2-finetune"), processing=NO_PROCESSING)
    torch.testing.assert_close(tl_logits(loaded, tokens), hf_logits(hf, tokens), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Gemma 3 (google/gemma-3-270m and -it): every setting TL needs is read from config.json.

# Each variant of the tiny Gemma 3 config changes HF's logits; TL, loading the same weights with the
# variant config, must follow. A setting TL ignored would leave TL on the original logits.
GEMMA3_VARIANTS: dict[str, dict] = {
    "window-covers-sequence": {"sliding_window": 64},  # local layers become global ones
    "all-global": {"layer_types": ["full_attention"] * 3},
    "one-rope-base": {"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
                                          "full_attention": {"rope_type": "default", "rope_theta": 1000.0}}},
    "query-scalar-is-head-dim": {"query_pre_attn_scalar": 8},
    "final-soft-cap": {"final_logit_softcapping": 2.0},
    # HF keeps it in the config but Gemma3Attention never applies it: neither may TL
    "attention-soft-cap-unused": {"attn_logit_softcapping": 0.5},
}


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """Tiny Gemma 3 with every weight redrawn (norm weights too) so that no setting is a no-op."""
    directory = tmp_path_factory.mktemp("gemma3")
    hf = save_tiny_model(directory, "Gemma3ForCausalLM", vocab_size=len(word_vocab(WORDS)), init_std=0.3)
    save_word_tokenizer(directory, word_vocab(WORDS))
    return directory, hf


def _gemma3_variant(directory: Path, target: Path, changes: dict, drop: tuple[str, ...] = ()) -> Path:
    import json
    import shutil

    shutil.copytree(directory, target)
    config = {k: v for k, v in json.loads((target / "config.json").read_text()).items() if k not in drop}
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


@pytest.mark.parametrize("variant", sorted(GEMMA3_VARIANTS))
def test_gemma3_reads_each_setting_from_the_config(gemma3, tokens, tmp_path: Path, variant: str) -> None:
    from transformers import AutoModelForCausalLM

    directory, hf = gemma3
    folder = _gemma3_variant(directory, tmp_path / variant, GEMMA3_VARIANTS[variant])
    hf_variant = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = hf_logits(hf_variant, tokens)
    changed = (expected - hf_logits(hf, tokens)).abs().max().item()
    if variant == "attention-soft-cap-unused":
        assert changed == 0
    else:
        assert changed > 1e-2, f"{variant} does not change HF's logits here: the test would prove nothing"
    torch.testing.assert_close(tl_logits(load_model(ModelSource(path=folder), processing=NO_PROCESSING), tokens),
                               expected, atol=ATOL, rtol=0)
    # the default processing too (center_unembed is off under a final soft-cap, as in TL's from_pretrained)
    torch.testing.assert_close(tl_logits(load_model(ModelSource(path=folder)), tokens).log_softmax(-1),
                               expected.log_softmax(-1), atol=ATOL, rtol=0)


def test_gemma3_reads_the_transformers_4_keys(gemma3, tokens, tmp_path: Path) -> None:
    """google/gemma-3-270m's config.json was written by transformers 4.55: rope_theta (global) and
    rope_local_base_freq (local) instead of rope_parameters."""
    directory, hf = gemma3
    folder = _gemma3_variant(directory, tmp_path / "v4", {"rope_theta": 1000.0, "rope_local_base_freq": 10.0,
                                                           "rope_scaling": None}, drop=("rope_parameters",))
    loaded = load_model(ModelSource(path=folder), processing=NO_PROCESSING)
    assert (loaded.model.cfg.rotary_base, loaded.model.cfg.rotary_base_local) == (1000.0, 10.0)
    torch.testing.assert_close(tl_logits(loaded, tokens), hf_logits(hf, tokens), atol=ATOL, rtol=0)


# google/gemma-3-270m config.json (transformers 4.55.0.dev0), the fields a model config reads; the -it
# finetune has the same architecture. The sizes agree with TL's name-keyed entry for the family.
GEMMA3_270M = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "_sliding_window_pattern": 6,
    "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640, "intermediate_size": 2048, "max_position_embeddings": 32768, "num_attention_heads": 4,
    "num_hidden_layers": 18, "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3, "use_bidirectional_attention": False,
    "vocab_size": 262144, "tie_word_embeddings": True,
}


def test_gemma3_270m_config_matches_transformer_lens_own_entry(tmp_path: Path) -> None:
    """From the checkpoint's config.json, the TL config TL itself uses for google/gemma-3-270m (no weights)."""
    import json

    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformers import AutoConfig

    from saetransfer.loading.tl_configs import tl_config

    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_270M))
    ours = tl_config(AutoConfig.from_pretrained(tmp_path), name="google/gemma-3-270m")
    official = convert_hf_model_config("google/gemma-3-270m")  # name-keyed in TL: no request
    theirs = HookedTransformerConfig.from_dict({k: v for k, v in official.items()
                                                if k not in ("tokenizer_name", "quantization_method")})
    fields = [k for k in official if k not in ("tokenizer_name", "quantization_method", "initializer_range")]
    assert {k: getattr(ours, k) for k in fields} == {k: getattr(theirs, k) for k in fields}
    assert ours.attn_scale == theirs.attn_scale == 16.0  # 1/sqrt(query_pre_attn_scalar = 256 = head_dim)
    assert ours.output_logits_soft_cap == theirs.output_logits_soft_cap  # none for Gemma 3


def test_gemma3_residual_stream_is_hfs_layer_output(gemma3, tokens) -> None:
    """Gemma Scope 2 reads HF's `model.layers.N.output`; TL's blocks.N.hook_resid_post under the default
    processing (what its SAELens config asks: no model_from_pretrained_kwargs) is that tensor."""
    directory, hf = gemma3
    loaded = load_model(ModelSource(path=directory), processing=processing_for({}))
    names = [f"blocks.{n}.hook_resid_post" for n in range(3)]
    _, cache = loaded.model.run_with_cache(tokens, names_filter=names)
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    for n, name in enumerate(names[:-1]):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(cache[name], hidden[n + 1], atol=ATOL, rtol=0)


def test_n_devices_reaches_the_transformer_lens_config(checkpoints, tokens, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAETRANSFER_N_DEVICES (or n_devices=) becomes HookedTransformerConfig.n_devices, TL's split over GPUs.

    On the CPU every block stays on the CPU (TL places by cfg.device), so the logits are still HF's; CUDA's
    device count is faked, because TL asserts that it has the devices.
    """
    directory, hf = checkpoints["MistralForCausalLM"]
    assert load_model(ModelSource(path=directory)).model.cfg.n_devices == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SAETRANSFER_N_DEVICES", "2")
    loaded = load_model(ModelSource(path=directory), processing=NO_PROCESSING)
    assert loaded.model.cfg.n_devices == 2 and loaded.model.cfg.device == "cpu"
    torch.testing.assert_close(tl_logits(loaded, tokens), hf_logits(hf, tokens), atol=ATOL, rtol=0)
    assert load_model(ModelSource(path=directory), n_devices=1).model.cfg.n_devices == 1  # the argument wins


@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be a positive integer"), ("two", "must be a positive integer"),
    ("3", "splits each model over 3 GPUs, but CUDA sees 2"),
])
def test_n_devices_refuses_what_cuda_cannot_give(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from saetransfer.loading import DeviceUnavailableError
    from saetransfer.loading.models import model_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SAETRANSFER_N_DEVICES", value)
    with pytest.raises(DeviceUnavailableError, match=message):
        model_devices()
