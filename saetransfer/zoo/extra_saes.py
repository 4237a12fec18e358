"""`zoo saes`: more SAEs on a built zoo's committed models, without rebuilding (or touching) anything else.

Inputs are the zoo's own files, checked first: every file against manifest.json's sha256, the build config
against the one recorded, and the training prose regenerated from the stdlib exactly as the build made it
(the corpus statistics must equal the manifest's, and the eval rows packed the same way must equal the
committed data/*.parquet). Only then are the SAEs trained (SAELens's runner, `sae.train_sae`), evaluated
with SAELens `run_evals` on their own model (held-out prose, as for the build's SAEs), and added to
saes/, manifest.json and README.md. Every other file stays byte-identical; that is checked at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saetransfer.zoo import corpora, lm, manifest, readme, sae, tokenizer
from saetransfer.zoo.config import ExtraSae, ZooConfig

log = logging.getLogger(__name__)
COMMAND = "python -m saetransfer zoo saes"
CHOICE_KEY = "more saes"
# files this stage rewrites; every other listed file must keep its sha256
REWRITTEN = ("README.md",)


class ZooInputError(RuntimeError):
    """The zoo's committed files, config or regenerated training data are not what its manifest records."""


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_inputs(zoo: Path, cfg: ZooConfig) -> dict[str, Any]:
    """The zoo's manifest, after checking every file's sha256 and the build config against it.

    Raises:
        ZooInputError: a file differs from (or is missing in, or is absent from) the manifest, or the
            config differs from the one the zoo was built with.
    """
    problems = manifest.verify(zoo)
    if problems:
        raise ZooInputError(f"{zoo} does not match its manifest.json; refusing to train on it:\n  "
                            + "\n  ".join(problems))
    man = manifest.read(zoo)
    if _json(cfg.to_dict()) != man["config"]:
        diff = sorted(k for k in man["config"] if _json(cfg.to_dict()).get(k) != man["config"][k])
        raise ZooInputError(f"{zoo} was built with another config (differs in {diff}); pass the one it was built with")
    return man


def training_rows(zoo: Path, cfg: ZooConfig, man: dict[str, Any]) -> np.ndarray:
    """The build's SAE training rows (train-split prose, base tokenizer), regenerated and checked.

    Raises:
        ZooInputError: the regenerated corpora differ from the manifest's statistics (another Python's
            stdlib), or the eval rows packed the same way differ from the committed data files.
    """
    from saetransfer.zoo.build import read_token_parquet

    corp = corpora.build_corpora(cfg.seed, cfg.max_files, cfg.eval_file_frac, cfg.n_math_train, cfg.n_math_eval)
    if _json(corp.stats) != man["corpora"]["stats"]:
        raise ZooInputError(
            f"the stdlib corpora differ from those {zoo} was built from (this Python: {corp.stats['files']['python']}, "
            f"the zoo's: {man['corpora']['stats']['files']['python']}): the training prose cannot be regenerated")
    tok = tokenizer.load_tokenizer(zoo / "models" / "base")
    n_ctx = cfg.base.n_ctx
    for split in ("prose", "code"):
        committed = read_token_parquet(zoo / "data" / f"{split}-eval.parquet")
        packed = tokenizer.pack_rows(tok, corp.eval[split], n_ctx)[: len(committed)]
        if not np.array_equal(packed, committed):
            raise ZooInputError(f"the regenerated held-out {split} rows differ from {zoo}/data/{split}-eval.parquet: "
                                "the corpora or the tokenizer do not reproduce the build's")
    return tokenizer.pack_rows(tok, corp.train["prose"], n_ctx)


def rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def _check_tokenizer(zoo: Path, model: str) -> None:
    files = manifest.read(zoo)["files"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if files[f"models/{model}/{name}"]["sha256"] != files[f"models/base/{name}"]["sha256"]:
            raise ZooInputError(f"models/{model} has its own tokenizer: the base tokenizer's training rows do not fit it")


def _threshold_stats(trained: Any) -> dict[str, float] | None:
    t = getattr(trained, "threshold", None)
    if t is None:
        return None
    t = t.detach().double()
    return {"mean": float(t.mean()), "median": float(t.median()), "min": float(t.min()), "max": float(t.max())}


def _entry(extra: ExtraSae, loaded: Any, rows: np.ndarray, cfg: ZooConfig, evals: dict[str, float],
           seconds: float) -> dict[str, Any]:
    md = loaded.cfg.metadata
    spec = asdict(extra.spec)
    if extra.architecture != "standard":  # l1 settings do not apply; the warm-up fraction does (JumpReLU's L0)
        spec = {k: v for k, v in spec.items() if k != "l1_coefficient"
                and (k != "l1_warm_up_frac" or extra.architecture == "jumprelu")}
    label = {"standard": "standard (ReLU, L1)", "topk": "topk (TopK, k fixed)",
             "jumprelu": "jumprelu (JumpReLU, L0 penalty)"}[extra.architecture]
    entry: dict[str, Any] = {
        "model": f"models/{extra.model}", "hook_name": md.hook_name, "architecture": label,
        "trained_on": "prose (train split)", "spec": spec,
        "metadata": {k: md.get(k) for k in ("model_name", "hook_name", "context_size", "prepend_bos",
                                            "model_from_pretrained_kwargs")},
        "eval_on_own_model_prose": evals,
        # keys below are this stage's (the build's SAEs lack them)
        "saelens_architecture": loaded.cfg.architecture(),
        "saelens_training_config": _json(md.get("training_architecture_details") or {}),
        "training_end_l0": md.get("l0"),
        "train_data": {"rows": int(len(rows)), "n_ctx": int(rows.shape[1]), "sha256_int64_rows": rows_sha256(rows),
                       "what": "train-split prose packed with models/base's tokenizer, as the build trained "
                               "base-relu and code-relu on (regenerated and checked by this stage)",
                       "seed": cfg.seed},
        "added_by": COMMAND, "why": extra.why, "train_seconds": round(seconds, 1),
    }
    if extra.architecture == "topk":
        entry["k"] = int(loaded.cfg.k)
    thr = _threshold_stats(loaded)
    if thr is not None:
        entry["threshold"] = thr
    return entry


def add_saes(zoo: Path, out: Path, cfg: ZooConfig, extras: Sequence[ExtraSae],
             order: Sequence[str] = ()) -> dict[str, Any]:
    """Train `extras` on `zoo`'s committed models and write zoo + them to `out` (may be `zoo` itself).

    Added SAEs already in the zoo are replaced, the build's own never. The manifest lists the build's SAEs,
    then the added ones in `order` (the config's), whatever order they were trained in. Returns the new
    manifest. Raises ZooInputError before any training if the inputs do not check out.
    """
    t0 = time.perf_counter()
    zoo, out = zoo.resolve(), out.resolve()
    man = check_inputs(zoo, cfg)
    built = {k for k, v in man["saes"].items() if v.get("added_by") != COMMAND}
    clash = sorted(built & {e.name for e in extras})
    if clash:
        raise ValueError(f"{clash} are the build's own SAEs; this stage never replaces them")
    for extra in extras:  # before the minutes of regenerating text
        _check_tokenizer(zoo, extra.model)
        n_layers = man["models"][extra.model]["arch"]["n_layers"]
        if extra.layer >= n_layers:
            raise ValueError(f"{extra.name}: models/{extra.model} has {n_layers} layers, no block {extra.layer}")
    timings: dict[str, float] = {}
    rows = training_rows(zoo, cfg, man)
    timings["inputs checked, training prose regenerated"] = round(time.perf_counter() - t0, 1)
    log.info("[zoo saes] inputs check out; %d training rows (sha256 %s)", len(rows), rows_sha256(rows)[:12])
    from saetransfer.zoo.build import read_token_parquet

    eval_prose = read_token_parquet(zoo / "data" / "prose-eval.parquet")
    models: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="zoo-saes-") as tmp:
        for extra in extras:
            t1 = time.perf_counter()
            if extra.model not in models:
                models[extra.model] = lm.load_tl(zoo / "models" / extra.model)
            model = models[extra.model]
            torch.manual_seed(cfg.seed)
            sae.train_sae(model, rows, extra.spec, extra.hook_name, f"saetransfer-zoo/{extra.model}", cfg.seed,
                          Path(tmp) / extra.name, extra.architecture, dict(extra.arch))
            seconds = time.perf_counter() - t1
            loaded = sae.load_sae(Path(tmp) / extra.name)
            evals = sae.evaluate(loaded, model, eval_prose, cfg.sae_eval_batches)
            entries[extra.name] = _entry(extra, loaded, rows, cfg, evals, seconds)
            timings[f"SAE {extra.name}"] = round(time.perf_counter() - t1, 1)
            log.info("[zoo saes] %s: EV %.3f, L0 %.1f, CE recovered %.3f (%.0f s)", extra.name,
                     evals["explained_variance"], evals["l0"], evals["ce_loss_score"], timings[f"SAE {extra.name}"])
        if out != zoo:
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(zoo, out)
        for name in entries:
            dest = out / "saes" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(Path(tmp) / name, dest)

    body = {k: v for k, v in man.items() if k not in ("format_version", "files")}
    merged = body["saes"] | entries
    rank = {name: i for i, name in enumerate(order)}
    added = sorted((n for n in merged if n not in built), key=lambda n: (rank.get(n, len(rank)), n))
    body["saes"] = {n: merged[n] for n in [*(n for n in merged if n in built), *added]}
    stage = body.get("saes_stage", {})
    recorded = stage.get("extras", {}) | {e.name: _json(e.to_dict()) for e in extras}
    recorded = {name: recorded[name] for name in body["saes"] if name in recorded}  # zoo order
    body["choices"] = body["choices"] | {CHOICE_KEY: readme.extra_choice({n: e["why"] for n, e in recorded.items()})}
    all_timings = stage.get("timings_s", {}) | timings  # a later run's times replace an earlier one's
    body["saes_stage"] = {
        "command": COMMAND, "what": "SAEs added to the built zoo from its committed models and regenerated "
                                    "training prose; the build's own files are unchanged",
        "saes": list(recorded), "extras": recorded, "versions": manifest.versions(),
        "timings_s": all_timings, "seconds": round(sum(all_timings.values()), 1)}
    readme.write(out, body)
    new = manifest.write(out, body)
    changed = sorted(rel for rel, e in man["files"].items()
                     if rel not in REWRITTEN and not rel.startswith(tuple(f"saes/{n}/" for n in entries))
                     and new["files"].get(rel) != e)
    if changed:
        raise RuntimeError(f"zoo saes changed files it must not touch: {changed}")
    return new
