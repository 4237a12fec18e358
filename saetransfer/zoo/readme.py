"""fixtures/zoo/README.md, rendered from the build's own numbers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saetransfer.zoo.config import ZooConfig


def choices(cfg: ZooConfig) -> dict[str, str]:
    """What was tuned and why, with the config's own numbers."""
    b, c, m, r, s = cfg.base_train, cfg.code_train, cfg.math_train, cfg.retok_train, cfg.sae
    tok = b.batch_rows * cfg.base.n_ctx
    return {
        "base": f"{cfg.base.n_layers} layers, d_model {cfg.base.d_model}, {cfg.base.n_heads} heads, d_mlp "
                f"{cfg.base.d_mlp}, ctx {cfg.base.n_ctx} (the CPU prototype's size); {b.steps} steps x {tok} tokens of "
                f"stdlib prose at lr {b.lr:g}. b_U frozen at 0, gelu, LN, untied embeddings: the HF GPT-2 export is exact.",
        "code": f"full finetune of the base on Python code (docstrings/comments stripped), {c.steps} steps x {tok} "
                f"tokens at lr {c.lr:g}: 120 steps at 1e-3 (the prototype's setting) left activation cosine at 0.86 and "
                "EV at 0.62 vs 0.76 on base, too close to call; 300 steps at 3e-3 gave cosine 0.65 (Gemma: 0.67), "
                "EV 0.26, KL score 0.69 in a tuning run, a clear failure.",
        "math": f"light finetune, {m.steps} steps at lr {m.lr:g} (3e-4 raised the base SAE's L0 by 32 %) on {dict(m.mix)} rows, with one PAD token appended "
                "(vocab = base + 1; its embedding and lm_head rows mean-initialised, as HF's resize does): small "
                "enough that the base SAE keeps its EV, KL score and L0, like Mistral-7B -> MetaMath.",
        "retok": f"a smaller model ({cfg.retok.n_layers} layers, d_model {cfg.retok.d_model}, {r.steps} steps) with its "
                 f"own BPE tokenizer (vocab {cfg.retok_vocab_size}, code-heavy text, another seed): the same strings "
                 "get other ids, so the pair is not comparable and the findings stop at the tokenizer check.",
        "saes": f"SAELens standard (ReLU + L1) SAEs via LanguageModelSAETrainingRunner, d_sae {s.d_sae}, l1 "
                f"{s.l1_coefficient:g}, lr {s.lr:g}, {s.training_tokens:,} tokens of training prose (l1 5 / 1.2M tokens "
                "gave EV 0.76 at L0 68, l1 4 / 2.4M EV 0.76 at L0 37: L1 shrinkage capped EV), activations "
                "normalised (expected_average_only_in, folded into the saved weights). ReLU, as in the post, not "
                "TopK: TopK pins L0 at k, so L0 could not move when transfer fails (Kissane et al.'s L0 blow-up; on "
                "this zoo's code finetune L0 grows only mildly). base-relu reads models/base, code-relu models/code "
                "(the finetune-native reference SAE), both over the same prose.",
        "weights": "models saved in bf16 (safetensors) to keep fixtures small; every metric here is computed from "
                   "the weights as saved and reloaded into fp32 TransformerLens models (unprocessed: no LN folding, "
                   "no centering).",
        "budget": "step counts are sized for a ~30 min build on 2 shared CPU cores (another load on the same "
                  "cores made each step several times slower than in the prototype).",
    }


def _sae_rows(saes: dict[str, Any]) -> list[str]:
    """One table row per SAE, from its manifest entry: what it reads, and what it was trained on."""
    rows = []
    for name, s in saes.items():
        native = "" if s["model"] == "models/base" else " (finetune-native)"
        rows.append(f"| saes/{name} | SAELens {s['architecture']} SAE on {s['model']}{native} "
                    f"`{s['hook_name']}`, trained on its activations over {s['trained_on']} |")
    return rows


def _trained_on(saes: dict[str, Any]) -> str:
    kinds = sorted({s["trained_on"] for s in saes.values()})
    native = [n for n, s in saes.items() if s["model"] != "models/base"]
    text = (f"Every SAE was trained on {kinds[0]}" if len(kinds) == 1
            else "Training text per SAE: " + ", ".join(f"{n}: {s['trained_on']}" for n, s in saes.items()))
    if native and len(kinds) == 1:
        text += (f", the finetune-native ones ({', '.join(native)}) included: they read their finetune's "
                 "activations on that text, not on the finetune's own domain")
    return text + "."


def extra_choice(whys: Mapping[str, str]) -> str:
    """What `zoo saes` added and why (the manifest's choices["more saes"]), from {SAE name: why}."""
    parts = [f"{name} ({why})" if why else name for name, why in whys.items()]
    return ("added by `python -m saetransfer zoo saes` on the committed models, every one trained like base-relu "
            "(SAELens runner, same training prose, seed and activation normalisation; the build's files untouched, "
            "the training prose regenerated and checked against the committed eval rows): " + "; ".join(parts) + ".")


def _f(x: float) -> str:
    return f"{x:.3f}"


def write(out: Path, body: dict[str, Any]) -> None:
    p = body["pairs"]
    lines = [
        "# The embedded tiny model zoo",
        "",
        "Built by `python -m saetransfer zoo build` (saetransfer/zoo/) from Python's own standard library "
        "(prose = docstrings, comments and `pydoc_data.topics`; code = the source with those stripped; PSF licence) "
        "and seeded generated math word problems. Nothing comes from the Hub. Every number below and in "
        "`manifest.json` is this build's own output; `manifest.json` also holds the config, library versions, "
        "training curves and the sha256 of every file.",
        "",
        "| path | what |",
        "|---|---|",
        "| models/base | base LM (HF GPT2LMHeadModel + tokenizer), trained on prose |",
        "| models/code | full finetune on Python code: the large-shift Gemma analogue (expected: fails) |",
        "| models/math | light prose + math finetune with one added PAD token: the MetaMath analogue (transfers) |",
        "| models/retok | its own tokenizer: the GPT2-Portuguese analogue (not comparable) |",
        *_sae_rows(body["saes"]),
        "| data/{prose,code}-eval.parquet | held-out eval rows (`input_ids`, 128 ids, BOS first, base tokenizer) |",
        "",
        "## SAEs on their own model (held-out prose, SAELens `run_evals`)",
        "",
        _trained_on(body["saes"]),
        "",
        "| SAE | model | hook | architecture | trained on | tokens | explained var. | L0 | KL score | CE recovered "
        "| dead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {name} | {s['model']} | `{s['hook_name']}` | {s['architecture']} | {s['trained_on']} | "
          f"{s['spec']['training_tokens'] / 1e6:g}M | "
          f"{_f(e['explained_variance'])} | {e['l0']:.1f} | {_f(e['kl_div_score'])} | {_f(e['ce_loss_score'])} | "
          f"{e['dead_frac']:.1%} |"
          for name, s in body["saes"].items() for e in [s["eval_on_own_model_prose"]]],
        "",
        "dead: latents that never fired on these tokens.",
        "",
        "## Transfer evidence (base SAE, held-out prose, SAELens `run_evals`)",
        "",
        "| pair | act. cosine | explained var. | L0 | KL score | CE recovered |",
        "|---|---|---|---|---|---|",
    ]
    for pid in ("tiny-gpt2__self", "tiny-gpt2__math", "tiny-gpt2__code"):
        e = p[pid]["base_sae_on_finetune"]["prose"]
        lines.append(f"| {pid} | {_f(p[pid]['activation_similarity_prose']['cosine_mean'])} | "
                     f"{_f(e['explained_variance'])} | {e['l0']:.1f} | {_f(e['kl_div_score'])} | {_f(e['ce_loss_score'])} |")
    tc = p["tiny-gpt2__retok"]["tokenizer_comparison"]
    lines += [
        "",
        f"tiny-gpt2__retok: good tokens {tc['good_tokens_base_pct']:.2f} % of the base vocabulary "
        f"({tc['mismatched_ids']} shared strings with different ids, {tc['only_in_base']} only in base).",
        f"Span checks: {', '.join(f'{k}={v}' for k, v in body['span_checks'].items())}.",
        "",
        "## Choices",
        "",
        *[f"- **{k}**: {v}" for k, v in body["choices"].items()],
        "",
        "## Rebuild",
        "",
        "```",
        "python -m saetransfer zoo build --out zoo-build   # ~" + f"{body['build_seconds'] / 60:.0f} min on 2 CPU cores",
        *([f"python -m saetransfer zoo saes --zoo zoo-build  # ~{body['saes_stage']['seconds'] / 60:.0f} min: "
           f"adds {', '.join(body['saes_stage']['saes'])}"] if "saes_stage" in body else []),
        "python -m saetransfer zoo install zoo-build       # replaces fixtures/zoo",
        "python -m saetransfer zoo verify                  # sha256 of every file against manifest.json",
        "```",
        "",
        "The stdlib differs slightly between Python versions (this build: Python "
        f"{body['versions']['python']}), so a rebuild elsewhere gives close, not identical, numbers.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
