"""The embedded tiny zoo: the builder still builds (small config), and fixtures/zoo is intact and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saetransfer.paths import ZOO
from saetransfer.zoo import manifest
from saetransfer.zoo.cli import install, main

MODELS = ("base", "code", "math", "retok")
SAES = ("base-relu", "code-relu")  # the build's own
# added by `zoo saes` (config.EXTRA_SAES): name -> (model, hook, SAELens architecture)
EXTRA_SAES = {
    "base-relu-l1": ("base", "blocks.1.hook_resid_pre", "standard"),
    "base-relu-l3": ("base", "blocks.3.hook_resid_pre", "standard"),
    "code-relu-l1": ("code", "blocks.1.hook_resid_pre", "standard"),
    "code-relu-l3": ("code", "blocks.3.hook_resid_pre", "standard"),
    "base-topk": ("base", "blocks.2.hook_resid_pre", "topk"),
    "base-jumprelu": ("base", "blocks.2.hook_resid_pre", "jumprelu"),
}
PAIRS = ("tiny-gpt2__self", "tiny-gpt2__math", "tiny-gpt2__code", "tiny-gpt2__retok")
# SAELens prefixes this warning with a newline, so pytest.ini's `.*non-empty ...` pattern never matches it
# ('.' does not match '\n'); we do load the models unprocessed, as the metadata asks.
SAE_KWARGS_WARNING = r"ignore:\s*This SAE has non-empty model_from_pretrained_kwargs:UserWarning"


def _check_loadable(root: Path) -> None:
    import pyarrow.parquet as pq
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vocab = {}
    for name in MODELS:
        model = AutoModelForCausalLM.from_pretrained(root / "models" / name)
        tok = AutoTokenizer.from_pretrained(root / "models" / name)
        assert model.config.vocab_size == len(tok), name
        assert getattr(model.config, "n_ctx", None) == model.config.n_positions, "TL reads n_ctx"
        assert tok.bos_token == "<|endoftext|>"
        vocab[name] = tok.get_vocab()
    assert vocab["code"] == vocab["base"]
    extra = vocab["math"].keys() - vocab["base"].keys()
    assert extra == {"<|pad|>"} and vocab["math"]["<|pad|>"] == len(vocab["base"])
    assert vocab["retok"] != vocab["base"]
    for name in SAES:
        sae = SAE.load_from_disk(str(root / "saes" / name), device="cpu")
        md = sae.cfg.metadata
        assert md.hook_name == "blocks.2.hook_resid_pre" and md.prepend_bos is True and md.context_size
        assert md.model_from_pretrained_kwargs["center_writing_weights"] is False
        assert sae.cfg.architecture() == "standard"
    for split in ("prose", "code"):
        col = pq.read_table(root / "data" / f"{split}-eval.parquet").column("input_ids").to_pylist()
        bos = vocab["base"]["<|endoftext|>"]
        assert all(row[0] == bos and len(row) == len(col[0]) for row in col)


@pytest.mark.slow
@pytest.mark.filterwarnings(SAE_KWARGS_WARNING)
def test_small_build_has_the_zoo_layout(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    assert main(["build", "--small", "--out", str(out), "--seed", "1"]) == 0
    man = manifest.read(out)
    assert manifest.verify(out) == []
    assert set(man["pairs"]) == set(PAIRS) and set(man["models"]) == set(MODELS) and set(man["saes"]) == set(SAES)
    for name in MODELS:
        assert man["models"][name]["export"]["hf_vs_tl_max_abs_logit_diff"] < 1e-4
        assert set(man["models"][name]["eval_loss"]) == {"prose", "code", "math"}
    ev = man["pairs"]["tiny-gpt2__self"]["base_sae_on_finetune"]["prose"]
    assert {"explained_variance", "l0", "kl_div_score", "ce_loss_score", "mse"} <= ev.keys()
    assert man["pairs"]["tiny-gpt2__self"]["activation_similarity_prose"]["cosine_mean"] == pytest.approx(1.0)
    assert man["seed"] == 1 and man["versions"]["sae-lens"]
    _check_loadable(out)

    # `zoo saes` adds the extra SAEs and leaves every other file as it was (README.md regenerated)
    before = man["files"]
    assert main(["saes", "--small", "--zoo", str(out), "--only", "base-jumprelu", "code-relu-l1"]) == 0
    assert main(["saes", "--small", "--zoo", str(out), "--only", "base-topk"]) == 0  # a second run adds to the first
    after = manifest.read(out)
    assert manifest.verify(out) == []
    assert list(after["saes"]) == [*SAES, "code-relu-l1", "base-topk", "base-jumprelu"]  # the config's order
    assert {k: v for k, v in after["files"].items() if k in before and k != "README.md"} \
        == {k: v for k, v in before.items() if k != "README.md"}
    for name in ("base-topk", "base-jumprelu", "code-relu-l1"):
        entry = after["saes"][name]
        assert entry["saelens_architecture"] == EXTRA_SAES[name][2] and entry["model"] == f"models/{EXTRA_SAES[name][0]}"
        assert {"explained_variance", "l0", "ce_loss_score"} <= entry["eval_on_own_model_prose"].keys()
    assert after["saes_stage"]["saes"] == ["code-relu-l1", "base-topk", "base-jumprelu"]
    assert "saes/base-jumprelu" in (out / "README.md").read_text()
    assert {k: after[k] for k in man if k not in ("saes", "files", "choices")} \
        == {k: man[k] for k in man if k not in ("saes", "files", "choices")}
    weights = out / "models" / "code" / "model.safetensors"
    kept = weights.read_bytes()
    weights.write_bytes(b"tampered")
    assert main(["saes", "--small", "--zoo", str(out), "--only", "base-topk"]) == 1  # before any training
    weights.write_bytes(kept)
    assert manifest.verify(out) == []

    # install refuses a tampered build and leaves the destination alone
    dest = tmp_path / "installed"
    assert install(out, dest) == 0 and manifest.verify(dest) == []
    (out / "data" / "code-eval.parquet").write_bytes(b"tampered")
    assert main(["verify", str(out)]) == 1
    assert install(out, dest) == 1 and manifest.verify(dest) == []


def test_verify_and_install_refuse_a_dir_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    assert main(["verify", str(tmp_path)]) == 1
    assert install(tmp_path, tmp_path / "dest") == 1 and not (tmp_path / "dest").exists()


def test_committed_zoo_matches_its_manifest() -> None:
    assert manifest.verify(ZOO) == []


def test_committed_zoo_is_small() -> None:
    assert (ZOO / "manifest.json").is_file(), "fixtures/zoo is not installed (python -m saetransfer zoo install DIR)"
    total = sum(p.stat().st_size for p in ZOO.rglob("*") if p.is_file())
    assert total <= 25 * 2**20


def test_committed_zoo_spans_the_verdicts() -> None:
    man = json.loads((ZOO / "manifest.json").read_text())
    assert man["span_checks"] and all(man["span_checks"].values()), man["span_checks"]


@pytest.mark.filterwarnings(SAE_KWARGS_WARNING)
def test_committed_zoo_loads_offline() -> None:
    _check_loadable(ZOO)


def test_manifest_tokenizer_comparison_is_reproduced_by_the_one_implementation() -> None:
    """The zoo writes `loading.compare_tokenizers` under the manifest's keys: a rebuild leaves them byte-identical."""
    from saetransfer.zoo.tokenizer import load_tokenizer, manifest_comparison

    retok = json.loads((ZOO / "manifest.json").read_text())["pairs"]["tiny-gpt2__retok"]
    base = load_tokenizer(ZOO / "models" / "base")
    for key, other in (("tokenizer_comparison", "retok"), ("math_tokenizer_comparison_for_contrast", "math")):
        fresh = manifest_comparison(base, load_tokenizer(ZOO / "models" / other))
        assert json.dumps(fresh) == json.dumps(retok[key]), key


def test_committed_extra_saes_are_listed_with_their_hashes() -> None:
    man = manifest.read(ZOO)
    assert list(man["saes"]) == [*SAES, *EXTRA_SAES]
    for name in EXTRA_SAES:
        for f in ("cfg.json", "sae_weights.safetensors"):
            path = ZOO / "saes" / name / f
            assert path.is_file() and manifest.sha256(path) == man["files"][f"saes/{name}/{f}"]["sha256"], path
    assert man["saes_stage"]["saes"] == list(EXTRA_SAES)


@pytest.mark.filterwarnings(SAE_KWARGS_WARNING)
@pytest.mark.parametrize("name", EXTRA_SAES)
def test_committed_extra_sae_loads_with_its_hook_and_architecture(name: str) -> None:
    from saetransfer.loading import load_sae
    from saetransfer.registry import SaeSource

    model, hook, architecture = EXTRA_SAES[name]
    entry = manifest.read(ZOO)["saes"][name]
    loaded = load_sae(SaeSource(name=name, path=ZOO / "saes" / name))
    assert (loaded.hook_name, loaded.architecture, entry["model"]) == (hook, architecture, f"models/{model}")
    assert entry["hook_name"] == hook and entry["saelens_architecture"] == architecture
    assert loaded.d_in == 128 and loaded.d_sae == 1024 and loaded.context_size == 128 and loaded.prepend_bos
    assert loaded.model_from_pretrained_kwargs["center_writing_weights"] is False
    assert entry["trained_on"] == "prose (train split)"
    if architecture == "topk":
        assert loaded.sae.cfg.k == entry["k"] == 48
    if architecture == "jumprelu":
        assert float(loaded.sae.threshold.detach().min()) >= 0 and entry["threshold"]["median"] > 0
    ev = entry["eval_on_own_model_prose"]
    assert ev["explained_variance"] > 0.5 and ev["ce_loss_score"] > 0.5 and ev["l0"] < 1024 / 4, ev
