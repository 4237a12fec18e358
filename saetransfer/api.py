"""The notebook entry point: evaluate one (base, finetune, SAE, hook, dataset) without a TOML file.

    import saetransfer
    ev = saetransfer.evaluate(base="openai-community/gpt2", finetune="/data/my-gpt2-finetune",
                              sae=("gpt2-small-res-jb", "blocks.6.hook_resid_pre"),
                              hook="blocks.6.hook_resid_pre", dataset="Skylion007/openwebtext", hub=True)
    ev.result.verdict.verdict    # the typed PairResult
    ev.headline()                # a pandas DataFrame of the compared quantities with their intervals
    ev                           # in Jupyter: the verdict, its reasons, the headline and the claims

The arguments become the same raw table a `[[pair]]` entry is and go through `registry.parse_pair`, so
validation and error messages are the registry's. Results come from the same cache as `engine.run`;
nothing is written into `reports/` unless `save=True` or `records_dir` is given.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saetransfer.claims import ClaimOutcome, evaluate_claims
from saetransfer.registry import Pair, parse_pair
from saetransfer.results import PairResult

if TYPE_CHECKING:
    import pandas as pd

Source = str | Path | Mapping[str, Any]
SaeSpec = str | Path | tuple[str, Any] | Mapping[str, Any]

WHERE = "saetransfer.evaluate()"
"""Where a RegistryError from this entry point says the bad entry is (the registry names a file)."""
_LOCAL_PREFIXES = ("/", "./", "../", "~")


def _is_local(value: str | Path) -> bool:
    """A Path, an existing file or folder, or a string that reads as a path; anything else is a Hub id."""
    return isinstance(value, Path) or value.startswith(_LOCAL_PREFIXES) or Path(value).expanduser().exists()


def _location(value: str | Path) -> str:
    return str(Path(value).expanduser().resolve())


def _model_table(value: Source) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return {"path": _location(value)} if _is_local(value) else {"hub": str(value)}


def _dataset_table(value: Source) -> dict[str, Any]:
    return _model_table(value)  # the same rule: a local file/folder or a Hub dataset id


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.") or "x"


def _sae_table(value: SaeSpec) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        release, sae_id = value
        return {"release": release, "id": sae_id}
    # a local SAELens folder; the registry wants a slug to name it in test ids
    return {"path": _location(value), "name": _slug(Path(value).name)}


def _name_of(table: Mapping[str, Any]) -> str:
    """A readable id part for a source: the last component of its path or Hub id."""
    ref = table.get("path") or table.get("hub") or "model"
    return _slug(str(ref).rstrip("/").rsplit("/", 1)[-1])


def pair_table(base: Source, finetune: Source, sae: SaeSpec, hook: str, dataset: Source,
               **fields: Any) -> dict[str, Any]:
    """The raw `[[pair]]` table these arguments stand for (what a user would have written in TOML)."""
    raw: dict[str, Any] = {"base": _model_table(base), "finetune": _model_table(finetune), "sae": _sae_table(sae),
                           "hook": hook, "dataset": _dataset_table(dataset)}
    if "native_sae" in fields and fields["native_sae"] is not None:
        fields = {**fields, "native_sae": _sae_table(fields["native_sae"])}
    raw.update(fields)
    raw.setdefault("id", f"{_name_of(raw['base'])}__{_name_of(raw['finetune'])}")
    return raw


def make_pair(base: Source, finetune: Source, sae: SaeSpec, hook: str, dataset: Source, **fields: Any) -> Pair:
    """A registry `Pair` from paths/Hub ids; raises the registry's `RegistryError` on bad input."""
    return parse_pair(pair_table(base, finetune, sae, hook, dataset, **fields), Path.cwd(), WHERE)


@dataclass(frozen=True)
class Evaluation:
    """One evaluated pair: its registry entry, the typed result, and the post's claims decided on it."""

    pair: Pair
    result: PairResult
    claims: tuple[ClaimOutcome, ...]
    record: Path | None = None
    """The record written (save=True or records_dir), else None."""

    @property
    def verdict(self) -> str:
        return self.result.verdict.verdict

    def headline(self) -> pd.DataFrame:
        """One row per quantity the verdict compares (value and bootstrap interval), then the verdict."""
        import pandas as pd

        from saetransfer.results import Comparisons

        rows = []
        comparisons = self.result.comparisons
        if comparisons is not None:
            for f in dataclasses.fields(Comparisons):
                estimate = getattr(comparisons, f.name)
                if estimate is not None:
                    rows.append({"quantity": f.name, "value": estimate.value, "low": estimate.low,
                                 "high": estimate.high, "description": Comparisons.describe(f.name)})
        reasons = self.result.verdict.reasons
        rows.append({"quantity": "verdict", "value": float("nan"), "low": float("nan"), "high": float("nan"),
                     "description": f"{self.verdict}: {reasons[0]}" if reasons else self.verdict})
        return pd.DataFrame(rows).set_index("quantity")

    def _repr_html_(self) -> str:
        from saetransfer.report.doc import Bullets, Heading, Para, Table, to_html_fragment

        r = self.result
        rows = tuple((name, *(f"{x:.4g}" for x in (row.value, row.low, row.high)), row.description)
                     for name, row in self.headline().drop(index="verdict").iterrows())
        blocks = [Heading(3, f"{self.pair.id}: {self.verdict}"), Bullets(tuple(r.verdict.reasons))]
        if rows:
            blocks.append(Table(("quantity", "value", "low", "high", "description"), rows))
        else:
            blocks.append(Para("No metrics: the pair stopped before the evaluation (see the reasons)."))
        blocks.append(Table(("claim", "holds", "message"),
                            tuple((c.claim, {True: "holds", False: "does not hold", None: "n/a"}[c.holds], c.message)
                                  for c in self.claims)))
        return to_html_fragment(blocks)


def evaluate(base: Source, finetune: Source, sae: SaeSpec, hook: str, dataset: Source, *,
             tokens: int | None = None, gpu: bool = False, hub: bool = False, refresh: bool = False,
             progress: bool = False, save: bool = False, records_dir: Path | str | None = None,
             **fields: Any) -> Evaluation:
    """Evaluate the base SAE on base and finetune, as `pytest findings` would for a registry entry.

    `base`, `finetune`, `dataset`: a local path (a `Path`, or a string that exists or starts with '/',
    './', '../', '~') or a Hub id; or a table in the registry's syntax ({"hub": ..., "revision": ...}).
    `sae`: a local SAELens folder, a (release, sae_id) tuple, or a table. Any other `[[pair]]` field
    (id, native_sae, context_size, prepend_bos, n_tokens, batch_size, seed, outliers, expected, ...)
    goes in `fields`. `tokens` overrides the token budget; `gpu` runs on CUDA in bf16; `hub` allows
    downloads. `save=True` writes the record into `reports/records/`, `records_dir` somewhere else.
    """
    from saetransfer.config import RunConfig
    from saetransfer.engine import run

    pair = make_pair(base, finetune, sae, hook, dataset, **fields)
    config = RunConfig.for_pair(pair, tokens=tokens, gpu=gpu, hub=hub, progress=progress)
    result = run(pair, config, refresh=refresh)
    claims = evaluate_claims(result, pair)
    record = None
    if save or records_dir is not None:
        from saetransfer.paths import RECORDS
        from saetransfer.report.records import merge_claims, write_record

        directory = Path(records_dir) if records_dir is not None else RECORDS
        record = write_record(directory, pair, result)
        merge_claims(directory, {pair.test_id: list(claims)})
    return Evaluation(pair=pair, result=result, claims=claims, record=record)
