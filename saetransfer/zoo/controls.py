"""Known-answer finetunes built from a GPT-2-format checkpoint (the zoo base) on the fly.

Each control changes the weights in a way whose effect on the measurements is known by construction,
so the engine and the verdict can be checked on cases the zoo was not designed around:

- `rescale`: embeddings and every block's output projections x c. Every LayerNorm input is then c x the
  base's, so the model computes the same function (exactly, up to LayerNorm's eps) while the residual
  norm at every hook is c x the base's.
- `permute_residual`: the residual basis permuted consistently through every weight. LayerNorm commutes
  with a permutation, so the function is the same, the norms are the same, and the representation the
  SAE reads is a different one.
- `perturb_after`: noise on the blocks from `layer` on and the unembedding. Activations at or before
  `blocks.{layer}.hook_resid_pre` are bit-identical; only what comes after changes.
- `overflow_embedding`: one token's embedding row set to a value above float16's maximum, the fp16
  overflow a real finetune can hit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
FP16_MAX = 65504.0


def _copy(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return {k: v.float() for k, v in load_file(Path(src) / WEIGHTS).items()}


def _save(weights: dict[str, torch.Tensor], dst: Path) -> Path:
    # float32 on disk: the transforms must not be blurred by a bf16 round trip
    save_file({k: v.contiguous() for k, v in weights.items()}, str(Path(dst) / WEIGHTS))
    return Path(dst)


def _blocks(weights: dict[str, torch.Tensor]) -> list[int]:
    return sorted({int(k.split(".")[2]) for k in weights if k.startswith("transformer.h.")})


def rescale(src: Path, dst: Path, factor: float) -> Path:
    """Residual stream x `factor`: the same function, norms x `factor` at every hook."""
    w = _copy(src, dst)
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        w[name] = w[name] * factor
    for i in _blocks(w):
        for proj in ("attn.c_proj", "mlp.c_proj"):
            for part in ("weight", "bias"):
                key = f"transformer.h.{i}.{proj}.{part}"
                w[key] = w[key] * factor
    return _save(w, dst)


def permute_residual(src: Path, dst: Path, seed: int = 0) -> Path:
    """The residual dimensions permuted through every weight (GPT-2 Conv1D layout: [in, out])."""
    w = _copy(src, dst)
    d = w["transformer.wte.weight"].shape[1]
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(seed))
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"):
        w[name] = w[name][:, perm]  # [rows, d]
    for name in ("transformer.ln_f.weight", "transformer.ln_f.bias"):
        w[name] = w[name][perm]
    for i in _blocks(w):
        h = f"transformer.h.{i}"
        for ln in ("ln_1", "ln_2"):
            for part in ("weight", "bias"):
                w[f"{h}.{ln}.{part}"] = w[f"{h}.{ln}.{part}"][perm]
        for reads in ("attn.c_attn", "mlp.c_fc"):  # read the residual: permute the input rows
            w[f"{h}.{reads}.weight"] = w[f"{h}.{reads}.weight"][perm, :]
        for writes in ("attn.c_proj", "mlp.c_proj"):  # write the residual: permute the output columns
            w[f"{h}.{writes}.weight"] = w[f"{h}.{writes}.weight"][:, perm]
            w[f"{h}.{writes}.bias"] = w[f"{h}.{writes}.bias"][perm]
    return _save(w, dst)


def perturb_after(src: Path, dst: Path, layer: int, scale: float = 0.5, seed: int = 0) -> Path:
    """Relative noise on blocks >= `layer`, the final LayerNorm and the unembedding."""
    w = _copy(src, dst)
    gen = torch.Generator().manual_seed(seed)
    for name, value in w.items():
        late = name.startswith("transformer.h.") and int(name.split(".")[2]) >= layer
        if late or name.startswith(("transformer.ln_f.", "lm_head.")):
            w[name] = value + scale * value.std() * torch.randn(value.shape, generator=gen)
    return _save(w, dst)


def overflow_embedding(src: Path, dst: Path, token_id: int, value: float = 7e4) -> Path:
    """Token `token_id`'s embedding row set to `value` (> float16's 65504: inf once cast to fp16)."""
    w = _copy(src, dst)
    w["transformer.wte.weight"][token_id] = value
    return _save(w, dst)
