"""GPT-2-architecture LMs: build and train in TransformerLens, export to / load from HF checkpoints.

Exactness rules (so TL and HF GPT2LMHeadModel compute the same function): gelu, LayerNorm, untied
embeddings, and the unembedding bias b_U frozen at 0 (GPT-2's lm_head has no bias).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import einops
import numpy as np
import torch
from tqdm import tqdm
from transformer_lens import HookedTransformerConfig, loading
from transformer_lens.HookedTransformer import HookedTransformer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from saetransfer.zoo.config import LMArch, TrainSpec

log = logging.getLogger(__name__)

# How the zoo's TL models are made from the HF checkpoints: unprocessed weights (the SAEs' metadata says so).
NO_PROCESSING: dict[str, bool] = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                                  "fold_value_biases": False, "refactor_factored_attn_matrices": False}


def new_model(arch: LMArch, d_vocab: int, tok: PreTrainedTokenizerBase, seed: int) -> HookedTransformer:
    from sae_lens import HookedSAETransformer

    # TL's HF->TL config conversion assumes GPT-2's d_mlp = 4 * d_model (it ignores n_inner)
    assert arch.d_mlp == 4 * arch.d_model, "keep d_mlp = 4 * d_model so TL's GPT-2 loader reads it back"

    cfg = HookedTransformerConfig(
        n_layers=arch.n_layers, d_model=arch.d_model, n_heads=arch.n_heads, d_head=arch.d_model // arch.n_heads,
        d_mlp=arch.d_mlp, n_ctx=arch.n_ctx, d_vocab=d_vocab, act_fn="gelu", normalization_type="LN",
        original_architecture="GPT2LMHeadModel", seed=seed, device="cpu", default_prepend_bos=True)
    model = HookedSAETransformer(cfg, tokenizer=tok)
    model.unembed.b_U.requires_grad_(False)
    return model


def _lr_at(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model: HookedTransformer, rows: Mapping[str, np.ndarray], spec: TrainSpec, seed: int,
          desc: str) -> list[tuple[int, float]]:
    """Train in place on rows drawn (seeded) from `rows[split]` by `spec.mix` weights; returns the loss curve."""
    rng = np.random.default_rng(seed)
    splits = [s for s, _ in spec.mix]
    weights = np.array([w for _, w in spec.mix], dtype=np.float64)
    counts = rng.multinomial(spec.steps * spec.batch_rows, weights / weights.sum())
    # a seeded stream of rows per split, epoch by epoch, then interleaved at random
    picks = np.concatenate([np.stack([np.full(c, i), _epochs(rng, len(rows[s]), int(c))], 1)
                            for i, (s, c) in enumerate(zip(splits, counts))])
    picks = picks[rng.permutation(len(picks))]
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    curve: list[tuple[int, float]] = []
    ema = None
    model.train()
    bar = tqdm(range(spec.steps), desc=desc, unit="step", mininterval=5)
    for step in bar:
        batch = picks[step * spec.batch_rows:(step + 1) * spec.batch_rows]
        x = torch.from_numpy(np.stack([rows[splits[i]][j] for i, j in batch]))
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec)
        loss = model(x, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        v = loss.item()
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        bar.set_postfix(loss=f"{ema:.3f}")
        if step % max(1, spec.steps // 20) == 0 or step == spec.steps - 1:
            curve.append((step, round(v, 4)))
            log.info("%s step %d loss %.4f (ema %.4f)", desc, step, v, ema)
    model.eval()
    return curve


def _epochs(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    reps = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


@torch.no_grad()
def eval_loss(model: HookedTransformer, rows: np.ndarray, batch: int = 16) -> float:
    """Mean next-token CE in nats over all positions of `rows` (BOS is an input, never a target)."""
    total, n = 0.0, 0
    for i in range(0, len(rows), batch):
        x = torch.from_numpy(rows[i:i + batch])
        loss = model(x, return_type="loss", loss_per_token=True)
        total += float(loss.double().sum())
        n += loss.numel()
    return total / n


# ---------------------------------------------------------------------------------------------- HF export
def export_hf(model: HookedTransformer, tok: PreTrainedTokenizerBase, out_dir: Path, bf16: bool) -> None:
    """Write an HF GPT2LMHeadModel checkpoint dir (weights + tokenizer)."""
    cfg = model.cfg
    assert torch.all(model.unembed.b_U == 0), "b_U must stay 0: GPT-2 has no lm_head bias"
    hf_cfg = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_ctx=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=cfg.eps, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf = GPT2LMHeadModel(hf_cfg)
    sd = model.state_dict()
    new: dict[str, torch.Tensor] = {"transformer.wte.weight": sd["embed.W_E"],
                                    "transformer.wpe.weight": sd["pos_embed.W_pos"],
                                    "transformer.ln_f.weight": sd["ln_final.w"], "transformer.ln_f.bias": sd["ln_final.b"],
                                    "lm_head.weight": sd["unembed.W_U"].T}
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv_w = [einops.rearrange(sd[b + f"attn.W_{k}"], "h d e -> d (h e)") for k in "QKV"]
        qkv_b = [einops.rearrange(sd[b + f"attn.b_{k}"], "h e -> (h e)") for k in "QKV"]
        new |= {h + "ln_1.weight": sd[b + "ln1.w"], h + "ln_1.bias": sd[b + "ln1.b"],
                h + "attn.c_attn.weight": torch.cat(qkv_w, 1), h + "attn.c_attn.bias": torch.cat(qkv_b),
                h + "attn.c_proj.weight": einops.rearrange(sd[b + "attn.W_O"], "h e d -> (h e) d"),
                h + "attn.c_proj.bias": sd[b + "attn.b_O"],
                h + "ln_2.weight": sd[b + "ln2.w"], h + "ln_2.bias": sd[b + "ln2.b"],
                h + "mlp.c_fc.weight": sd[b + "mlp.W_in"], h + "mlp.c_fc.bias": sd[b + "mlp.b_in"],
                h + "mlp.c_proj.weight": sd[b + "mlp.W_out"], h + "mlp.c_proj.bias": sd[b + "mlp.b_out"]}
    missing, unexpected = hf.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    assert not missing and not unexpected, (missing, unexpected)
    if bf16:
        hf = hf.to(torch.bfloat16)
    hf.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def load_hf(path: Path) -> GPT2LMHeadModel:
    hf = GPT2LMHeadModel.from_pretrained(str(path), dtype=torch.float32)
    hf.eval()
    return hf


def load_tl(path: Path, tok: PreTrainedTokenizerBase | None = None) -> HookedTransformer:
    """An unprocessed fp32 HookedSAETransformer from a local HF checkpoint, fully offline.

    TL's `from_pretrained` insists on official names and fetches the Hub config; this route
    calls TL's own loaders (`convert_hf_model_config`, `get_pretrained_state_dict` in
    `transformer_lens/loading_from_pretrained.py`) on the local directory, with no patching.
    """
    from sae_lens import HookedSAETransformer

    from saetransfer.zoo.tokenizer import load_tokenizer

    tok = tok if tok is not None else load_tokenizer(path)
    hf = load_hf(path)
    cfg = HookedTransformerConfig(**loading.convert_hf_model_config(str(path)))
    cfg.default_prepend_bos = True
    sd = loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf)
    model = HookedSAETransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(sd, **NO_PROCESSING)
    model.eval()
    return model


@torch.no_grad()
def max_logit_diff(tl: HookedTransformer, hf: GPT2LMHeadModel, rows: np.ndarray) -> float:
    x = torch.from_numpy(rows)
    return float((tl(x, return_type="logits") - hf(x).logits).abs().max())


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def relative_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """||θ_a − θ_b|| / ||θ_b|| over parameters (not buffers: the attention mask holds -inf)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    num = den = 0.0
    for k, vb in pb.items():
        va = pa[k]
        if va.shape != vb.shape:  # the extra PAD row: compare the shared part
            va = va[tuple(slice(0, s) for s in vb.shape)]
        num += float((va.double() - vb.double()).pow(2).sum())
        den += float(vb.double().pow(2).sum())
    return math.sqrt(num / den)
