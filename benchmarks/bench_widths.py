"""Real widths on the CPU: shape-true random stand-ins for Gemma-2b, Mistral-7B (MetaMath's vocabulary) and
GPT2-small, through the project's own loader and engine, written as JSON.

Each shape is built from its config with random weights in a temporary directory (deleted afterwards, never
committed) and measured in fresh subprocesses, one model at a time, so that peak RSS belongs to one step:
- `build`: the HF checkpoint (and, for GPT2-small, a finetune = the same weights + 1 % noise), a tokenizer of
  the full vocabulary, a random SAELens standard SAE of real width (16,384 latents, the model's d_model, the
  pair's hook) and a parquet of random token ids (column `input_ids`, BOS first); the HF model's logits on
  a short input are kept and the HF model is freed before the step ends;
- `check`: `saetransfer.loading.load_model` without weight processing gives HF's logits, and with the
  engine's processing (TransformerLens defaults) HF's log-probs, within `ATOL + RTOL * |HF|`;
- `engine`: `saetransfer.engine.evaluate_pair` on a registry `Pair` (`registry.parse_pair`) for the local
  files, fp32 on the CPU: wall time (model loading included), peak RSS, and the largest vocabulary-wide
  tensor any torch op produced during the call (a `TorchDispatchMode` sees every op, the engine's own and
  TransformerLens's). Tensors shaped like the unembedding (`[d_model, vocab]`: W_U while it is loaded and
  processed, and its slices in finding 4) are weights and reported apart; every other vocabulary-wide
  tensor is activation-sized and must stay within the engine's logits chunk
  (`LOGIT_CHUNK_ELEMENTS // vocab` positions), below one `[batch, pos, vocab]` tensor. The batch sizes are
  chosen so that `batch * pos * vocab` exceeds the chunk for every shape.

The engine is called only through `evaluate_pair(pair, RunConfig(...))`, so this survives changes inside it.

Usage: nice -n 10 python benchmarks/bench_widths.py [--shapes gemma-2b mistral-7b gpt2-small] [--keep DIR]
Output: benchmarks/results/widths.json (about 15 CPU minutes in all on 2 cores; loading Gemma's shape peaks near
17 GB RSS, so run it on a machine with room for that and nothing else big running)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .` too
OUT = ROOT / "benchmarks" / "results" / "widths.json"

D_SAE = 16_384
ATOL, RTOL = 1e-4, 1e-4
"""fp32 on the CPU, different kernels for the same math (the tiny-model tests see ~1e-7)."""
CHECK_SHAPE = (2, 16)
"""The short input of the logits check: rows x tokens."""

# As the checkpoints' config.json files say, with fewer layers where the name says so.
SHAPES: dict[str, dict[str, Any]] = {
    "gemma-2b": {
        "what": "google/gemma-2b's config.json (width, 8 heads, 1 KV head (MQA), head_dim 256, 256,000 vocabulary) "
                "with 2 of its 18 layers",
        "config_class": "GemmaConfig", "architecture": "GemmaForCausalLM",
        "config": {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 2,
                   "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "hidden_act": "gelu",
                   "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                   "attention_bias": False, "vocab_size": 256000, "pad_token_id": 0, "eos_token_id": 1,
                   "bos_token_id": 2, "tie_word_embeddings": True},
        "specials": ("<pad>", "<eos>", "<bos>", "<unk>"), "extra_tokens": (),
        "hook": "blocks.1.hook_resid_pre", "context": 128, "batch_size": 8, "n_tokens": 4096, "finetune": "same",
    },
    "mistral-7b": {
        "what": "mistralai/Mistral-7B-v0.1's config.json (width 4096, MLP 14336, 32 heads, 8 KV heads (GQA), "
                "sliding window 4096) with 2 of its 32 layers and MetaMath-Mistral-7B's 32,001-row unembedding "
                "(its added PAD token)",
        "config_class": "MistralConfig", "architecture": "MistralForCausalLM",
        "config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 2,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "sliding_window": 4096, "vocab_size": 32001, "bos_token_id": 1, "eos_token_id": 2,
                   "pad_token_id": 32000, "tie_word_embeddings": False},
        "specials": ("<unk>", "<bos>", "<eos>"), "extra_tokens": ("<pad>",),
        "hook": "blocks.1.hook_resid_pre", "context": 128, "batch_size": 32, "n_tokens": 4096, "finetune": "same",
    },
    "gpt2-small": {
        "what": "openai-community/gpt2 at full size (12 layers, width 768, 12 heads, 50,257 vocabulary); the "
                "finetune is the same weights + 1 % Gaussian noise",
        "config_class": "GPT2Config", "architecture": "GPT2LMHeadModel",
        "config": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257,
                   "bos_token_id": 0, "eos_token_id": 1},
        "specials": ("<bos>", "<eos>", "<unk>", "<pad>"), "extra_tokens": (),
        "hook": "blocks.6.hook_resid_pre", "context": 128, "batch_size": 16, "n_tokens": 4096,
        "finetune": "perturbed",
    },
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_tokens(spec: dict[str, Any], bos: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(1)
    first_word = len(spec["specials"])
    tokens = torch.randint(first_word, spec["config"]["vocab_size"], CHECK_SHAPE, generator=gen)
    tokens[:, 0] = bos
    return tokens


# ---------------------------------------------------------------------------------------------
# steps (each runs in its own subprocess)


def _build(name: str, work: Path) -> dict[str, Any]:
    """Checkpoint(s), tokenizer, SAE and token parquet for `name`; HF's logits on a short input."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    from saetransfer.loading.testing import save_word_tokenizer, word_vocab

    spec = SHAPES[name]
    cfg = spec["config"]
    start = time.perf_counter()
    n_words = cfg["vocab_size"] - len(spec["specials"]) - len(spec["extra_tokens"])
    vocab = word_vocab([*(f"w{i}" for i in range(n_words)), *spec["extra_tokens"]], specials=spec["specials"])
    assert len(vocab) == cfg["vocab_size"]
    config = getattr(transformers, spec["config_class"])(architectures=[spec["architecture"]], **cfg)
    torch.manual_seed(0)
    hf = getattr(transformers, spec["architecture"])(config).eval()
    hf.save_pretrained(work / "base")
    save_word_tokenizer(work / "base", vocab)
    bos = vocab["<bos>"]
    tokens = _check_tokens(spec, bos)
    with torch.no_grad():
        logits = hf(tokens).logits
    torch.save({"tokens": tokens, "logits": logits}, work / "hf_logits.pt")
    if spec["finetune"] == "perturbed":
        gen = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for param in hf.parameters():
                param.add_(0.01 * param.std() * torch.randn(param.shape, generator=gen))
        hf.save_pretrained(work / "finetune")
        save_word_tokenizer(work / "finetune", vocab)
    n_params = sum(p.numel() for p in hf.parameters())
    del hf, logits
    gc.collect()

    d_model = cfg.get("hidden_size") or cfg["n_embd"]
    _save_sae(work / "sae", d_in=d_model, hook=spec["hook"], context=spec["context"])
    gen = torch.Generator().manual_seed(3)
    rows = spec["n_tokens"] // spec["context"] + 8
    ids = torch.randint(len(spec["specials"]), n_words + len(spec["specials"]), (rows, spec["context"]),
                        generator=gen)
    ids[:, 0] = bos
    pq.write_table(pa.table({"input_ids": ids.tolist()}), work / "tokens.parquet")
    size = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    return {"seconds": time.perf_counter() - start, "n_params": n_params, "disk_mb": size / 2**20}


def _save_sae(directory: Path, *, d_in: int, hook: str, context: int) -> None:
    """A random SAELens standard SAE: unit-norm decoder rows, encoder = decoder^T, a small negative bias."""
    import torch
    from sae_lens import SAE

    sae = SAE.from_dict({"architecture": "standard", "d_in": d_in, "d_sae": D_SAE, "dtype": "float32",
                         "device": "cpu", "apply_b_dec_to_input": False,
                         "metadata": {"hook_name": hook, "context_size": context, "prepend_bos": True,
                                      "model_name": "random stand-in"}})
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        w_dec = torch.randn(D_SAE, d_in, generator=gen)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    sae.save_model(directory)


def _check(name: str, work: Path) -> dict[str, Any]:
    """The project's loader against HF's logits: raw without processing, log-probs with the engine's."""
    import torch

    from saetransfer.loading import load_model
    from saetransfer.registry import ModelSource

    ref = torch.load(work / "hf_logits.pt")
    tokens, hf_logits = ref["tokens"], ref["logits"]
    out: dict[str, Any] = {"input": list(tokens.shape), "atol": ATOL, "rtol": RTOL,
                           "max_abs_hf_logit": float(hf_logits.abs().max())}
    start = time.perf_counter()
    none = dict.fromkeys(("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"), False)
    for label, processing, transform in (("unprocessed_logits", none, lambda t: t),
                                         ("processed_log_probs", None, lambda t: t.log_softmax(-1))):
        loaded = load_model(ModelSource(path=work / "base"), processing=processing, n_ctx=SHAPES[name]["context"])
        with torch.no_grad():
            ours, theirs = transform(loaded.model(tokens)), transform(hf_logits)
        diff = (ours - theirs).abs()
        out[label] = {"max_abs_diff": float(diff.max()),
                      "ok": bool((diff <= ATOL + RTOL * theirs.abs()).all())}
        del loaded, ours, theirs, diff
        gc.collect()
    out["seconds"] = time.perf_counter() - start
    out["ok"] = out["unprocessed_logits"]["ok"] and out["processed_log_probs"]["ok"]
    return out


class _VocabTensors:
    """Records, through a TorchDispatchMode, the largest vocabulary-wide tensor any op outputs."""

    def __init__(self, vocab: int, d_model: int) -> None:
        self.vocab, self.d_model = vocab, d_model
        self.activation: dict[str, Any] = {"elements": 0}
        self.weight: dict[str, Any] = {"elements": 0}
        self.n_ops = 0

    def mode(self) -> Any:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                out = func(*args, **(kwargs or {}))
                recorder.n_ops += 1
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == recorder.vocab:
                        kind = "weight" if tuple(t.shape[:-1]) == (recorder.d_model,) else "activation"
                        best = getattr(recorder, kind)
                        if t.numel() > best["elements"]:
                            best.update(elements=t.numel(), shape=list(t.shape), op=str(func))
                return out

        return Mode()


def _engine(name: str, work: Path) -> dict[str, Any]:
    """evaluate_pair on the local files, under the vocabulary-tensor recorder."""
    import torch

    from saetransfer import engine
    from saetransfer.config import RunConfig
    from saetransfer.registry import parse_pair

    spec = SHAPES[name]
    finetune = "finetune" if spec["finetune"] == "perturbed" else "base"
    pair = parse_pair({
        "id": f"{name}__bench-widths", "base": {"path": "base"}, "finetune": {"path": finetune},
        "sae": {"name": "random-16k", "path": "sae"}, "hook": spec["hook"],
        "dataset": {"path": "tokens.parquet", "column": "input_ids"}, "n_tokens": spec["n_tokens"],
        "batch_size": spec["batch_size"], "context_size": spec["context"],
    }, work, "benchmarks/bench_widths.py")
    cfg = spec["config"]
    vocab, d_model = cfg["vocab_size"], cfg.get("hidden_size") or cfg["n_embd"]
    recorder = _VocabTensors(vocab, d_model)
    start = time.perf_counter()
    with recorder.mode():
        result = engine.evaluate_pair(pair, RunConfig(n_tokens=spec["n_tokens"], progress=False))
    seconds = time.perf_counter() - start
    chunk_elements = getattr(engine, "LOGIT_CHUNK_ELEMENTS", None)
    batch_pos_vocab = spec["batch_size"] * spec["context"] * vocab
    activation = recorder.activation
    return {
        "seconds": seconds, "n_tokens": result.provenance.n_tokens,
        "tokens_per_second": result.provenance.n_tokens / seconds, "torch_threads": torch.get_num_threads(),
        "verdict": result.verdict.verdict, "n_kept": result.masking.n_kept,
        "ce_clean_base": result.sae.base.ce_clean, "kl_spliced_base": result.sae.base.kl_spliced,
        "vocab_tensors": {
            "logit_chunk_elements": chunk_elements,
            "logit_chunk_positions": chunk_elements // vocab if chunk_elements else None,
            "batch_pos_vocab_elements": batch_pos_vocab,
            "batch_pos_vocab_fp32_mb": batch_pos_vocab * 4 / 2**20,
            "largest_activation": activation, "largest_weight_shaped": recorder.weight,
            "n_ops_seen": recorder.n_ops,
            "no_batch_pos_vocab_tensor": activation["elements"] < batch_pos_vocab,
            "within_chunk": chunk_elements is not None and activation["elements"] <= max(chunk_elements, vocab),
        },
    }


def _child(step: str, name: str, work: Path) -> None:
    from saetransfer.offline import set_offline_environment

    set_offline_environment()
    import warnings

    warnings.simplefilter("ignore")
    load = os.getloadavg()[0]
    out = {"build": _build, "check": _check, "engine": _engine}[step](name, work)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    out["load_average_1min"] = [load, os.getloadavg()[0]]  # before, after: other jobs on the machine
    print(json.dumps(out))


def _run_step(step: str, name: str, work: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", step, name, str(work)], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} {step} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--keep", type=Path, help="build into this directory and keep it (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", nargs="+", default=["build", "check", "engine"], choices=["build", "check", "engine"],
                        help="rerun some steps on a --keep directory built before (the others' records are kept)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], Path(args.child[2]))
        return
    import machine

    previous = json.loads(args.out.read_text())["shapes"] if args.out.exists() else {}
    shapes = {k: v for k, v in previous.items() if k in SHAPES}
    for name in args.shapes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-widths-{name}-")) if args.keep is None else args.keep / name
        work.mkdir(parents=True, exist_ok=True)
        try:
            spec = SHAPES[name]
            record: dict[str, Any] = {"what": spec["what"], "architecture": spec["architecture"],
                                      "config": spec["config"], "d_sae": D_SAE, "hook": spec["hook"],
                                      "context": spec["context"], "batch_size": spec["batch_size"],
                                      "finetune": spec["finetune"]}
            for step in ("build", "check", "engine"):
                if step not in args.steps:
                    record[step] = shapes.get(name, {}).get(step)
                    continue
                record[step] = _run_step(step, name, work)
                print(name, step, json.dumps(record[step]), flush=True)
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
        shapes[name] = record
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": machine.describe(),
            "note": "random stand-ins with the real widths, fp32 on the CPU; engine seconds (wall) include model "
                    "loading; cpu_seconds is the step's process CPU time (user + system), less sensitive than wall "
                    "time to other jobs on the machine (load_average_1min: before, after); peak_rss_mb is each "
                    "step's own subprocess; vocab_tensors.largest_activation is the largest "
                    "vocabulary-wide tensor of any op during evaluate_pair other than [d_model, vocab] weights",
            "shapes": shapes}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
