"""Registry axes: several (hook, SAE, native SAE) entries and datasets per pair, expanded into evaluations."""

from __future__ import annotations

from pathlib import Path

import pytest

from saetransfer.registry import RegistryError, expand, group_of, load_registry, parse_registry_file

ENTRY = """
[[pair]]
id = "a-1__b"
base = { path = "m" }
finetune = { path = "f" }
sae = { name = "s", path = "s" }
native_sae = { name = "n", path = "n" }
hook = "blocks.1.hook_resid_pre"
dataset = { name = "prose", path = "d.parquet", column = "input_ids" }
n_tokens = 4096
outliers = { absolute = 10.0, absolute_finetune = 20.0 }
expected = { verdict = "fails", source = "test" }
"""
AXIS = """
[[pair.axes]]
sae = { name = "s3", path = "s3" }
hook = "blocks.3.hook_resid_pre"
n_tokens = 2048
"""
DATASET = """
[[pair.datasets]]
name = "code"
path = "c.parquet"
column = "input_ids"
n_tokens = 1024
"""


def evaluations(tmp_path: Path, text: str) -> tuple:
    path = tmp_path / "pairs.toml"
    path.write_text(text)
    return load_registry([path])


def test_a_plain_entry_keeps_its_test_id_and_adds_the_reverse_direction(tmp_path: Path) -> None:
    forward, reverse = evaluations(tmp_path, ENTRY)
    assert forward.test_id == "a-1__b-s-blocks.1.hook_resid_pre" and forward.primary
    assert reverse.test_id == "a-1__b-n-blocks.1.hook_resid_pre" and reverse.direction == "reverse"
    # the native SAE on the base: its own model (the finetune) is `base`, the base SAE is the reference
    assert (reverse.base, reverse.finetune) == (forward.finetune, forward.base)
    assert (reverse.sae, reverse.native_sae) == (forward.native_sae, forward.sae)
    assert (reverse.outliers.absolute, reverse.outliers.absolute_finetune) == (20.0, 10.0)
    assert reverse.expected is None and forward.expected.verdict == "fails"


def test_axes_and_datasets_add_ids_with_their_own_budgets(tmp_path: Path) -> None:
    pairs = evaluations(tmp_path, ENTRY + AXIS + DATASET)
    ids = {p.test_id: p for p in pairs}
    assert list(ids) == [
        "a-1__b-s-blocks.1.hook_resid_pre", "a-1__b-n-blocks.1.hook_resid_pre", "a-1__b-s3-blocks.3.hook_resid_pre",
        "a-1__b-s-blocks.1.hook_resid_pre-code", "a-1__b-n-blocks.1.hook_resid_pre-code",
        "a-1__b-s3-blocks.3.hook_resid_pre-code"]
    assert [p.n_tokens for p in pairs] == [4096, 4096, 2048, 1024, 1024, 1024]  # the smaller budget applies
    assert [p.primary for p in pairs] == [True] + [False] * 5
    assert sum(p.expected is not None for p in pairs) == 1
    # one pass per (entry, dataset); any member finds its group, the reverse one included
    assert {p.test_id for p in group_of(ids["a-1__b-n-blocks.1.hook_resid_pre-code"])} == \
        {t for t in ids if t.endswith("-code")}
    assert len({p.group_id for p in pairs}) == 2


def test_an_axis_may_name_its_datasets_and_its_own_expectation(tmp_path: Path) -> None:
    axis = AXIS.replace('n_tokens = 2048', 'datasets = ["code"]\nexpected = { verdict = "partial", source = "x" }')
    pairs = evaluations(tmp_path, ENTRY + axis + DATASET)
    s3 = [p for p in pairs if p.sae.name == "s3"]
    assert [p.test_id for p in s3] == ["a-1__b-s3-blocks.3.hook_resid_pre-code"]
    assert s3[0].expected.verdict == "partial"


@pytest.mark.parametrize("extra, message", [
    (AXIS.replace("s3", "s").replace("blocks.3", "blocks.1"), "duplicate axis"),
    (AXIS.replace("n_tokens = 2048", 'datasets = ["math"]'), "names ['math'], which the pair does not have"),
    (AXIS.replace("n_tokens = 2048", "datasets = []"), "non-empty list"),
    (AXIS.replace("blocks.3.hook_resid_pre", "block3"), "field 'hook' must look like"),
    (AXIS + "colour = 1\n", "unknown field(s) ['colour']"),
    (DATASET.replace('name = "code"\n', ""), "field 'name' is required"),
    (DATASET.replace('"code"', '"prose"'), "dataset name(s) ['prose'] given twice"),
    (DATASET.replace('"code"', '"Code Set"'), "must be a lowercase slug"),
    (DATASET.replace("n_tokens = 1024", "n_tokens = 0"), "must be a positive integer"),
    ("\n[pair.axes]\nhook = 1\n", "must be an array of tables"),
])
def test_bad_axes_and_datasets_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "pairs.toml"
    path.write_text(ENTRY + extra)
    with pytest.raises(RegistryError, match="pairs.toml") as err:
        parse_registry_file(path)
    assert message in str(err.value)


def test_a_hand_built_pair_is_its_own_group() -> None:
    pair = next(p for p in load_registry() if p.primary)
    bare = type(pair)(**{**pair.__dict__, "axes": (), "datasets": ()})
    assert expand(bare) == (bare,) and group_of(bare) == (bare,)


def test_the_zoo_runs_both_distributions_and_the_code_pair_both_directions() -> None:
    zoo = [p for p in load_registry() if p.is_tiny]
    assert {p.dataset.key for p in zoo} == {"prose", "code"}
    code = [p for p in zoo if p.id == "tiny-gpt2__code"]
    assert {p.direction for p in code} == {"forward", "reverse"}


def test_a_native_sae_trained_at_another_hook_than_its_axis_is_refused_before_loading(tmp_path: Path) -> None:
    import json
    import shutil

    from saetransfer.config import RunConfig
    from saetransfer.loading import SaeMismatchError, preflight
    from saetransfer.paths import FIXTURES

    zoo = FIXTURES / "zoo"
    moved = shutil.copytree(zoo / "saes" / "code-relu", tmp_path / "code-relu-l1")  # says it was trained at L1
    cfg = json.loads((moved / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_pre"
    (moved / "cfg.json").write_text(json.dumps(cfg))
    text = f"""
[[pair]]
id = "tiny__axis"
base = {{ path = "{zoo}/models/base" }}
finetune = {{ path = "{zoo}/models/code" }}
sae = {{ name = "relu", path = "{zoo}/saes/base-relu" }}
hook = "blocks.2.hook_resid_pre"
dataset = {{ path = "{zoo}/data/prose-eval.parquet", column = "input_ids" }}

[[pair.axes]]
sae = {{ name = "relu-again", path = "{zoo}/saes/base-relu" }}
native_sae = {{ name = "code-l1", path = "{moved}" }}
hook = "blocks.2.hook_resid_pre"
"""
    axis = next(p for p in evaluations(tmp_path, text) if p.axis == 1 and p.direction == "forward")
    with pytest.raises(SaeMismatchError, match="native_sae.*trained at 'blocks.1.hook_resid_pre'"):
        preflight(axis, RunConfig.for_pair(axis))


def test_each_pass_is_one_xdist_group_as_xdist_splits_it() -> None:
    """pytest-xdist's loadgroup scheduler reads the group back from the node id it rewrote; each (entry,
    dataset) must come back as its own group, or one worker gets every pair of a dataset."""
    from xdist.scheduler.loadgroup import LoadGroupScheduling

    from saetransfer.registry import registry_files

    pairs = load_registry(registry_files([]))
    scope = {p.test_id: LoadGroupScheduling._split_scope(None, f"findings/t.py::t[{p.test_id}]@{p.group_id}")  # type: ignore[arg-type]
             for p in pairs}
    for p in pairs:
        assert {scope[q.test_id] for q in group_of(p)} == {scope[p.test_id]}
    assert len(set(scope.values())) == len({p.group_id for p in pairs}) > 2
