"""The embedded tiny zoo: the builder still builds (small config), and fixtures/zoo is intact and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saetransfer.paths import ZOO
from saetransfer.zoo import manifest
from saetransfer.zoo.cli import install, main

MODELS = ("base", "code", "math", "retok")
SAES = ("base-relu", "code-relu")
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
