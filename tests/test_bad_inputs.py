"""The README's bad-input table, row by row: each case is built here and must print exactly its row.

README.md's "Bad inputs" table is the specification: its second column is the line a user sees, with
`…` for the parts that vary (temp paths). `test_readme_table_is_these_cases` keeps the table and
`CASES` equal, so neither can drift. Bad checkpoints are copies of the committed tiny zoo, broken in
tmp dirs; committed files are never touched. The CLI runs in-process (its `main`, the same code path
as `python -m saetransfer`), pytest-level cases in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from saetransfer.paths import REPO_ROOT, ZOO

README = REPO_ROOT / "README.md"
TABLE_HEADING = "### Bad inputs"
ENTRY = "my-gpt2__finetune"

Scenario = Callable[[Path, pytest.MonkeyPatch, pytest.CaptureFixture[str]], str]
CASES: dict[str, Scenario] = {}


def case(name: str) -> Callable[[Scenario], Scenario]:
    def register(scenario: Scenario) -> Scenario:
        CASES[name] = scenario
        return scenario
    return register


def readme_rows() -> dict[str, str]:
    """case -> what you see, from the README table under TABLE_HEADING (``…`` code spans in column 2)."""
    text = README.read_text()
    section = text[text.index(TABLE_HEADING):]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        match = re.match(r"^\| (.+?) \| ``(.+)`` \|$", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def pattern(row: str) -> str:
    return ".*?".join(re.escape(part) for part in row.split("…"))


# ---------------------------------------------------------------------------------------------
# building blocks


def registry(tmp_path: Path, *, finetune: Path | None = None, sae: Path | None = None, hook: str = "blocks.2.hook_resid_pre",
             extra: str = "") -> Path:
    """A registry file of one entry: the zoo's math pair, with the given parts replaced."""
    finetune = finetune or ZOO / "models" / "math"
    sae = sae or ZOO / "saes" / "base-relu"
    file = tmp_path / "my-pairs.toml"
    file.write_text(f"""[[pair]]
id = "{ENTRY}"
base = {{ path = "{ZOO / 'models' / 'base'}" }}
finetune = {{ path = "{finetune}"{extra} }}
sae = {{ name = "tiny-res-relu", path = "{sae}" }}
hook = "{hook}"
dataset = {{ path = "{ZOO / 'data' / 'prose-eval.parquet'}", column = "input_ids" }}
batch_size = 16
""")
    return file


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    from saetransfer.__main__ import main

    code = main(list(args))
    return code, capsys.readouterr().err.splitlines()


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The CLI's answer to a bad input: exit 2 and exactly one line on stderr."""
    code, err = cli(capsys, *args)
    assert code == 2 and len(err) == 1, err
    return err[0]


def run_entry(capsys: pytest.CaptureFixture[str], file: Path, *args: str) -> str:
    return cli_error(capsys, "run", ENTRY, "--registry", str(file), *args)


def cli_warning(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The warning a run prints before computing (the computation itself is stubbed: it is not the point)."""
    from saetransfer import engine

    class Stub:
        def to_json(self) -> str:
            return "{}"

    monkeypatch.setattr(engine, "run", lambda pair, config, refresh=False: Stub())
    code, err = cli(capsys, *args)
    warnings = [line for line in err if line.startswith("warning: ")]
    assert code == 0 and len(warnings) == 1, err
    return warnings[0]


def pytest_error(*args: str) -> str:
    """A usage error of a pytest run: exit 4 and the message once, without tracebacks."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_registry.py", "-q", "-p", "no:cacheprovider",
                           *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4 and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, out
    return errors[0]


def copy_model(tmp_path: Path, *skip: str) -> Path:
    target = tmp_path / "finetune"
    shutil.copytree(ZOO / "models" / "math", target, ignore=shutil.ignore_patterns(*skip))
    return target


def sae_dir(tmp_path: Path, *, cfg_changes: dict[str, int], weights_d_in: int | None = None) -> Path:
    """A copy of the zoo SAE with cfg.json edited, and (with `weights_d_in`) weights of another width."""
    target = tmp_path / "sae"
    shutil.copytree(ZOO / "saes" / "base-relu", target)
    cfg = json.loads((target / "cfg.json").read_text())
    (target / "cfg.json").write_text(json.dumps({**cfg, **cfg_changes}))
    if weights_d_in is not None:
        from safetensors.numpy import save_file

        d_sae = cfg_changes.get("d_sae", cfg["d_sae"])
        save_file({"W_enc": np.zeros((weights_d_in, d_sae), np.float32), "W_dec": np.zeros((d_sae, weights_d_in), np.float32),
                   "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(weights_d_in, np.float32)},
                  str(target / "sae_weights.safetensors"))
    return target


# ---------------------------------------------------------------------------------------------
# the cases, in README order


@case("local path that does not exist")
def _missing_path(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, finetune=tmp_path / "no-such-finetune"))


@case("local path that does not exist, under `pytest findings`")
def _missing_path_pytest(tmp_path, monkeypatch, capsys):
    file = registry(tmp_path, finetune=tmp_path / "no-such-finetune")
    proc = subprocess.run([sys.executable, "-m", "pytest", "findings", "--registry", str(file), "-k", ENTRY, "-q",
                           "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "SAETRANSFER_REPORTS": str(tmp_path / "reports"),
                               "SAETRANSFER_CACHE": str(tmp_path / "cache")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "skipped" not in out, out  # errors, never a green skip
    lines = [line for line in out.splitlines() if line.startswith("MissingPathError: ")]
    # every finding and claim of the pair errors, all with the same one-line message
    assert len(lines) >= 5 and len(set(lines)) == 1, out
    return lines[0]


@case("checkpoint with config.json but no weights")
def _no_weights(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, finetune=copy_model(tmp_path, "*.safetensors")))


@case("checkpoint without tokenizer files")
def _no_tokenizer(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, finetune=copy_model(tmp_path, "tokenizer*")))


@case("truncated safetensors file")
def _truncated(tmp_path, monkeypatch, capsys):
    finetune = copy_model(tmp_path)
    weights = finetune / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return run_entry(capsys, registry(tmp_path, finetune=finetune))


@case("hook typo")
def _hook_typo(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, hook="blocks.2.hook_resid_pree"))


@case("hook past the last layer")
def _hook_layer(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, hook="blocks.9.hook_resid_pre"))


@case("hook that is not on the residual stream")
def _hook_kind(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, hook="blocks.2.hook_mlp_out"))


@case("SAE trained at another hook")
def _sae_hook(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, hook="blocks.1.hook_resid_pre"))


@case("SAE d_in differs from the model's d_model")
def _d_in(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, sae=sae_dir(tmp_path, cfg_changes={"d_in": 64}, weights_d_in=64)))


@case("SAE cfg.json and weights disagree")
def _cfg_vs_weights(tmp_path, monkeypatch, capsys):
    return run_entry(capsys, registry(tmp_path, sae=sae_dir(tmp_path, cfg_changes={"d_sae": 512})))


@case("`run --gpu` without CUDA")
def _gpu(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --gpu is valid here")
    return cli_error(capsys, "run", "tiny-gpt2__math", "--gpu")


@case("`--tokens 0`")
def _tokens_zero(tmp_path, monkeypatch, capsys):
    return cli_error(capsys, "run", "tiny-gpt2__math", "--tokens", "0")


@case("`--tokens -5`")
def _tokens_negative(tmp_path, monkeypatch, capsys):
    return cli_error(capsys, "run", "tiny-gpt2__math", "--tokens", "-5")


@case("`--tokens 0` under pytest")
def _tokens_pytest(tmp_path, monkeypatch, capsys):
    return pytest_error("--tokens", "0")


@case("`--tokens` below one full row and batch")
def _tokens_batch(tmp_path, monkeypatch, capsys):
    return cli_error(capsys, "run", "tiny-gpt2__math", "--tokens", "100")


@case("`--tokens` below the kept-position floor")
def _tokens_floor(tmp_path, monkeypatch, capsys):
    file = registry(tmp_path)
    file.write_text(file.read_text().replace("batch_size = 16", "batch_size = 4"))
    return cli_warning(monkeypatch, capsys, "run", ENTRY, "--registry", str(file), "--tokens", "512")


@case("TOML syntax error in a `--registry` file")
def _toml_cli(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "my-pairs.toml"
    bad.write_text('[[pair]]\nid = "my-gpt2__finetune"\nbase = { path = "a"\n')
    return cli_error(capsys, "run", ENTRY, "--registry", str(bad))


@case("TOML syntax error in a `--registry` file, under pytest")
def _toml_pytest(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "my-pairs.toml"
    bad.write_text('[[pair]]\nid = "my-gpt2__finetune"\nbase = { path = "a"\n')
    return pytest_error("--registry", str(bad))


@case("unknown pair id")
def _unknown(tmp_path, monkeypatch, capsys):
    return cli_error(capsys, "run", "tiny-gpt2__cod")


@case("`trust_remote_code = true`")
def _remote_code(tmp_path, monkeypatch, capsys):
    file = registry(tmp_path, extra=", trust_remote_code = true")
    return cli_warning(monkeypatch, capsys, "run", ENTRY, "--registry", str(file))


# ---------------------------------------------------------------------------------------------

ROWS = readme_rows()


def test_readme_table_is_these_cases() -> None:
    """Every README row has a case here and every case a README row, in the same order."""
    assert list(ROWS) == list(CASES)


@pytest.mark.parametrize("name", list(CASES), ids=[re.sub(r"[^a-z0-9]+", "-", n.lower()).strip("-") for n in CASES])
def test_bad_input_prints_its_readme_row(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    seen = CASES[name](tmp_path, monkeypatch, capsys)
    assert name in ROWS, f"add a README row for {name!r}: | {name} | ``{seen}`` |"
    assert re.fullmatch(pattern(ROWS[name]), seen), f"\nREADME: {ROWS[name]}\nseen:   {seen}"
