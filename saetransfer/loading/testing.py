"""Tiny offline stand-ins for real checkpoints: tokenizers, HF models, SAEs and a fake HF cache.

For tests and notebooks: every builder is seeded, small (a few hundred KB) and offline, and writes
the same on-disk layout the real thing has, so the real loading code paths run on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

BOS, EOS, UNK, PAD = "<bos>", "<eos>", "<unk>", "<pad>"
SPECIALS = (BOS, EOS, UNK, PAD)

# Small configs per architecture; GQA where the family has it, a short Mistral sliding window so
# that local attention is exercised by short sequences. Gemma 3: local and global layers, a window of
# 4, RoPE bases far apart per layer type and a query scalar that is not head_dim, so that each of them
# changes the logits.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "GPT2LMHeadModel": {"n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4},
    "GemmaForCausalLM": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
                         "max_position_embeddings": 64},
    "MistralForCausalLM": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                           "max_position_embeddings": 64, "sliding_window": 4},
    "Gemma3ForCausalLM": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                          "max_position_embeddings": 64, "sliding_window": 4, "query_pre_attn_scalar": 32,
                          "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                              "full_attention": {"rope_type": "default", "rope_theta": 1000.0}}},
    "LlamaForCausalLM": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}},
}


def word_vocab(words: Sequence[str], specials: Sequence[str] = SPECIALS) -> dict[str, int]:
    """Specials first, then words, numbered in order."""
    return {token: i for i, token in enumerate([*specials, *words])}


def save_word_tokenizer(directory: Path, vocab: dict[str, int]) -> Path:
    """A whitespace WordLevel tokenizer saved in HF format (TL needs one loaded from disk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {k: v for k, v in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", UNK), ("pad_token", PAD))
                if v in vocab}
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(directory)
    return Path(directory)


def save_bpe_tokenizer(directory: Path, texts: Sequence[str], *, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on `texts` (two corpora give two independent tokenizers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    end = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, pad_token=end)
    fast.save_pretrained(directory)
    return Path(directory)


def save_tiny_model(directory: Path, architecture: str, *, vocab_size: int, seed: int = 0,
                    bos_token_id: int = 0, eos_token_id: int = 1, overrides: dict[str, Any] | None = None,
                    init_std: float | None = None) -> torch.nn.Module:
    """A seeded random HF causal LM of `architecture` (a `TINY_CONFIGS` key) saved to `directory`.

    `overrides` update the tiny config (e.g. soft-caps); `init_std` redraws every parameter from
    N(0, init_std), norm weights included (HF initialises Gemma's to 0, where a wrong `1 + w` would
    not show). Returns the model in eval mode (from_config builds it in training mode, with dropout on).
    """
    import transformers

    config_cls = {"GPT2LMHeadModel": "GPT2Config", "GemmaForCausalLM": "GemmaConfig",
                  "Gemma3ForCausalLM": "Gemma3TextConfig", "MistralForCausalLM": "MistralConfig",
                  "LlamaForCausalLM": "LlamaConfig"}[architecture]
    config = getattr(transformers, config_cls)(vocab_size=vocab_size, bos_token_id=bos_token_id,
                                               eos_token_id=eos_token_id, pad_token_id=None,
                                               architectures=[architecture],
                                               **{**TINY_CONFIGS[architecture], **(overrides or {})})
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    if init_std is not None:
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, init_std)
    model.save_pretrained(directory)
    return model


def save_tiny_sae(directory: Path, *, d_in: int, d_sae: int, hook_name: str, context_size: int = 16,
                  prepend_bos: bool = True, architecture: str = "standard", seed: int = 0,
                  model_from_pretrained_kwargs: dict[str, Any] | None = None) -> Path:
    """A seeded random SAELens SAE saved as `cfg.json` + `sae_weights.safetensors`."""
    from sae_lens import SAE

    metadata: dict[str, Any] = {"hook_name": hook_name, "context_size": context_size, "prepend_bos": prepend_bos,
                                "model_name": "tiny"}
    if model_from_pretrained_kwargs is not None:
        metadata["model_from_pretrained_kwargs"] = model_from_pretrained_kwargs
    cfg: dict[str, Any] = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
                           "device": "cpu", "metadata": metadata}
    if architecture == "topk":
        cfg["k"] = max(1, d_sae // 8)
    torch.manual_seed(seed)
    sae = SAE.from_dict(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.1)
    sae.save_model(directory)
    return Path(directory)


def save_gemma_scope_2_folder(directory: Path, *, layer: int, d_in: int, d_sae: int, seed: int = 0,
                              model_name: str = "google/gemma-3-270m-pt", with_config: bool = True) -> Path:
    """A Gemma Scope 2 residual SAE folder as on the Hub: `config.json` and `params.safetensors`.

    The layout SAELens's `gemma_3` conversion reads (`sae_lens.loading.pretrained_sae_loaders`):
    lower-case `w_enc` (d_in, d_sae), `w_dec` (d_sae, d_in), `b_enc`, `b_dec`, `threshold`, float32.
    Without `with_config` SAELens infers the config from the repo and folder names.
    """
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    params = {"w_enc": torch.randn(d_in, d_sae, generator=generator) * 0.1,
              "w_dec": torch.randn(d_sae, d_in, generator=generator) * 0.1,
              "b_enc": torch.randn(d_sae, generator=generator) * 0.01,
              "b_dec": torch.randn(d_in, generator=generator) * 0.01,
              "threshold": torch.rand(d_sae, generator=generator) * 0.05}
    save_file(params, str(directory / "params.safetensors"))
    if with_config:
        hook = f"model.layers.{layer}.output"
        (directory / "config.json").write_text(json.dumps({
            "width": d_sae, "model_name": model_name, "architecture": "jump_relu", "l0": 60,
            "affine_connection": False, "hf_hook_point_in": hook, "hf_hook_point_out": hook, "type": "sae"}))
    return directory


def fake_hub_cache(cache: Path, repo_id: str, files: Path, *, repo_type: Literal["model", "dataset"] = "model",
                   commit: str = "0123456789abcdef0123456789abcdef01234567", subfolder: str = "") -> Path:
    """Place `files` (a dir) in an HF cache layout, as `repo_id@main` = `commit`; returns the snapshot dir.

    Point huggingface_hub at it with `huggingface_hub.constants.HF_HUB_CACHE = str(cache)`.
    """
    storage = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    target = storage / "snapshots" / commit / subfolder
    shutil.copytree(files, target, dirs_exist_ok=True)
    return storage / "snapshots" / commit
