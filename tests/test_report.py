"""The report renders every record on disk: files, self-contained HTML, one row per pair, determinism.

Records are synthetic but built with the engine's own accumulators (metrics, features, loading's
tokenizer comparison), so a key the engine renames breaks these tests rather than the committed report.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from saetransfer import metrics
from saetransfer.features import feature_transfer
from saetransfer.loading import Compatibility, compare_vocabs
from saetransfer.paths import REPO_ROOT
from saetransfer.report import render_report, verdict_rules, verdict_table
from saetransfer.report.fmt import md_code, num
from saetransfer.results import PairResult

CODE = "tiny-gpt2__code-tiny-res-relu-blocks.2.hook_resid_pre"
RETOK = "tiny-gpt2__retok-tiny-res-relu-blocks.2.hook_resid_pre"
GEMMA = "gemma-2b__python-codes-gemma-2b-res-jb-blocks.6.hook_resid_post"
HOSTILE = "<script>alert(1)</script> | `tick` $x$ *a* [l](u)\n&amp;"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _provenance(test_id: str, pair_id: str) -> dict:
    return {"pair_id": pair_id, "test_id": test_id, "hook": "blocks.2.hook_resid_pre", "sae": "tiny-res-relu",
            "sae_architecture": "standard", "d_sae": 64, "base": str(REPO_ROOT / "fixtures/zoo/models/base"),
            "finetune": "zoo/models/code",
            "dataset": "zoo/data/prose-eval.parquet", "token_sha256": "ab" * 32, "n_tokens": 2048, "n_rows": 16,
            "context_size": 128, "prepend_bos": True, "seed": 0, "device": "cpu", "dtype": "float32",
            "versions": {"python": "3.11", "torch": "2.x"}, "metric_version": 1}


def _sae_side(x: torch.Tensor, x_hat: torch.Tensor, feats: torch.Tensor, gen: torch.Generator) -> dict:
    """One SAE's metrics as `_ModelSide.sae_result` builds them."""
    recon = metrics.ReconstructionAccumulator(x.shape[1], feats.shape[1])
    recon.update(x, x_hat, feats)
    down = metrics.DownstreamAccumulator()
    clean = torch.randn(x.shape[0], 32, generator=gen)
    down.update(metrics.CleanDistribution.from_logits(clean, torch.zeros(32), 32),
                clean + 0.3 * torch.randn(clean.shape, generator=gen), torch.randint(0, 32, (x.shape[0],), generator=gen),
                32)
    out = {**recon.result(), **down.result(), "flags": []}
    out["log10_density_histogram"] = metrics.density_histogram(recon.densities()).to_dict()
    return out


def comparable_result(test_id: str = CODE, pair_id: str = "tiny-gpt2__code") -> PairResult:
    gen = torch.Generator().manual_seed(0)
    d, d_sae, rows, ctx = 16, 64, 16, 128
    acts_b = 3 * torch.randn(rows, ctx, d, generator=gen)
    acts_f = acts_b + 1.5 * torch.randn(rows, ctx, d, generator=gen)
    kept = torch.ones(rows, ctx, dtype=torch.bool)
    kept[:, 0] = False
    similarity = metrics.SimilarityAccumulator(ctx)
    similarity.update(acts_b, acts_f, kept)
    # a ReLU SAE whose thresholds spread densities from dense to dead, so every bucket is populated
    W_enc = torch.randn(d, d_sae, generator=gen) / d**0.5
    b_enc = -torch.linspace(0.0, 12.0, d_sae)
    W_dec = torch.randn(d_sae, d, generator=gen) / d**0.5
    x_b, x_f = acts_b[kept], acts_f[kept]
    f_b, f_f = torch.relu(x_b @ W_enc + b_enc), torch.relu(x_f @ W_enc + b_enc * 0.9)
    latents = metrics.LatentPairAccumulator(d_sae)
    latents.update(f_b, f_f)
    dens_b, dens_f = (f_b > 0).double().mean(0), (f_f > 0).double().mean(0)
    W_U = torch.randn(d, 32, generator=gen)
    native = _sae_side(x_f, x_f + 0.1 * torch.randn(x_f.shape, generator=gen), f_f, gen)
    native["kl_div_score"] = math.nan  # an undefined ratio must read "n/a"
    native["flags"] = ["kl_div_score undefined (ablation baseline equals clean)"]
    item = {"score": 0.12, "row": 3, "position": 7, "token": HOSTILE, "context": " def f(x):\n\treturn", "next": "|"}
    return PairResult(
        provenance=_provenance(test_id, pair_id),
        tokenizer=compare_vocabs({"a": 0, "b": 1}, {"a": 0, "b": 1}).to_dict(),
        compatibility=Compatibility(True, "every sample id means the same", 2, 0, ()).to_dict(),
        verdict={"verdict": "fails", "reasons": ["KL score drops 0.2 > 0.10 | bad", "L0 ratio 3.1 <weak>"],
                 "grades": {"kl_div_score": "bad", "l0": "weak"}},
        masking={"n_positions": rows * ctx, "n_special": rows, "n_outlier_base": 0, "n_outlier_finetune": 1,
                 "n_outlier_union": 1, "n_kept": rows * ctx - rows - 1, "threshold": 20.0,
                 "threshold_kind": "relative (2.0 x base mean norm)", "base_mean_norm": 10.0,
                 "outlier_fraction": 1 / (rows * ctx)},
        similarity=similarity.result().to_dict(),
        sae={"base": _sae_side(x_b, x_b + 0.3 * torch.randn(x_b.shape, generator=gen), f_b, gen),
             "finetune": _sae_side(x_f, x_f + 0.9 * torch.randn(x_f.shape, generator=gen), f_f, gen),
             "native_on_finetune": native},
        density={"log10_density_correlation": metrics.log_density_correlation(dens_b, dens_f),
                 "base": metrics.log10_density(dens_b).tolist(), "finetune": metrics.log10_density(dens_f).tolist()},
        features=feature_transfer(dens_b, dens_f, latents, W_dec, W_U, W_U + 0.1, seed=0),
        worst_tokens={"lowest_cosine": [item, {**item, "token": "nan", "score": -0.3}], "highest_kl": [item],
                      "worst_reconstruction": [item], "outliers": []},
    )


def incompatible_result() -> PairResult:
    """What `evaluate_pair` returns when the tokenizers differ: nothing past the tokenizer check."""
    return PairResult(
        provenance=_provenance(RETOK, "tiny-gpt2__retok"),
        tokenizer=compare_vocabs({"a": 0, "b": 1, "c": 2}, {"a": 1, "b": 0, "z": 2}).to_dict(),
        compatibility=Compatibility(False, "2 of 3 sample ids differ", 3, 2, ((0, "a", "b"),)).to_dict(),
        verdict={"verdict": "not comparable", "reasons": ["tokenizers differ on the sample's ids"]})


def write_record(records: Path, result: PairResult, expected: str | None, outcomes: dict | None = None) -> Path:
    """The on-disk format of `saetransfer.report.records.write_record` (+ merge_outcomes)."""
    data = json.loads(result.to_json())
    data["expected"] = {"verdict": expected, "source": "test", "extrapolated": False} if expected else None
    data["outcomes"] = outcomes or {}
    path = records / f"{result.provenance['test_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


def write_skip(records: Path, test_id: str, pair_id: str, reason: str) -> Path:
    path = records / "skipped" / f"{test_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"test_id": test_id, "pair_id": pair_id, "reason": reason,
                                "expected": {"verdict": "fails", "source": "the post", "extrapolated": False}}))
    return path


@pytest.fixture(scope="module")
def comparable() -> PairResult:
    return comparable_result()


@pytest.fixture()
def records(tmp_path: Path, comparable: PairResult) -> Path:
    folder = tmp_path / "records"
    write_record(folder, comparable, "fails", {"finding_3_quality": {"outcome": "passed", "reason": ""}})
    write_record(folder, incompatible_result(), "transfers")
    write_skip(folder, GEMMA, "gemma-2b__python-codes", "needs --gpu (a CUDA machine)")
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, comparable: PairResult) -> tuple[Path, object]:
    """One render shared by the read-only tests (plots dominate the run time)."""
    root = tmp_path_factory.mktemp("report")
    write_record(root / "records", comparable, "fails", {"finding_3_quality": {"outcome": "passed", "reason": ""}})
    write_record(root / "records", incompatible_result(), "transfers")
    write_skip(root / "records", GEMMA, "gemma-2b__python-codes", "needs --gpu (a CUDA machine)")
    return root, render_report(root / "records", root / "out")


def png_chunks(data: bytes) -> list[str]:
    chunks, i = [], len(PNG_MAGIC)
    while i < len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        chunks.append(data[i + 4:i + 8].decode("ascii"))
        i += 12 + size
    return chunks


def summary_rows(readme: str) -> list[str]:
    section = readme.split("## Which pairs transfer", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| pair |")]


def all_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_exist_and_plots_are_pngs(rendered) -> None:
    root, files = rendered
    for path in (files.readme, files.html, files.csv):
        assert path.is_file() and path.stat().st_size > 0
    names = {p.name for p in files.plots}
    assert names == {"activation_similarity.png", "per_position.png", "density_histograms.png",
                     "density_scatter.png", "feature_correlations.png"}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in files.plots)
    # no text or time chunks: nothing (a date, a version) that changes while the figure does not
    assert {c for p in files.plots for c in png_chunks(p.read_bytes())} <= {"IHDR", "pHYs", "IDAT", "IEND"}
    assert {p.parent.name for p in files.plots} == {CODE.lower()}, "only the comparable pair has plots"


def test_html_is_self_contained(rendered) -> None:
    _, files = rendered
    html = files.html.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "nothing may be fetched"
    assert "<script" not in html and "<link" not in html
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(sources) == len(files.plots)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_markdown_table_has_a_row_per_pair(rendered) -> None:
    _, files = rendered
    rows = summary_rows(files.readme.read_text(encoding="utf-8"))
    assert len(rows) == 3
    by_id = {pair: next(r for r in rows if f"`{pair}`" in r)
             for pair in ("gemma-2b__python-codes", "tiny-gpt2__code", "tiny-gpt2__retok")}
    assert "not run" in by_id["gemma-2b__python-codes"] and "needs \\-\\-gpu" not in by_id["gemma-2b__python-codes"]
    assert "needs --gpu" in by_id["gemma-2b__python-codes"]
    assert "incompatible" in by_id["tiny-gpt2__retok"] and "not comparable" in by_id["tiny-gpt2__retok"]
    assert "transfers ✗" in by_id["tiny-gpt2__retok"] and "fails ✓" in by_id["tiny-gpt2__code"]
    assert " ± " in by_id["tiny-gpt2__code"] and " → " in by_id["tiny-gpt2__code"]
    # every row has exactly the header's cell count: escaped pipes in reasons do not split cells
    cells = [len(re.split(r"(?<!\\)\|", r)) for r in rows]
    assert len(set(cells)) == 1


def test_markdown_links_resolve(rendered) -> None:
    root, files = rendered
    readme = files.readme.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) == len(files.plots)
    assert all((files.readme.parent / i).is_file() for i in images)
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', readme))
    assert set(re.findall(r"\]\(#([^)]+)\)", readme)) <= anchors
    assert str(root) not in readme, "no absolute path: the committed report must not depend on the machine"
    assert str(REPO_ROOT) not in readme and "| `base` | fixtures/zoo/models/base |" in readme


def test_hostile_text_is_escaped(rendered) -> None:
    _, files = rendered
    html = files.html.read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html
    readme = files.readme.read_text(encoding="utf-8")
    # outside code spans Markdown would render raw HTML: there it must be escaped
    assert "<weak>" not in readme and "\\<weak\\>" in readme
    assert "``<script>alert(1)</script> \\| `tick` $x$ *a* [l](u)␊&amp;``" in readme, "one code span, pipe escaped"
    assert "def f(x):␊␉return" in readme, "control characters are shown, not allowed to break the row"
    assert md_code("a|b") == "`a\\|b`" and md_code("`x`") == "`` `x` ``" and md_code(" a ") == "`  a  `"


def test_nan_reads_as_undefined(rendered) -> None:
    _, files = rendered
    readme = files.readme.read_text(encoding="utf-8")
    pairs = readme.split("\n## Pairs", 1)[1]
    kl_row = next(line for line in pairs.splitlines() if line.startswith("| KL score |"))
    assert kl_row.rstrip(" |").endswith("| n/a"), "the native SAE's undefined KL score"
    assert num(math.nan) == "n/a" and num(0.99996) == "1.000" and num(-0.0) == "0" and num(None) == "—"
    assert not re.search(r"\bnan\b", summary_rows(readme)[0] + summary_rows(readme)[1])


def test_csv_has_one_row_per_pair(rendered) -> None:
    _, files = rendered
    frame = pd.read_csv(files.csv)
    assert sorted(frame["test_id"]) == sorted([CODE, RETOK, GEMMA])
    row = frame.set_index("test_id").loc[CODE]
    assert row["verdict"] == "fails" and bool(row["matches_expected"]) and 0 < row["cosine_mean"] < 1
    assert frame.set_index("test_id").loc[GEMMA, "status"] == "not run"


def test_rendering_is_byte_identical(tmp_path: Path, rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = rendered
    before = all_files(root / "out")
    render_report(root / "records", tmp_path / "fresh")
    assert all_files(tmp_path / "fresh") == before, "drawing and writing again must give the same bytes"
    shutil.copytree(root / "out", tmp_path / "again")

    def no_redraw(_: PairResult) -> None:
        raise AssertionError("an unchanged pair was redrawn")

    monkeypatch.setattr("saetransfer.report.render.pair_plots", no_redraw)
    render_report(root / "records", tmp_path / "again")
    assert all_files(tmp_path / "again") == before, "re-rendering unchanged records must not churn"


def test_partial_run_keeps_other_rows(tmp_path: Path, rendered) -> None:
    root, _ = rendered
    records, out = tmp_path / "records", tmp_path / "out"
    shutil.copytree(root / "records", records)
    shutil.copytree(root / "out", out)
    (records / f"{CODE}.json").unlink()  # as if only the other pairs were on disk
    files = render_report(records, out)
    rows = summary_rows(files.readme.read_text(encoding="utf-8"))
    assert len(rows) == 2 and any("tiny-gpt2__retok" in r for r in rows) and any("gemma-2b" in r for r in rows)
    assert not any((out / "plots").rglob("*")), "the removed pair's plots are deleted"
    write_record(records, comparable_result(), "fails")  # a later `-k code` run writes it back
    files = render_report(records, out)
    assert len(summary_rows(files.readme.read_text(encoding="utf-8"))) == 3 and len(files.plots) == 5


def test_unreadable_record_is_a_warning(tmp_path: Path, records: Path) -> None:
    (records / f"{CODE}.json").unlink()  # not needed here; keeps the test fast (no plots)
    (records / "broken.json").write_text("{not json")
    (records / "skipped" / "odd.json").write_text("[1, 2]")
    files = render_report(records, tmp_path / "out")
    readme = files.readme.read_text(encoding="utf-8")
    assert "## Warnings" in readme and "broken.json" in readme and "odd.json" in readme
    assert len(files.warnings) == 2 and len(summary_rows(readme)) == 2


def test_malformed_values_degrade_gracefully(tmp_path: Path, records: Path, comparable: PairResult) -> None:
    """A value of the wrong type costs its plots or its record (with a warning), never the report."""
    data = json.loads(comparable.to_json())
    data["similarity"]["per_position_cosine"] = ["not a number"]
    data["worst_tokens"]["highest_kl"] = "not a list"
    (records / f"{CODE}.json").write_text(json.dumps(data))
    (records / "odd.json").write_text(json.dumps({**data, "similarity": "oops"}))
    files = render_report(records, tmp_path / "out")
    assert [w.split(":")[0] for w in files.warnings] == ["ignored records/odd.json", f"no plots for {CODE}"]
    readme = files.readme.read_text(encoding="utf-8")
    assert len(summary_rows(readme)) == 3 and "#### Where transfer breaks" in readme
    assert "| `grades` | kl_div_score: bad; l0: weak |" in readme, "extra verdict keys are shown too"


def test_record_beats_a_later_skip(tmp_path: Path, records: Path) -> None:
    """A GPU run's record stays when a CPU run skips the pair; the skip reason is shown beside it."""
    (records / f"{CODE}.json").unlink()  # not needed here; keeps the test fast (no plots)
    write_skip(records, RETOK, "tiny-gpt2__retok", "offline: not in HF cache")
    readme = render_report(records, tmp_path / "out").readme.read_text(encoding="utf-8")
    row = next(r for r in summary_rows(readme) if "`tiny-gpt2__retok`" in r)
    assert "not comparable" in row and "offline: not in HF cache" in row


def test_verdict_table(records: Path) -> None:
    text = verdict_table(records)
    lines = text.splitlines()
    assert lines[0].split() == ["test", "id", "verdict", "expected", "match"]
    assert len(lines) == 4
    assert any(CODE in line and line.split()[-1] == "ok" for line in lines)
    assert any(RETOK in line and line.split()[-1] == "MISMATCH" for line in lines)
    assert any(GEMMA in line and "not run" in line for line in lines)


def test_verdict_rules_are_documented() -> None:
    assert verdict_rules().strip()


def test_empty_records_dir(tmp_path: Path) -> None:
    files = render_report(tmp_path / "missing", tmp_path / "out")
    assert summary_rows(files.readme.read_text(encoding="utf-8")) == [] and files.plots == ()
    shutil.rmtree(tmp_path / "out")
