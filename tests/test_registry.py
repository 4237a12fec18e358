"""The pair registry parses the committed file and names the field of every malformed entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from saetransfer.registry import (
    RegistryError, UnknownPairError, get_pair, load_registry, parse_registry_file,
)

GOOD = """
[[pair]]
id = "a-1__b"
base = { path = "m" }
finetune = { path = "m" }
sae = { name = "s", path = "s" }
hook = "blocks.0.hook_resid_pre"
dataset = { path = "d.parquet", column = "input_ids" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.toml"
    path.write_text(text)
    return path


def test_committed_registry_has_the_posts_pairs() -> None:
    """Every pair named by the foundation issue is present, with the post's exact settings."""
    pairs = {p.id: p for p in load_registry() if p.primary}
    assert {"gemma-2b__python-codes", "mistral-7b__metamath", "gpt2-small__portuguese", "gpt2-small__imdb",
            "gemma-2b__it", "tiny-gpt2__self", "tiny-gpt2__math", "tiny-gpt2__code",
            "tiny-gpt2__retok"} <= set(pairs)
    mistral = pairs["mistral-7b__metamath"]
    assert (mistral.hook, mistral.context_size, mistral.prepend_bos) == ("blocks.8.hook_resid_pre", 256, False)
    assert mistral.outliers.absolute == 200.0 and mistral.expected.verdict == "transfers"
    gemma = pairs["gemma-2b__python-codes"]
    assert (gemma.sae.release, gemma.hook, gemma.context_size) == ("gemma-2b-res-jb", "blocks.6.hook_resid_post", 1024)
    assert gemma.expected.verdict == "fails" and gemma.needs_gpu
    assert pairs["gemma-2b__it"].expected.extrapolated
    assert pairs["gpt2-small__imdb"].expected is None
    assert all(p.needs_hub != p.is_tiny for p in pairs.values())


def test_local_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (pair,) = parse_registry_file(write(tmp_path, GOOD))
    assert pair.base.path == (tmp_path / "m").resolve()
    assert pair.test_id == "a-1__b-s-blocks.0.hook_resid_pre"
    assert not pair.needs_hub and pair.layer == 0


@pytest.mark.parametrize(("old", "new", "field"), [
    ('hook = "blocks.0.hook_resid_pre"', 'hook = "resid"', "'hook'"),
    ('id = "a-1__b"', 'id = "Org/Model"', "'id'"),
    ('base = { path = "m" }', 'base = { path = "m", hub = "x/y" }', "field 'base'"),
    ('base = { path = "m" }', 'base = "m"', "'base' must be a table"),
    ('sae = { name = "s", path = "s" }', 'sae = { path = "s" }', "'name'"),
    ('dataset = { path = "d.parquet", column = "input_ids" }', "", "'dataset'"),
    ('hook = "blocks.0.hook_resid_pre"', 'hook = "blocks.0.hook_resid_pre"\nn_tokens = -5', "'n_tokens'"),
    ('hook = "blocks.0.hook_resid_pre"', 'hook = "blocks.0.hook_resid_pre"\nbogus = 1', "bogus"),
    ('hook = "blocks.0.hook_resid_pre"', 'hook = "blocks.0.hook_resid_pre"\nexpected = { verdict = "great", source = "me" }', "'verdict'"),
    ('hook = "blocks.0.hook_resid_pre"', 'hook = "blocks.0.hook_resid_pre"\noutliers = { relative = 2, absolute = 9 }', "field 'outliers'"),
])
def test_malformed_entries_name_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    with pytest.raises(RegistryError, match=field.replace("(", r"\(")) as info:
        parse_registry_file(write(tmp_path, GOOD.replace(old, new)))
    assert "pairs.toml" in str(info.value)


def test_duplicate_test_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="duplicate test id"):
        load_registry([write(tmp_path, GOOD + GOOD)])


def test_unknown_pair_id_suggests_close_ids() -> None:
    pairs = load_registry()
    assert get_pair(pairs, "tiny-gpt2__code").id == "tiny-gpt2__code"
    with pytest.raises(UnknownPairError, match="Did you mean.*tiny-gpt2__code"):
        get_pair(pairs, "tiny-gpt2__cod")


def test_missing_registry_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry([tmp_path / "nope.toml"])
