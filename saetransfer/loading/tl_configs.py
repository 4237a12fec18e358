"""HF `config.json` -> TransformerLens `HookedTransformerConfig`, per architecture.

TransformerLens's `convert_hf_model_config` knows Gemma and Llama only by official name (on a local
dir it fails or guesses wrong), so the mapping is done here, mirroring TL's own per-architecture
entries, and TL's weight converters (`transformer_lens.pretrained.weight_conversions`) are reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from saetransfer.loading.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformerConfig
    from transformers import PreTrainedConfig

# Default context: TL's own per-family caps (a causal mask of n_ctx^2 per layer), else the
# checkpoint's maximum.
_N_CTX_CAP: dict[str, int] = {"MistralForCausalLM": 2048, "LlamaForCausalLM": 2048, "GemmaForCausalLM": 8192,
                              "Gemma3ForCausalLM": 8192}



def _rope(hf: PreTrainedConfig) -> dict[str, Any]:
    """Rotary base and scaling; transformers 5 keeps them in `rope_parameters`, 4.x in `rope_scaling`."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    scaling = dict(getattr(hf, "rope_scaling", None) or {}) or params
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None) or 10000.0)
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    out: dict[str, Any] = {"rotary_base": theta, "positional_embedding_type": "rotary"}
    if kind == "llama3":
        out.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=scaling.get("original_max_position_embeddings", hf.max_position_embeddings),
            NTK_by_parts_low_freq_factor=scaling.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=scaling.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=scaling.get("factor", 1.0))
    elif kind != "default":
        raise UnsupportedArchitectureError(
            f"rope scaling {kind!r} has no TransformerLens equivalent (supported: default, llama3)")
    return out


def _refuse(hf: PreTrainedConfig, **forbidden: Any) -> None:
    for key, bad in forbidden.items():
        if getattr(hf, key, None) == bad:
            raise UnsupportedArchitectureError(
                f"{hf.architectures[0]} with {key}={bad!r} is not supported by TransformerLens's converter")


def _gpt2(hf: PreTrainedConfig) -> dict[str, Any]:
    _refuse(hf, add_cross_attention=True)
    return {
        "d_model": hf.n_embd, "d_head": hf.n_embd // hf.n_head, "n_heads": hf.n_head,
        "d_mlp": hf.n_inner or 4 * hf.n_embd, "n_layers": hf.n_layer,
        # transformers 5 GPT2Config has no n_ctx; n_positions is the learned-position table
        "n_ctx": getattr(hf, "n_ctx", None) or hf.n_positions,
        "eps": hf.layer_norm_epsilon, "d_vocab": hf.vocab_size, "act_fn": hf.activation_function,
        "use_attn_scale": hf.scale_attn_weights, "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": hf.scale_attn_by_inverse_layer_idx, "normalization_type": "LN",
    }


def _gemma(hf: PreTrainedConfig) -> dict[str, Any]:
    # TL's name-keyed gemma-2b entry says act_fn "gelu"; HF's Gemma runs the tanh approximation
    # (it rewrites "gelu" to "gelu_pytorch_tanh"), so take HF's value to match HF's logits.
    _refuse(hf, attention_bias=True)
    return {
        "d_model": hf.hidden_size, "d_head": hf.head_dim, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act,
        "normalization_type": "RMS", "rotary_dim": hf.head_dim, "use_attn_scale": True,
        "n_key_value_heads": hf.num_key_value_heads, "gated_mlp": True, "final_rms": True, **_rope(hf),
    }


# HF Gemma 3 layer types -> TL attention types
_GEMMA3_ATTN = {"sliding_attention": "local", "full_attention": "global"}


def _gemma3_rope(hf: PreTrainedConfig) -> dict[str, Any]:
    """Per-layer-type RoPE of Gemma 3: the global base (and linear scaling), the local base.

    transformers 5 keeps one `rope_parameters` dict per layer type; 4.x has `rope_theta` (global),
    `rope_local_base_freq` (local) and `rope_scaling` (global layers only).
    """
    params = dict(getattr(hf, "rope_parameters", None) or {})
    if "full_attention" in params:
        full, local = dict(params["full_attention"] or {}), dict(params.get("sliding_attention") or {})
    else:
        full = {"rope_theta": getattr(hf, "rope_theta", None) or 1_000_000.0,
                **(getattr(hf, "rope_scaling", None) or {})}
        local = {"rope_theta": getattr(hf, "rope_local_base_freq", None) or 10_000.0}
    out: dict[str, Any] = {"rotary_base": full["rope_theta"], "rotary_base_local": local["rope_theta"],
                           "positional_embedding_type": "rotary"}
    full_kind = full.get("rope_type") or full.get("type") or "default"
    local_kind = local.get("rope_type") or local.get("type") or "default"
    if full_kind == "linear":  # TL scales the global layers only, as HF does (Gemma 3 4B and up)
        out["rotary_scaling_factor"] = float(full.get("factor", 1.0))
    elif full_kind != "default" or local_kind != "default":
        raise UnsupportedArchitectureError(
            f"Gemma 3 rope scaling {full_kind!r} (global) / {local_kind!r} (local) has no TransformerLens "
            "equivalent (supported: default, or linear on the global layers)")
    return out


def _gemma3(hf: PreTrainedConfig) -> dict[str, Any]:
    # Mirrors TL's name-keyed google/gemma-3-* entries, read from the config instead: q/k norms, pre-
    # and post-norms around attention and MLP, local/global layers with their own RoPE bases, and the
    # query scale 1/sqrt(query_pre_attn_scalar) (TL divides by attn_scale). The sqrt(d_model) embedding
    # scale is in TL's converter (convert_gemma_weights).
    _refuse(hf, attention_bias=True, use_bidirectional_attention=True)
    layer_types = list(hf.layer_types)
    unknown = sorted(set(layer_types) - set(_GEMMA3_ATTN))
    if unknown or len(layer_types) != hf.num_hidden_layers:
        raise UnsupportedArchitectureError(
            f"{hf.architectures[0]} layer_types {unknown or layer_types} are not {sorted(_GEMMA3_ATTN)} "
            f"for each of the {hf.num_hidden_layers} layers")
    attn_types = [_GEMMA3_ATTN[kind] for kind in layer_types]
    local = "local" in attn_types
    # HF's Gemma3Attention keeps attn_logit_softcapping in the config but never applies it (q/k norms
    # replaced Gemma 2's attention soft-cap), so neither does TL here; the final logit soft-cap it applies.
    caps = {} if hf.final_logit_softcapping is None else {"output_logits_soft_cap": float(hf.final_logit_softcapping)}
    return {
        "d_model": hf.hidden_size, "d_head": hf.head_dim, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_activation,
        "normalization_type": "RMS", "rotary_dim": hf.head_dim, "use_attn_scale": True,
        "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": hf.num_key_value_heads, "gated_mlp": True, "final_rms": True,
        "use_normalization_before_and_after": True, "use_qk_norm": True,
        "use_local_attn": local, "attn_types": attn_types if local else None,
        "window_size": hf.sliding_window if local else None, **caps, **_gemma3_rope(hf),
    }


def _mistral(hf: PreTrainedConfig) -> dict[str, Any]:
    head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    window = getattr(hf, "sliding_window", None)
    return {
        "d_model": hf.hidden_size, "d_head": head, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act,
        "window_size": window, "attn_types": ["local"] * hf.num_hidden_layers if window else None,
        "use_local_attn": bool(window), "n_key_value_heads": hf.num_key_value_heads,
        "normalization_type": "RMS", "rotary_dim": head, "gated_mlp": True, **_rope(hf),
    }


def _llama(hf: PreTrainedConfig) -> dict[str, Any]:
    _refuse(hf, attention_bias=True, mlp_bias=True)
    head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    kv = hf.num_key_value_heads
    return {
        "d_model": hf.hidden_size, "d_head": head, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act,
        # TL switches to grouped-query attention whenever this is set
        "n_key_value_heads": kv if kv != hf.num_attention_heads else None,
        "normalization_type": "RMS", "rotary_adjacent_pairs": False, "rotary_dim": head,
        "final_rms": True, "gated_mlp": True, **_rope(hf),
    }


_CONFIGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "GPT2LMHeadModel": _gpt2, "GemmaForCausalLM": _gemma, "Gemma3ForCausalLM": _gemma3,
    "MistralForCausalLM": _mistral, "LlamaForCausalLM": _llama,
}


def converter(architecture: str) -> Callable[[Any, Any], dict[str, torch.Tensor]]:
    """TL's HF -> HookedTransformer state-dict converter for a supported architecture."""
    from transformer_lens.pretrained import weight_conversions as wc

    return {
        "GPT2LMHeadModel": wc.convert_gpt2_weights, "GemmaForCausalLM": wc.convert_gemma_weights,
        "Gemma3ForCausalLM": wc.convert_gemma_weights,  # TL's own choice for Gemma 3 (q/k norms included)
        "MistralForCausalLM": wc.convert_mistral_weights, "LlamaForCausalLM": wc.convert_llama_weights,
    }[architecture]


def tl_config(hf_config: PreTrainedConfig, *, name: str, n_ctx: int | None = None,
              n_devices: int = 1) -> HookedTransformerConfig:
    """The fp32 CPU `HookedTransformerConfig` for an HF config (GPT-2, Gemma v1, Gemma 3 text, Mistral, Llama).

    Args:
        hf_config: the checkpoint's config (`AutoConfig.from_pretrained(dir)`).
        name: model name recorded in the TL config.
        n_ctx: longest sequence the model will see; default: TL's cap for the family or the
            checkpoint's maximum, whichever is smaller.
        n_devices: GPUs TransformerLens splits the model's blocks over (TL asserts that CUDA has them).

    Raises:
        UnsupportedArchitectureError: another architecture, or an option TL cannot express.
    """
    from transformer_lens import HookedTransformerConfig

    architecture = _architecture(hf_config)
    if architecture not in _CONFIGS:
        raise UnsupportedArchitectureError(
            f"{name}: architecture {architecture!r} is not supported; supported: {sorted(_CONFIGS)}")
    cfg = _CONFIGS[architecture](hf_config)
    limit = cfg["n_ctx"]
    if n_ctx is not None and not 0 < n_ctx <= limit:
        raise UnsupportedArchitectureError(f"{name}: n_ctx={n_ctx} outside 1..{limit} (the checkpoint's maximum)")
    cfg["n_ctx"] = n_ctx or min(limit, _N_CTX_CAP.get(architecture, limit))
    cfg.update(original_architecture=architecture, model_name=name, init_weights=False, device="cpu",
               dtype=torch.float32, n_devices=n_devices, default_prepend_bos=True)
    lacking = sorted(set(cfg) - {f.name for f in dataclasses.fields(HookedTransformerConfig)})
    if lacking:  # e.g. Gemma 3's use_qk_norm / rotary_base_local in an older transformer-lens
        import transformer_lens

        raise UnsupportedArchitectureError(
            f"{name}: {architecture} needs TransformerLens config fields {lacking}, which transformer-lens "
            f"{getattr(transformer_lens, '__version__', '?')} lacks; upgrade transformer-lens")
    return HookedTransformerConfig.from_dict(cfg)


def _architecture(hf_config: PreTrainedConfig) -> str:
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise UnsupportedArchitectureError(f"config {hf_config.model_type!r} names no architectures[0]")
    return architectures[0]
