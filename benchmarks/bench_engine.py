"""Speed and memory of the streaming engine, written as JSON (not asserted in timed tests).

Measures, on a zoo pair, each in a fresh subprocess (so peak RSS belongs to one run):
- `engine`: saetransfer's one pass computing findings 1-4 for base and finetune, at several token
  budgets: wall time, tokens/s and peak RSS (bounded memory means RSS stays flat as tokens grow);
- `saelens`: the hand-rolled alternative, `sae_lens.evals.run_evals` on the base and on the finetune
  over the same tokens (reconstruction, CE/KL, sparsity and feature density only; no similarity,
  no feature transfer, no outlier masking).

Usage: python benchmarks/bench_engine.py [--pair tiny-gpt2__code] [--tokens 16384 65536]
Output: benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .` too
OUT = ROOT / "benchmarks" / "results" / "engine.json"


def _engine(pair_id: str, n_tokens: int) -> dict:
    from saetransfer.engine import RunConfig, evaluate_pair
    from saetransfer.registry import get_pair, load_registry

    pair = get_pair(load_registry(), pair_id)
    start = time.perf_counter()
    result = evaluate_pair(pair, RunConfig(n_tokens=n_tokens, progress=False))
    return {"seconds": time.perf_counter() - start, "n_tokens": result.provenance.n_tokens}


def _saelens(pair_id: str, n_tokens: int) -> dict:
    from datasets import Dataset
    from sae_lens import ActivationsStore
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from saetransfer import loading
    from saetransfer.registry import get_pair, load_registry

    pair = get_pair(load_registry(), pair_id)
    start = time.perf_counter()
    sae = loading.load_sae(pair.sae)
    tok = loading.load_tokenizer(pair.base)
    sample = loading.sample_tokens(pair.dataset, tok, n_tokens=n_tokens, context_size=sae.context_size,
                                   prepend_bos=sae.prepend_bos, seed=pair.seed)
    rows, batch = sample.tokens.shape[0], pair.batch_size
    for source in (pair.base, pair.finetune):
        model = loading.load_model(source, processing=loading.processing_for(sae.model_from_pretrained_kwargs),
                                   n_ctx=sae.context_size).model
        store = ActivationsStore.from_sae(model=model, sae=sae.sae, dataset=Dataset.from_dict(
            {"input_ids": sample.tokens.tolist()}), context_size=sae.context_size, streaming=False,
            store_batch_size_prompts=batch, n_batches_in_buffer=4, train_batch_size_tokens=batch * sae.context_size,
            device="cpu")
        n_batches = rows // batch
        run_evals(sae=sae.sae, activation_store=store, model=model, activation_scaler=ActivationScaler(),
                  eval_config=EvalConfig(batch_size_prompts=batch, n_eval_reconstruction_batches=n_batches,
                                         n_eval_sparsity_variance_batches=n_batches, compute_kl=True,
                                         compute_ce_loss=True, compute_sparsity_metrics=True,
                                         compute_variance_metrics=True, compute_featurewise_density_statistics=True))
    return {"seconds": time.perf_counter() - start, "n_tokens": int(sample.tokens.numel())}


def _child(kind: str, pair_id: str, n_tokens: int) -> None:
    from saetransfer.offline import set_offline_environment

    set_offline_environment()
    import warnings

    warnings.simplefilter("ignore")
    out = (_engine if kind == "engine" else _saelens)(pair_id, n_tokens)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="tiny-gpt2__code")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    import machine

    runs = []
    for kind in ("engine", "saelens"):
        for n_tokens in args.tokens:
            proc = subprocess.run([sys.executable, __file__, "--child", kind, args.pair, str(n_tokens)],
                                  capture_output=True, text=True, check=True, cwd=ROOT)
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run.update(kind=kind, tokens_per_second=run["n_tokens"] / run["seconds"])
            runs.append(run)
            print(json.dumps(run))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "pair": args.pair, "machine": machine.describe(),
        "note": "engine = findings 1-4 for both models in one pass (incl. model loading); saelens = run_evals "
                "on base and finetune over the same tokens (reconstruction, CE/KL, sparsity only)",
        "runs": runs}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
