"""The GPU check, prepared for a machine without network (started by run_gpu.sh after it installs the wheels).

Two steps, each optional, results in one JSON naming the device:
- `zoo`: the zoo's findings (`pytest findings -k tiny -n 7`, with `--gpu` unless `--dry-run`), with the report and
  the result cache sent to a scratch folder (SAETRANSFER_REPORTS, SAETRANSFER_CACHE: the checkout's
  reports/ is not touched); then every pair's verdict and norm-matched verdict in that run's summary.csv
  against the committed CPU ones in reports/summary.csv, with the largest differences of the compared
  quantities.
- `bench`: a Gemma-2b-shaped pair with random weights (default: full depth, 18 layers, d_model 2048, MLP 16384,
  8 heads, 1 KV head, head_dim 256, 256,000 vocabulary; a random standard SAE of 16,384 latents at
  blocks.6.hook_resid_pre; context 1024; 262,144 tokens; the finetune is the base + 1 % noise), written as
  HF checkpoints, then in a fresh subprocess: both models loaded once through saetransfer.loading, the floor
  (benchmarks/floor.py: bare forward with CE of base and finetune, plus SAE encode/decode and a from-hook
  forward with CE per splice: the base SAE on the base; the base SAE and the norm-matched base SAE on the
  finetune), then `saetransfer.engine.evaluate_pair` on the same pair, reusing the loaded models (model
  loading is not the pass). Target: ours <= 1.2 x floor.

`--dry-run` runs all of it on the CPU at a tiny shape (2 layers, width 256, 256,000 vocabulary, 8,192 tokens,
bf16 models as on the GPU) and the zoo step on one pair without `--gpu`, to show that the script works.

Usage: python benchmarks/gpu/run_gpu.py [--dry-run] [--steps zoo bench] [--json PATH] [--work DIR]
Output: benchmarks/results/gpu.json (gpu-dry-run.json with --dry-run); copied into $OUT when that is set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
RESULTS = ROOT / "benchmarks" / "results"
COMMITTED_SUMMARY = ROOT / "reports" / "summary.csv"
TARGET_RATIO = 1.2
REFERENCE = {
    "device": "NVIDIA H200",
    "bare_bf16_forward_with_ce_seconds": 3.1,
    "pair_floor_seconds": 10.9,
    "note": "measured for the Gemma-2b shape below over 262,144 tokens (the performance issue)",
}
COMPARED = ("ev_ratio", "kl_score_drop", "ce_score_drop", "l0_ratio", "cosine", "explained_variance_finetune",
            "kl_div_score_finetune", "ce_loss_score_finetune")

FULL = {"layers": 18, "d_model": 2048, "d_mlp": 16384, "heads": 8, "kv_heads": 1, "head_dim": 256,
        "vocab": 256000, "d_sae": 16384, "hook_layer": 6, "context": 1024, "tokens": 262144, "batch_size": 8,
        "device": "cuda", "dtype": "bfloat16"}
DRY = {**FULL, "layers": 2, "d_model": 256, "d_mlp": 1024, "heads": 4, "head_dim": 64, "hook_layer": 1,
       "tokens": 8192, "batch_size": 2, "device": "cpu"}


# ---------------------------------------------------------------------------------------------
# zoo: the findings with --gpu, verdicts against the committed CPU ones


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["test_id"]: row for row in csv.DictReader(f)}


def compare_summaries(ours: Path, committed: Path = COMMITTED_SUMMARY) -> dict[str, Any]:
    """Verdicts of `ours` against `committed`, per test id that both evaluated."""
    mine, theirs = _rows(ours), _rows(committed)
    pairs = []
    for test_id, row in sorted(mine.items()):
        ref = theirs.get(test_id)
        if row.get("status") != "evaluated" or ref is None or ref.get("status") != "evaluated":
            continue
        diffs = {}
        for key in COMPARED:
            try:
                diffs[key] = abs(float(row[key]) - float(ref[key]))
            except (KeyError, ValueError):
                continue
        pairs.append({"test_id": test_id, "verdict": row["verdict"], "cpu_verdict": ref["verdict"],
                      "norm_matched_verdict": row["norm_matched_verdict"],
                      "cpu_norm_matched_verdict": ref["norm_matched_verdict"],
                      "same": row["verdict"] == ref["verdict"]
                      and row["norm_matched_verdict"] == ref["norm_matched_verdict"],
                      "abs_diff": diffs})
    return {"n_pairs": len(pairs), "all_verdicts_match": bool(pairs) and all(p["same"] for p in pairs),
            "max_abs_diff": {k: max((p["abs_diff"][k] for p in pairs if k in p["abs_diff"]), default=None)
                             for k in COMPARED},
            "pairs": pairs}


def _run(cmd: list[str], log: Path, timeout: float | None, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """Run `cmd` in the checkout, its output kept in `log`; exit code None when it ran past `timeout`: then it
    and everything it started (pytest's xdist workers) are stopped, and what it had printed is kept, so a step
    cut short still says how far it got and leaves nothing running beside the next step."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, to stop as one
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        code = None
    log.write_text(stdout + stderr)
    return code, stdout, stderr


def run_zoo(work: Path, *, gpu: bool, select: str, workers: int, timeout: float | None = None) -> dict[str, Any]:
    reports, cache = work / "zoo-reports", work / "zoo-cache"
    env = {**os.environ, "SAETRANSFER_REPORTS": str(reports), "SAETRANSFER_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "pytest", "findings", "-k", select, "-q", "-p", "no:cacheprovider",
           *(["--gpu"] if gpu else []), *(["-n", str(workers)] if workers > 1 else [])]
    start = time.perf_counter()
    code, stdout, stderr = _run(cmd, work / "zoo-pytest.log", timeout, env)
    lines = stdout.strip().splitlines() or [""]
    out: dict[str, Any] = {"command": " ".join(["pytest", *cmd[3:]]), "exit_code": code,
                           "seconds": time.perf_counter() - start, "pytest_summary": lines[-1],
                           "output_tail": lines[-40:] if code else [], "stderr_tail": stderr[-2000:]}
    if code is None:
        out["error"] = f"stopped at the deadline, {timeout:.0f} s after the step began"
    summary = reports / "summary.csv"
    if summary.exists():
        out["summary_csv"] = str(summary.relative_to(work))  # in the scratch folder (--work); $OUT gets a copy
        out.update(compare_summaries(summary))
    else:
        out["error"] = "; ".join(filter(None, [out.get("error"), "the run wrote no summary.csv (see its log)"]))
    return out


# ---------------------------------------------------------------------------------------------
# bench: a Gemma-2b-shaped pair, the floor against the engine


def build_pair(work: Path, shape: dict[str, Any]) -> Path:
    """Random Gemma-shaped base and finetune (base + 1 % noise), tokenizer, SAE and token parquet in `work`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from sae_lens import SAE
    from transformers import GemmaConfig, GemmaForCausalLM

    from saetransfer.loading.testing import save_word_tokenizer, word_vocab

    specials = ("<pad>", "<eos>", "<bos>", "<unk>")  # Gemma's ids: pad 0, eos 1, bos 2, unk 3
    vocab = word_vocab([f"w{i}" for i in range(shape["vocab"] - len(specials))], specials=specials)
    config = GemmaConfig(
        architectures=["GemmaForCausalLM"], hidden_size=shape["d_model"], intermediate_size=shape["d_mlp"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"], hidden_act="gelu",
        max_position_embeddings=8192, rms_norm_eps=1e-6, vocab_size=shape["vocab"], pad_token_id=0,
        eos_token_id=1, bos_token_id=2)
    build_device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(build_device):
        hf = GemmaForCausalLM(config).eval()
    hf.to(torch.bfloat16).save_pretrained(work / "base")  # bf16 on disk (half the size); loaded as fp32
    save_word_tokenizer(work / "base", vocab)
    gen = torch.Generator(build_device).manual_seed(1)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.01 * param.float().std().to(param.dtype)
                       * torch.randn(param.shape, generator=gen, device=build_device, dtype=param.dtype))
    hf.save_pretrained(work / "finetune")
    save_word_tokenizer(work / "finetune", vocab)
    del hf
    hook = f"blocks.{shape['hook_layer']}.hook_resid_pre"
    sae = SAE.from_dict({"architecture": "standard", "d_in": shape["d_model"], "d_sae": shape["d_sae"],
                         "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
                         "metadata": {"hook_name": hook, "context_size": shape["context"], "prepend_bos": True,
                                      "model_name": "random gemma-2b shape"}})
    cpu = torch.Generator().manual_seed(2)
    with torch.no_grad():
        w_dec = torch.randn(shape["d_sae"], shape["d_model"], generator=cpu)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    sae.save_model(work / "sae")
    rows = shape["tokens"] // shape["context"] + 4
    ids = torch.randint(len(specials), shape["vocab"], (rows, shape["context"]), generator=cpu)
    ids[:, 0] = vocab["<bos>"]
    pq.write_table(pa.table({"input_ids": ids.tolist()}), work / "tokens.parquet")
    (work / "shape.json").write_text(json.dumps(shape))
    return work


def _pair(work: Path, shape: dict[str, Any]) -> Any:
    from saetransfer.registry import parse_pair

    return parse_pair({
        "id": "gemma-2b-shape__random-finetune", "base": {"path": "base"}, "finetune": {"path": "finetune"},
        "sae": {"name": "random-16k", "path": "sae"}, "hook": f"blocks.{shape['hook_layer']}.hook_resid_pre",
        "dataset": {"path": "tokens.parquet", "column": "input_ids"}, "n_tokens": shape["tokens"],
        "batch_size": shape["batch_size"], "context_size": shape["context"],
    }, work, "benchmarks/gpu/run_gpu.py")


class _Timed:
    """Wraps loader functions the engine calls through `saetransfer.loading`: times them, and serves models
    loaded before the engine runs from memory (so the engine's time is the pass, not the loading)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.models: dict[str, Any] = {}
        self.model_hits = 0

    def install(self) -> None:
        from saetransfer import loading

        for name in ("load_sae", "load_tokenizer", "sample_tokens", "preflight", "compare_tokenizers",
                     "check_compatible"):
            setattr(loading, name, self._timer(name, getattr(loading, name)))
        original = loading.load_model

        def load_model(source: Any, **kwargs: Any) -> Any:
            key = json.dumps([str(source), kwargs], sort_keys=True, default=str)
            if key in self.models:
                self.model_hits += 1
                return self.models[key]
            start = time.perf_counter()
            self.models[key] = original(source, **kwargs)
            self.seconds["load_model"] = self.seconds.get("load_model", 0.0) + time.perf_counter() - start
            return self.models[key]

        loading.load_model = load_model

    def _timer(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return timed


def _progress(start: float, message: str) -> None:
    """One line per phase on stderr (kept in bench.log): where a long or cut-short bench spent its time."""
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)


def bench_child(work: Path) -> dict[str, Any]:
    """Floor, then the engine, on one set of loaded models (a fresh process: nothing else in memory)."""
    import torch

    from floor import Splice, measure_floor
    from saetransfer import engine, loading
    from saetransfer.config import RunConfig

    shape = json.loads((work / "shape.json").read_text())
    device, dtype = shape["device"], shape["dtype"]
    pair = _pair(work, shape)
    config = RunConfig(n_tokens=shape["tokens"], device=device, dtype=dtype, progress=False)
    timed = _Timed()
    timed.install()
    cuda = device.startswith("cuda")

    begun = start = time.perf_counter()
    sae = loading.load_sae(pair.sae, device=device)
    _progress(begun, "SAE loaded")
    load = dict(device=device, dtype=config.torch_dtype, processing=loading.processing_for(sae.model_from_pretrained_kwargs),
                allow_hub=False, n_ctx=shape["context"])  # as evaluate_pair loads them
    base = loading.load_model(pair.base, **load)
    _progress(begun, "base model loaded")
    ft = loading.load_model(pair.finetune, **load)
    _progress(begun, "finetune loaded")
    tok = loading.load_tokenizer(pair.base)
    sample = loading.sample_tokens(pair.dataset, tok, n_tokens=shape["tokens"], context_size=shape["context"],
                                   prepend_bos=True, seed=pair.seed)
    setup = time.perf_counter() - start
    _progress(begun, f"tokens sampled: {sample.tokens.shape}")
    models_mb = torch.cuda.memory_allocated() / 2**20 if cuda else None

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    layer = shape["hook_layer"]
    floor = measure_floor([(base.model, [Splice(sae.sae, layer)]),
                           (ft.model, [Splice(sae.sae, layer), Splice(sae.sae, layer, 1.1)])],
                          sample.tokens, shape["batch_size"], device=device)
    _progress(begun, f"floor: {floor['seconds']:.2f} s")
    if cuda:
        floor["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()

    before = dict(timed.seconds)
    start = time.perf_counter()
    result = engine.evaluate_pair(pair, config)
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    _progress(begun, f"ours: {total:.2f} s with its loaders")
    inside = {k: v - before.get(k, 0.0) for k, v in timed.seconds.items() if v - before.get(k, 0.0) > 0}
    reused = timed.model_hits == 2
    ours = {"seconds_total": total, "loader_seconds": inside, "reused_loaded_models": reused,
            "seconds_pass": total - sum(inside.values()), "n_tokens": result.provenance.n_tokens,
            "verdict": result.verdict.verdict, "n_kept": result.masking.n_kept,
            "ce_clean_base": result.sae.base.ce_clean, "ce_clean_finetune": result.sae.finetune.ce_clean}
    if cuda:
        ours["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    batch_pos_vocab = shape["batch_size"] * shape["context"] * shape["vocab"]
    return {
        "shape": shape, "setup_seconds": setup, "models_allocated_mb": models_mb,
        "batch_pos_vocab_bf16_mb": batch_pos_vocab * 2 / 2**20, "floor": floor, "ours": ours,
        "ratio": ours["seconds_pass"] / floor["seconds"], "target_ratio": TARGET_RATIO,
        "meets_target": ours["seconds_pass"] <= TARGET_RATIO * floor["seconds"],
        "logit_chunk_elements": getattr(engine, "LOGIT_CHUNK_ELEMENTS", None),
    }


def run_bench(work: Path, shape: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    (work / "pair").mkdir(parents=True, exist_ok=True)
    build_pair(work / "pair", shape)
    built = time.perf_counter() - start
    left = None if timeout is None else max(1.0, timeout - built)
    code, stdout, stderr = _run([sys.executable, __file__, "--bench-child", str(work / "pair")],
                                work / "bench.log", left)
    if code != 0:
        why = (f"stopped at the deadline: {timeout:.0f} s were left for the step, the build took {built:.0f} s"
               if code is None else f"bench child exited {code}")
        return {"error": why, "stderr_tail": stderr[-3000:], "build_seconds": built}
    out = json.loads(stdout.strip().splitlines()[-1])
    out["build_seconds"] = built
    return out


# ---------------------------------------------------------------------------------------------


def _device() -> dict[str, Any]:
    import torch

    import machine
    from saetransfer.engine import installed_version

    # a GPU image's own packages, not the CPU venv's pins
    names = ("transformers", "sae-lens", "transformer-lens", "pytest", "pytest-xdist", "numpy")
    info: dict[str, Any] = {**machine.describe(), "cuda_available": torch.cuda.is_available(),
                            "packages": {n: installed_version(n) for n in names}}
    if torch.cuda.is_available():
        info.update(name=torch.cuda.get_device_name(0), count=torch.cuda.device_count(), cuda=torch.version.cuda)
    else:
        info["name"] = f"cpu ({platform.processor() or platform.machine()})"
    return info


def _write(out: dict[str, Any], target: Path, work: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}", flush=True)
    if os.environ.get("OUT"):  # the device tool brings back what is under $OUT
        dest = Path(os.environ["OUT"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, dest / target.name)
        for name in ("zoo-pytest.log", "bench.log", "zoo-reports/summary.csv"):
            if (work / name).exists():
                shutil.copy(work / name, dest / name.replace("/", "-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, one zoo pair without --gpu")
    parser.add_argument("--steps", nargs="+", default=["zoo", "bench"], choices=["zoo", "bench"],
                        help="run in this order; the JSON is written after each")
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take: a step still running "
                        "then is stopped and records how far it got (for a machine lent by the minute)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/gpu.json (gpu-dry-run.json)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--zoo-select", help="pytest -k expression (default: tiny; tiny-gpt2__math with --dry-run)")
    parser.add_argument("--zoo-workers", type=int, default=None, help="pytest -n (default 7 on a GPU, 1 dry)")
    parser.add_argument("--tokens", type=int, help="override the bench's token count")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="override the bench models' dtype "
                        "(default bfloat16, as --gpu runs them)")
    parser.add_argument("--bench-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from saetransfer.offline import set_offline_environment

    set_offline_environment()
    if args.bench_child:
        import warnings

        warnings.simplefilter("ignore")
        print(json.dumps(bench_child(args.bench_child)))
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU rehearsal")
    shape = dict(DRY if args.dry_run else FULL)
    if args.tokens:
        shape["tokens"] = args.tokens
    if args.dtype:
        shape["dtype"] = args.dtype
    target = args.json or RESULTS / ("gpu-dry-run.json" if args.dry_run else "gpu.json")
    work = args.work or Path(tempfile.mkdtemp(prefix="saetransfer-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"device": _device(), "dry_run": args.dry_run, "reference": REFERENCE,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    started = time.perf_counter()

    def left() -> float | None:
        return None if args.deadline is None else max(1.0, args.deadline - (time.perf_counter() - started))

    try:
        for step in dict.fromkeys(args.steps):
            if step == "zoo":
                select = args.zoo_select or ("tiny-gpt2__math" if args.dry_run else "tiny")
                # one xdist worker per zoo pair (each pair's findings stay on one worker): 7 on a GPU machine
                workers = args.zoo_workers if args.zoo_workers is not None else (1 if args.dry_run else min(7, os.cpu_count() or 1))
                out["zoo"] = run_zoo(work, gpu=not args.dry_run, select=select, workers=workers,
                                     timeout=left())
                print("zoo:", json.dumps({k: v for k, v in out["zoo"].items() if k != "pairs"}), flush=True)
            else:
                out["bench"] = run_bench(work, shape, timeout=left())
                print("bench:", json.dumps(out["bench"]), flush=True)
            _write(out, target, work)  # after each step: a later step cut short loses nothing before it
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
