"""The report renders every record on disk: files, self-contained HTML, the headline first, determinism.

Records are the committed form of real zoo results (`tests/data/results/`, written by
`stable.committed_form` from the engine's PairResult JSON), so a field the results rename breaks these
tests rather than the committed report. Variants (not judged, norm matching changes the verdict,
hostile text) are derived with `dataclasses.replace`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from saetransfer.paths import REPO_ROOT
from saetransfer.registry import expand, load_registry, registry_files
from saetransfer.report import render_report, verdict_rules, verdict_table
from saetransfer.report.fmt import md_code, num, plus_minus
from saetransfer.report.headline import HEADLINE_COLUMNS, HEADLINE_METRICS
from saetransfer.report.layer_plot import layer_groups
from saetransfer.report.records import load_entries, parse_record
from saetransfer.report.records import write_skip as commit_skip
from saetransfer.report.records import write_record as commit_record
from saetransfer.results import Comparisons, Estimate, PairResult, TokenContext

DATA = Path(__file__).parent / "data" / "results"
CODE = "tiny-gpt2__code-tiny-res-relu-blocks.2.hook_resid_pre"
MATH = "tiny-gpt2__math-tiny-res-relu-blocks.2.hook_resid_pre"
RETOK = "tiny-gpt2__retok-tiny-res-relu-blocks.2.hook_resid_pre"
GEMMA = "gemma-2b__python-codes-gemma-2b-res-jb-blocks.6.hook_resid_post"
HOSTILE = "<script>alert(1)</script> | `tick` $x$ *a* [l](u)\n&amp;"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIR_PLOTS = {"activation_similarity.png", "per_position.png", "density_histograms.png", "feature_correlations.png"}


def zoo_result(name: str) -> PairResult:
    return PairResult.from_json((DATA / f"tiny-gpt2__{name}.json").read_text())


def hostile(result: PairResult) -> PairResult:
    """Decoded text that would break Markdown or HTML if it were not escaped."""
    assert result.worst_tokens is not None
    item = TokenContext(score=0.12, row=3, position=7, token=HOSTILE, context=" def f(x):\n\treturn", next="|")
    return dataclasses.replace(result, worst_tokens=dataclasses.replace(
        result.worst_tokens, highest_kl=(item, dataclasses.replace(item, token="nan", score=-0.3))))


def write_record(records: Path, result: PairResult, expected: str | None, outcomes: dict | None = None,
                 claims: list | None = None, evaluation: dict | None = None) -> Path:
    """The on-disk format of `saetransfer.report.records.write_record` (+ merge_outcomes)."""
    data = json.loads(result.to_json())
    data["expected"] = {"verdict": expected, "source": "test", "extrapolated": False} if expected else None
    data["outcomes"] = outcomes or {}
    if claims is not None:
        data["claims"] = claims
    if evaluation is not None:
        data["evaluation"] = evaluation
    path = records / f"{result.provenance.test_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


def write_skip(records: Path, test_id: str, pair_id: str, reason: str, **extra: object) -> Path:
    path = records / "skipped" / f"{test_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    expected = {"verdict": "fails", "source": "the post", "extrapolated": False} if not extra else None
    path.write_text(json.dumps({"test_id": test_id, "pair_id": pair_id, "reason": reason, "expected": expected,
                                **extra}))
    return path


def fill(records: Path) -> Path:
    write_record(records, hostile(zoo_result("code")), "fails",
                 {"finding_3_quality": {"outcome": "passed", "reason": ""}})
    write_record(records, zoo_result("math"), "transfers")
    write_record(records, zoo_result("retok"), "transfers")
    write_skip(records, GEMMA, "gemma-2b__python-codes", "needs --gpu (a CUDA machine)")
    return records


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    return fill(tmp_path / "records")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One render shared by the read-only tests (plots dominate the run time)."""
    root = tmp_path_factory.mktemp("report")
    return root, render_report(fill(root / "records"), root / "out")


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


class _Headline(HTMLParser):
    """The headline table's header and rows as (text, classes of spans, hrefs) per cell."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.headers, self.rows, self.cell = False, [], [], None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "table" and attrs.get("class") == "headline":
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = {"text": "", "classes": [], "hrefs": [], "header": tag == "th"}
        elif self.inside and self.cell is not None and tag == "span":
            self.cell["classes"].append(attrs.get("class"))
        elif self.inside and self.cell is not None and tag == "a":
            self.cell["hrefs"].append(attrs.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell["text"] += data


def headline(html: str) -> tuple[list[str], list[list[dict]]]:
    parser = _Headline()
    parser.feed(html)
    header, *rows = parser.rows
    return [c["text"] for c in header], rows


def test_files_exist_and_plots_are_pngs(rendered) -> None:
    root, files = rendered
    for path in (files.readme, files.html, files.csv):
        assert path.is_file() and path.stat().st_size > 0
    per_pair = [p for p in files.plots if p.parent.name != "plots"]
    assert {p.name for p in per_pair} == PAIR_PLOTS
    assert {p.parent.name for p in per_pair} == {CODE.lower(), MATH.lower()}, "only comparable pairs have plots"
    assert files.html.parent / "plots" / "cross_pair.png" in files.plots
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in files.plots)
    # no text or time chunks: nothing (a date, a version) that changes while the figure does not
    assert {c for p in files.plots for c in png_chunks(p.read_bytes())} <= {"IHDR", "pHYs", "IDAT", "IEND"}


def test_html_is_self_contained(rendered) -> None:
    _, files = rendered
    html = files.html.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "nothing may be fetched"
    assert "<script" not in html and "<link" not in html
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(sources) == len(files.plots), "every plot embedded once"
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in sources if src.startswith("data:image/png;base64,")}
    assert len(embedded) == len(sources) and embedded == {p.read_bytes() for p in files.plots}


def test_headline_table_leads_with_the_answer(rendered) -> None:
    """Browser-free structure: bounded columns, the coloured verdict beside the pair, not-run rows last."""
    _, files = rendered
    html = files.html.read_text(encoding="utf-8")
    headers, rows = headline(html)
    assert len(headers) == HEADLINE_COLUMNS <= 10 and headers[:3] == ["pair", "verdict", "why"]
    assert all(len(r) == len(headers) for r in rows) and len(rows) == 4
    assert all(r[0]["hrefs"] and r[0]["hrefs"][0].startswith("#pair-") for r in rows), "pair name first, linked"
    assert [r[1]["classes"][0] for r in rows] == ["v-fails", "v-transfers", "v-not-comparable", "v-not-run"]
    assert [r[1]["text"] for r in rows][-1] == "not run" and "gemma-2b" in rows[-1][0]["text"]
    code = rows[0]
    assert re.fullmatch(r"0\.50\d\d ± 0\.0\d+", code[headers.index("EV ratio")]["text"]), code
    assert html.index('class="headline"') < html.index('alt="activation cosine against') < html.index(
        'id="how-to-read"'), "the cross-pair figure sits under the table"


def test_markdown_table_has_a_row_per_pair(rendered) -> None:
    _, files = rendered
    rows = summary_rows(files.readme.read_text(encoding="utf-8"))
    assert len(rows) == 4 and "gemma-2b__python-codes" in rows[-1]
    by_id = {pair: next(r for r in rows if f"`{pair}`" in r)
             for pair in ("gemma-2b__python-codes", "tiny-gpt2__code", "tiny-gpt2__retok")}
    assert "**not run**" in by_id["gemma-2b__python-codes"] and "needs --gpu" in by_id["gemma-2b__python-codes"]
    assert "**not comparable**" in by_id["tiny-gpt2__retok"] and "transfers ✗" in by_id["tiny-gpt2__retok"]
    assert "**fails**" in by_id["tiny-gpt2__code"] and "fails ✓" in by_id["tiny-gpt2__code"]
    assert " ± " in by_id["tiny-gpt2__code"]
    cells = [len(re.split(r"(?<!\\)\|", r)) for r in rows]  # escaped pipes in reasons do not split cells
    assert set(cells) == {HEADLINE_COLUMNS + 2}


def test_pair_section_shows_intervals_masking_and_chance(rendered) -> None:
    _, files = rendered
    section = files.readme.read_text(encoding="utf-8").split("### tiny-gpt2__code", 1)[1].split("\n### ", 1)[0]
    result = zoo_result("code")
    ev = result.comparisons.ev_ratio
    assert f"| `ev_ratio` | explained variance finetune / base | {num(ev.value)} \\[{num(ev.low)}, {num(ev.high)}\\] |" \
        in section, "full intervals, as is and after norm matching"
    assert "| `n_nonfinite_logits` | 0 | 0 |" in section, "masking per model and cause"
    assert "17.2 %; chance (randomly paired latents) 0.405 %; split halves 16.1 / 17.1 %" in section
    assert "base SAE on norm-matched finetune" in section and "c = " in section


def test_markdown_links_resolve(rendered) -> None:
    root, files = rendered
    readme = files.readme.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) == len(files.plots)
    assert all((files.readme.parent / i).is_file() for i in images)
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', readme))
    assert set(re.findall(r"\]\(#([^)]+)\)", readme)) <= anchors
    assert str(root) not in readme and str(REPO_ROOT) not in readme, "the report must not depend on the machine"


def test_hostile_text_is_escaped(rendered) -> None:
    _, files = rendered
    html = files.html.read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html
    readme = files.readme.read_text(encoding="utf-8")
    assert "``<script>alert(1)</script> \\| `tick` $x$ *a* [l](u)␊&amp;``" in readme, "one code span, pipe escaped"
    assert "def f(x):␊␉return" in readme, "control characters are shown, not allowed to break the row"
    assert md_code("a|b") == "`a\\|b`" and md_code("`x`") == "`` `x` ``" and md_code(" a ") == "`  a  `"


def test_nan_reads_as_undefined(tmp_path: Path) -> None:
    result = zoo_result("math")
    sae = dataclasses.replace(result.sae, finetune=dataclasses.replace(result.sae.finetune, kl_div_score=math.nan))
    write_record(tmp_path / "records", dataclasses.replace(result, sae=sae), None)
    readme = render_report(tmp_path / "records", tmp_path / "out").readme.read_text(encoding="utf-8")
    kl_row = next(line for line in readme.splitlines() if line.startswith("| `kl_div_score` |"))
    assert kl_row.split(" | ")[2] == "n/a", "the finetune's undefined KL score"
    assert num(math.nan) == "n/a" and num(0.99996) == "1.000" and num(-0.0) == "0" and num(None) == "—"


def test_csv_has_one_row_per_pair(rendered) -> None:
    _, files = rendered
    frame = pd.read_csv(files.csv)
    assert list(frame["test_id"]) == [CODE, MATH, RETOK, GEMMA], "evaluated pairs first"
    row = frame.set_index("test_id").loc[CODE]
    assert row["verdict"] == "fails" and bool(row["matches_expected"]) and 0 < row["cosine"] < 1
    assert row["ev_ratio_low"] <= row["ev_ratio"] <= row["ev_ratio_high"]
    assert frame.set_index("test_id").loc[GEMMA, "status"] == "not run"


def test_not_judged_and_norm_matching_are_shown(tmp_path: Path) -> None:
    code, math_ = zoo_result("code"), zoo_result("math")
    masking = dataclasses.replace(code.masking, judged=False, reasons=("12 % kept on the finetune (outliers)",))
    not_judged = dataclasses.replace(code, masking=masking, norm_matching=None, verdict=dataclasses.replace(
        code.verdict, verdict="not judged", reasons=("not judged: too few positions kept",)))
    matched = dataclasses.replace(code.norm_matching, verdict=math_.verdict)
    rescued = dataclasses.replace(math_, norm_matching=matched, verdict=code.verdict)
    write_record(tmp_path / "records", not_judged, None)
    write_record(tmp_path / "records", rescued, None)
    files = render_report(tmp_path / "records", tmp_path / "out")
    _, rows = headline(files.html.read_text(encoding="utf-8"))
    by_pair = {r[0]["text"]: r for r in rows}
    assert by_pair["tiny-gpt2__code"][1]["classes"] == ["v-not-judged"]
    assert "12 % kept on the finetune" in by_pair["tiny-gpt2__code"][2]["text"]
    assert by_pair["tiny-gpt2__math"][1]["text"] == "fails as is; transfers after norm matching"
    assert by_pair["tiny-gpt2__math"][1]["classes"] == ["v-fails", "v-transfers"]
    frame = pd.read_csv(files.csv).set_index("pair_id")
    assert frame.loc["tiny-gpt2__code", "verdict"] == "not judged"
    assert frame.loc["tiny-gpt2__math", "norm_matched_verdict"] == "transfers"


def test_claims_section_only_when_records_have_claims(tmp_path: Path, records: Path) -> None:
    (records / f"{CODE}.json").unlink()  # keeps the test fast (fewer plots)
    readme = render_report(records, tmp_path / "out").readme.read_text(encoding="utf-8")
    heading = "## The post's claims, pair by pair"
    assert heading not in readme
    claims = [{"claim": "bos-cosine-at-least-mean", "section": "post §3", "holds": True, "message": "0.99 >= 0.98"},
              {"claim": "identity-activations", "section": "post §3", "holds": None, "message": "not the identity"}]
    write_record(records, zoo_result("math"), "transfers", claims=claims)
    readme = render_report(records, tmp_path / "out").readme.read_text(encoding="utf-8")
    assert readme.index("## Which pairs transfer") < readme.index(heading) < readme.index("## How to read")
    row = next(line for line in readme.splitlines() if line.startswith("| BOS cosine is at least the mean |"))
    assert "| post §3 |" in row and "holds" in row


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


def _at_rounding_boundary(value: object, side: float) -> object:
    """Every float moved next to its 4-digit rounding boundary, on `side` (-1 below, +1 above)."""
    if isinstance(value, dict):
        return {k: _at_rounding_boundary(v, side) for k, v in value.items()}
    if isinstance(value, list):
        return [_at_rounding_boundary(v, side) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        step = 10 ** (math.floor(math.log10(abs(value))) - 3)
        return value + (0.5 + side * 1e-4) * step
    return value


def test_committed_evidence_survives_float_noise_and_a_flipped_count(tmp_path: Path) -> None:
    """Issue 9.5: another CPU's last digits and a latent flipping at the ReLU threshold change no committed byte."""
    pair = next(p for p in load_registry(registry_files(())) if p.id == "tiny-gpt2__code")
    data = zoo_result("code").to_dict()
    below, above = _at_rounding_boundary(data, -1), _at_rounding_boundary(data, +1)
    hist = above["similarity"]["cosine_histogram"]["counts"]
    i = max(range(len(hist)), key=hist.__getitem__)
    hist[i], hist[i - 1] = hist[i] - 1, hist[i - 1] + 1  # one position's cosine moves to the next bin
    above["sae"]["finetune"]["log10_density_histogram"]["counts"][-1] += 1
    for variant, flipped in ((below, -3.0), (above, -2.96)):  # a rare latent's firing count flips
        variant["density"]["base"] = variant["density"]["finetune"] = [-1.5, flipped, -10.0]
        variant["features"]["buckets"]["regular"]["latent_ids"] = [4, 9, 12 if flipped == -3.0 else 13]
    outputs = []
    for name, variant in (("first", below), ("second", above)):
        records = tmp_path / "records"
        commit_record(records, pair, PairResult.from_dict(variant))
        files = render_report(records, tmp_path / name)
        outputs.append((all_files(records), all_files(tmp_path / name)))
        assert files.warnings == ()
    assert outputs[0][0] == outputs[1][0], "the record is rewritten only when a number moves beyond its tolerance"
    assert outputs[0][1] == outputs[1][1], "report, CSV and plots are unchanged"
    moved = _at_rounding_boundary(data, +1)
    moved["sae"]["finetune"]["explained_variance"] *= 0.9  # a real change does reach the record
    commit_record(tmp_path / "records", pair, PairResult.from_dict(moved))
    assert all_files(tmp_path / "records") != outputs[0][0]


def test_texts_follow_the_numbers_they_quote(tmp_path: Path) -> None:
    """A loss delta that moved by another CPU host's 4e-6 nats, and the reasons that print it and an interval
    bound a digit apart, change no committed byte; a reason whose words change does."""
    pair = next(p for p in load_registry(registry_files(())) if p.id == "tiny-gpt2__code")
    data = zoo_result("code").to_dict()
    records = tmp_path / "records"
    commit_record(records, pair, PairResult.from_dict(data))
    committed = all_files(records)

    def nudged(text: str) -> str:  # every quoted number one unit off in its last printed digit
        return re.sub(r"\d\b", lambda m: str((int(m.group()) + 1) % 10), text)

    noisy = json.loads(json.dumps(data))
    noisy["sae"]["finetune"]["ce_delta"] += 4e-6
    noisy["comparisons"]["ce_delta_excess"]["value"] += 4e-6
    noisy["verdict"]["reasons"] = [nudged(r) for r in noisy["verdict"]["reasons"]]
    assert noisy["verdict"]["reasons"] != data["verdict"]["reasons"]
    commit_record(records, pair, PairResult.from_dict(noisy))
    assert all_files(records) == committed

    reworded = json.loads(json.dumps(noisy))
    reworded["verdict"]["reasons"][0] += " (reworded)"
    commit_record(records, pair, PairResult.from_dict(reworded))
    assert all_files(records) != committed


def test_partial_run_keeps_other_rows(tmp_path: Path, rendered) -> None:
    root, _ = rendered
    records, out = tmp_path / "records", tmp_path / "out"
    shutil.copytree(root / "records", records)
    shutil.copytree(root / "out", out)
    (records / f"{CODE}.json").unlink()  # as if only the other pairs were on disk
    files = render_report(records, out)
    rows = summary_rows(files.readme.read_text(encoding="utf-8"))
    assert len(rows) == 3 and not any("tiny-gpt2__code" in r for r in rows)
    assert not (out / "plots" / CODE.lower()).exists(), "the removed pair's plots are deleted"
    write_record(records, zoo_result("code"), "fails")  # a later `-k code` run writes it back
    files = render_report(records, out)
    assert len(summary_rows(files.readme.read_text(encoding="utf-8"))) == 4 and len(files.plots) == 9


def test_unreadable_record_is_a_warning(tmp_path: Path, records: Path) -> None:
    (records / f"{CODE}.json").unlink()  # not needed here; keeps the test fast (fewer plots)
    (records / "broken.json").write_text("{not json")
    (records / "skipped" / "odd.json").write_text("[1, 2]")
    data = json.loads((records / f"{MATH}.json").read_text())
    (records / "old-format.json").write_text(json.dumps({**data, "sae": {"base": {"l0": 3.0}}}))
    files = render_report(records, tmp_path / "out")
    readme = files.readme.read_text(encoding="utf-8")
    assert "## Warnings" in readme and "broken.json" in readme and "odd.json" in readme
    assert any("old-format.json" in w and "PairResult.sae.base" in w for w in files.warnings), files.warnings
    assert len(files.warnings) == 3 and len(summary_rows(readme)) == 3


def test_record_beats_a_later_skip(tmp_path: Path, records: Path) -> None:
    """A GPU run's record stays when a CPU run skips the pair; the skip reason is shown beside it."""
    (records / f"{CODE}.json").unlink()  # not needed here; keeps the test fast (fewer plots)
    write_skip(records, RETOK, "tiny-gpt2__retok", "offline: not in HF cache")
    readme = render_report(records, tmp_path / "out").readme.read_text(encoding="utf-8")
    row = next(r for r in summary_rows(readme) if "`tiny-gpt2__retok`" in r)
    assert "not comparable" in row and "offline: not in HF cache" in row


def test_verdict_table(records: Path) -> None:
    lines = verdict_table(records).splitlines()
    assert lines[0].split() == ["test", "id", "verdict", "norm-matched", "expected", "match"]
    assert len(lines) == 5 and GEMMA in lines[-1] and "not run" in lines[-1]
    assert any(CODE in line and line.split()[-1] == "ok" for line in lines)
    assert any(RETOK in line and line.split()[-1] == "MISMATCH" for line in lines)


def test_verdict_rules_are_documented() -> None:
    assert "| rule | metric |" in verdict_rules()


def test_empty_records_dir(tmp_path: Path) -> None:
    files = render_report(tmp_path / "missing", tmp_path / "out")
    assert summary_rows(files.readme.read_text(encoding="utf-8")) == [] and files.plots == ()


# ---------------------------------------------------------------------------------------------
# Axes: a registry entry's evaluations per dataset, direction, SAE and hook (synthetic variants of the
# zoo results: provenance says what was evaluated, the record's `evaluation` key where it sits).

TRAINED_ON = "zoo prose (train split)"


def _scaled(comparisons: Comparisons, factor: float) -> Comparisons:
    def scale(e: Estimate | None) -> Estimate | None:
        return None if e is None else Estimate(e.value * factor, e.low * factor, e.high * factor)

    return Comparisons(**{f.name: scale(getattr(comparisons, f.name)) for f in dataclasses.fields(Comparisons)})


def evaluation(result: PairResult, *, sae: str = "tiny-res-relu", layer: int = 2, direction: str = "forward",
               dataset: str = "prose", architecture: str = "standard", trained_on: str = TRAINED_ON,
               factor: float = 1.0, axis: int = 0, primary: bool = False) -> tuple[PairResult, dict]:
    """`result` as another evaluation of its entry, with its comparisons scaled by `factor`."""
    prov, hook = result.provenance, f"blocks.{layer}.hook_resid_pre"
    dataset_index = 0 if dataset == "prose" else 1
    test_id = f"{prov.pair_id}-{sae}-{hook}{'' if dataset_index == 0 else '-' + dataset}"
    provenance = dataclasses.replace(prov, test_id=test_id, hook=hook, direction=direction, dataset_name=dataset,
                                     sae_architecture=architecture, sae_trained_on=trained_on)
    return (dataclasses.replace(result, provenance=provenance, comparisons=_scaled(result.comparisons, factor)),
            {"primary": primary, "axis": axis, "dataset_index": dataset_index, "sae_name": sae,
             "direction": direction, "dataset": dataset})


def write_evaluation(records: Path, result: PairResult, expected: str | None = None, claims: list | None = None,
                     **kwargs: object) -> str:
    varied, where = evaluation(result, **kwargs)
    write_record(records, varied, expected, claims=claims, evaluation=where)
    return varied.provenance.test_id


CODE_REV = "tiny-gpt2__code-tiny-code-res-relu-blocks.2.hook_resid_pre"
CODE_TOPK = "tiny-gpt2__code-tiny-res-topk-blocks.2.hook_resid_pre"
CODE_JUMP = "tiny-gpt2__code-tiny-res-jumprelu-blocks.2.hook_resid_pre"
NATIVE = "zoo prose (train split), on the code model"
HOLDS_CLAIM = {"claim": "bos-cosine-at-least-mean", "section": "post §3", "holds": True, "message": "0.99 >= 0.98"}
FAILS_CLAIM = {"claim": "bos-cosine-at-least-mean", "section": "post §3", "holds": False, "message": "0.5 < 0.98"}


def fill_axes(records: Path) -> Path:
    """`fill`, plus further evaluations: tiny-gpt2__code in both directions, on two datasets, at three layers
    and with two more SAEs (one not run); tiny-gpt2__math on a second dataset and with a TopK SAE."""
    fill(records)
    code, math_ = hostile(zoo_result("code")), zoo_result("math")
    write_evaluation(records, code, "fails", primary=True, claims=[HOLDS_CLAIM])
    native = {"sae": "tiny-code-res-relu", "direction": "reverse", "trained_on": NATIVE}
    write_evaluation(records, code, factor=1.1, claims=[FAILS_CLAIM], **native)
    write_evaluation(records, code, dataset="code", factor=0.8)
    write_evaluation(records, code, dataset="code", factor=1.2, **native)
    write_evaluation(records, code, sae="tiny-res-relu-l1", layer=1, axis=1, factor=0.9)
    write_evaluation(records, code, sae="tiny-res-relu-l3", layer=3, axis=2, factor=0.7)
    write_evaluation(records, code, layer=3, axis=2, factor=1.3, **{**native, "sae": "tiny-code-res-relu-l3"})
    transfers = dataclasses.replace(code, verdict=math_.verdict,
                                    norm_matching=dataclasses.replace(code.norm_matching, verdict=math_.verdict))
    write_evaluation(records, transfers, sae="tiny-res-topk", architecture="topk", axis=3, factor=1.05)
    write_skip(records, CODE_JUMP, "tiny-gpt2__code", "offline: not in HF cache",
               evaluation={"primary": False, "axis": 4, "dataset_index": 0, "sae_name": "tiny-res-jumprelu",
                           "direction": "forward", "dataset": "prose"}, hook="blocks.2.hook_resid_pre")
    write_evaluation(records, math_, "transfers", primary=True)
    write_evaluation(records, math_, dataset="code", factor=0.95)
    write_evaluation(records, math_, sae="tiny-res-topk", architecture="topk", axis=1)
    return records


@pytest.fixture(scope="module")
def axes_rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("axes")
    return root, render_report(fill_axes(root / "records"), root / "out")


class _Tables(HTMLParser):
    """Every table of a page as (class, rows of cell texts), plus each cell's hrefs."""

    def __init__(self) -> None:
        super().__init__()
        self.tables, self.cell, self.hrefs = [], None, []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append((attrs.get("class"), []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self.cell, self.hrefs = "", []
        elif tag == "a" and self.cell is not None:
            self.hrefs.append(attrs.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][1][-1].append((self.cell, tuple(self.hrefs)))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data


def tables(html: str, css: str | None = None) -> list[list[list[tuple[str, tuple]]]]:
    parser = _Tables()
    parser.feed(html)
    return [rows for cls, rows in parser.tables if css is None or cls == css]


def test_headline_has_one_row_per_entry_and_counts_the_rest(axes_rendered) -> None:
    _, files = axes_rendered
    html, readme = files.html.read_text(encoding="utf-8"), files.readme.read_text(encoding="utf-8")
    _, rows = headline(html)
    assert [r[0]["text"] for r in rows] == ["tiny-gpt2__code", "tiny-gpt2__math", "tiny-gpt2__retok",
                                            "gemma-2b__python-codes"], "primaries only"
    assert len(summary_rows(readme)) == 4
    head = readme.split("## Which pairs transfer", 1)[1].split("\n## ", 1)[0]
    assert ("- `tiny-gpt2__code`: 8 further evaluations (1 transfers, 6 fails, 1 not run), side by side in "
            "[its across-axes table](#axes-tiny-gpt2__code).") in head
    assert "- `tiny-gpt2__math`: 2 further evaluations (2 transfers)" in head
    assert "tiny-gpt2__retok`:" not in head, "a pair with one evaluation needs no line"


def test_across_axes_table_puts_a_pairs_evaluations_side_by_side(axes_rendered) -> None:
    _, files = axes_rendered
    html = files.html.read_text(encoding="utf-8")
    code, math_ = tables(html, "axes")
    header, *rows = code
    assert [c for c, _ in header][:6] == ["evaluated on", "direction", "SAE", "hook", "SAE trained on", "verdict"]
    assert [c for c, _ in header][6:] == [label for _, label in HEADLINE_METRICS]
    text = [[c for c, _ in r] for r in rows]
    assert [r[0] for r in text] == ["prose (primary)", *["prose"] * 6, "code", "code"], "the primary first"
    assert [r[1] for r in text] == ["base → finetune", "finetune → base", "base → finetune", "base → finetune",
                                    "finetune → base", "base → finetune", "base → finetune", "base → finetune",
                                    "finetune → base"], "each SAE's two directions beside each other"
    assert [r[3] for r in text][:5] == ["blocks.2.hook_resid_pre"] * 2 + ["blocks.1.hook_resid_pre"] + \
        ["blocks.3.hook_resid_pre"] * 2
    assert text[1][2] == "tiny-code-res-relu (standard)" and text[1][4] == NATIVE and text[0][4] == TRAINED_ON
    assert text[5][2] == "tiny-res-topk (topk)" and text[5][5] == "transfers"
    assert text[6][2] == "tiny-res-jumprelu" and text[6][5] == "not run" and text[6][6] == "—"
    reverse = _scaled(zoo_result("code").comparisons, 1.1)
    assert text[1][6] == plus_minus(reverse.ev_ratio) and text[1][11] == plus_minus(reverse.cosine)
    assert rows[1][0][1] == (f"#pair-{CODE_REV.lower()}",), "each row links to its evaluation's section"
    assert len(math_) == 4
    readme = files.readme.read_text(encoding="utf-8")
    assert (f"| [prose (primary)](#pair-{CODE.lower()}) | base → finetune | tiny-res-relu (standard) | "
            f"`blocks.2.hook_resid_pre` | zoo prose (train split) | **fails** |") in readme


def test_verdict_by_sae_matrix(axes_rendered) -> None:
    _, files = axes_rendered
    readme = files.readme.read_text(encoding="utf-8")
    section = readme.split("### Verdict by SAE", 1)[1].split("\n### ", 1)[0]
    assert "| pair | tiny-res-relu (standard) | tiny-res-topk (topk) | tiny-res-jumprelu |" in section
    assert "| [`tiny-gpt2__code`](#axes-tiny-gpt2__code) | **fails** | **transfers** | **not run** |" in section
    assert "| [`tiny-gpt2__math`](#axes-tiny-gpt2__math) | **transfers** | **transfers** | — |" in section
    assert "tiny-code-res-relu" not in section and "blocks.1" not in section, "primary hook, forward only"


def test_layer_plot_has_a_line_per_group_with_two_layers(axes_rendered) -> None:
    root, files = axes_rendered
    entries, _ = load_entries(root / "records")
    code = [e for e in entries if e.pair_id == "tiny-gpt2__code"]
    groups = layer_groups(code)
    assert {g: [layer for layer, _ in members] for g, members in groups.items()} == {
        ("forward", "prose", "standard"): [1, 2, 3], ("reverse", "prose", "standard"): [2, 3]}
    assert layer_groups([e for e in entries if e.pair_id == "tiny-gpt2__math"]) == {}, "one layer: no plot"
    plot = files.readme.parent / "plots" / "tiny-gpt2__code" / "across_layers.png"
    assert plot in files.plots and plot.read_bytes().startswith(PNG_MAGIC)
    assert not (files.readme.parent / "plots" / "tiny-gpt2__math").exists()
    readme = files.readme.read_text(encoding="utf-8")
    axes = readme.split("### tiny-gpt2__code", 1)[1].split("\n### ", 1)[0]
    assert "](plots/tiny-gpt2__code/across_layers.png)" in axes


def test_layer_plot_is_cached_and_redrawn_on_change(tmp_path: Path, axes_rendered,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = axes_rendered
    shutil.copytree(root / "records", tmp_path / "records")
    shutil.copytree(root / "out", tmp_path / "out")
    before = all_files(tmp_path / "out")

    def no_redraw(*_: object) -> None:
        raise AssertionError("an unchanged pair was redrawn")

    monkeypatch.setattr("saetransfer.report.render.pair_plots", no_redraw)
    monkeypatch.setattr("saetransfer.report.layer_plot.layer_plot", no_redraw)
    render_report(tmp_path / "records", tmp_path / "out")
    assert all_files(tmp_path / "out") == before
    monkeypatch.undo()
    monkeypatch.setattr("saetransfer.report.render.pair_plots", no_redraw)  # only the layer plot may change
    (tmp_path / "records" / "tiny-gpt2__code-tiny-res-relu-l1-blocks.1.hook_resid_pre.json").unlink()
    files = render_report(tmp_path / "records", tmp_path / "out")
    after = all_files(tmp_path / "out")
    name = "plots/tiny-gpt2__code/across_layers.png"
    assert after[name] != before[name] and files.warnings == ()


def test_further_evaluations_are_compact(axes_rendered) -> None:
    _, files = axes_rendered
    readme = files.readme.read_text(encoding="utf-8")
    assert readme.index("## Across axes") < readme.index("## How to read") < readme.index("## Pairs") < \
        readme.index("## Further evaluations")
    further = readme.split("## Further evaluations", 1)[1]
    section = further.split(f"### {CODE_REV}", 1)[1].split("\n### ", 1)[0]
    assert "finetune → base · evaluated on prose (SAE trained on zoo prose (train split), on the code model)" in section
    assert "Verdict: **fails**" in section and "| `n_kept` |" in section, "verdict and masking"
    assert "as is: value \\[95 % interval\\]" in section, "the comparisons with their intervals"
    assert "#### " not in further and "![" not in further, "no measurement tables, no plots"
    per_evaluation = {p.parent.name for p in files.plots if p.name in PAIR_PLOTS}
    assert per_evaluation == {CODE.lower(), MATH.lower()}, "plots for primary evaluations only"
    assert f"### {CODE_JUMP}" in further and "offline: not in HF cache" in further
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) == len(files.plots) and all((files.readme.parent / i).is_file() for i in images)
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', readme))
    assert set(re.findall(r"\]\(#([^)]+)\)", readme)) <= anchors


def test_claims_matrix_keeps_primaries(axes_rendered) -> None:
    _, files = axes_rendered
    readme = files.readme.read_text(encoding="utf-8")
    claims = readme.split("## The post's claims, pair by pair", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in claims.splitlines() if line.startswith("| claim |"))
    assert header == "| claim | section | tiny-gpt2__code | tiny-gpt2__math | tiny-gpt2__retok |"
    assert "0.5 < 0.98" not in claims.split("The matrix shows", 1)[0], "a further evaluation's failing claim"
    assert f"some do not hold on: [`{CODE_REV}`](#pair-{CODE_REV.lower()})." in claims


def test_csv_says_which_evaluation_each_row_is(axes_rendered) -> None:
    _, files = axes_rendered
    frame = pd.read_csv(files.csv).set_index("test_id")
    for column in ("direction", "dataset", "layer", "sae_architecture", "sae_trained_on", "primary", "sae_name"):
        assert column in frame.columns, column
    assert len(frame) == 14 and frame["primary"].sum() == 4
    assert frame.loc[CODE, ["primary", "direction", "dataset", "layer", "sae_architecture"]].tolist() == \
        [True, "forward", "prose", 2, "standard"]
    assert frame.loc[CODE_REV, ["primary", "direction", "sae_name", "sae_trained_on"]].tolist() == \
        [False, "reverse", "tiny-code-res-relu", NATIVE]
    assert frame.loc[CODE_TOPK, "sae_architecture"] == "topk" and frame.loc[CODE_JUMP, "status"] == "not run"


def test_records_say_which_evaluation_they_are(tmp_path: Path) -> None:
    entry = next(p for p in load_registry(registry_files(())) if p.id == "tiny-gpt2__code")
    forward, reverse = (p for p in expand(entry) if p.dataset_index == 0 and p.axis == 0)
    assert forward.primary and reverse.direction == "reverse"
    result, _ = evaluation(zoo_result("code"), sae=reverse.sae.name, direction="reverse")
    commit_record(tmp_path, reverse, result)
    commit_record(tmp_path, forward, zoo_result("code"))
    commit_skip(tmp_path, next(p for p in expand(entry) if p.dataset_index == 1), "offline")
    entries = {e.test_id: e for e in load_entries(tmp_path)[0]}
    assert (entries[forward.test_id].primary, entries[reverse.test_id].primary) == (True, False)
    assert entries[reverse.test_id].direction == "reverse" and entries[reverse.test_id].sae_name == reverse.sae.name
    skipped = entries[f"{forward.test_id}-code"]
    assert (skipped.primary, skipped.dataset, skipped.dataset_index, skipped.sae_name) == (False, "code", 1,
                                                                                           "tiny-res-relu")
    old = parse_record(json.loads(zoo_result("math").to_json()), "x")  # a record written before axes
    assert old.primary and old.sae_name == "tiny-res-relu" and old.layer == 2 and old.direction == "forward"
    data = {**json.loads(zoo_result("math").to_json()), "evaluation": {"primary": "yes"}}
    with pytest.raises(TypeError, match="evaluation.primary"):
        parse_record(data, "x")
