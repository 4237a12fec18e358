"""The pair registry: which (base model, finetune, SAE) triples exist, as data.

Entries live in TOML files (`fixtures/pairs.toml`, plus any file a user adds with `--registry` or
`SAETRANSFER_REGISTRY`) and become frozen dataclasses here. Local paths in a file are relative to
that file. Every malformed entry raises `RegistryError` naming the file, the entry and the field.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from saetransfer.paths import DEFAULT_REGISTRY, portable_path

Verdict = Literal["transfers", "partial", "fails", "not comparable", "unusable", "not judged"]
VERDICTS: tuple[str, ...] = get_args(Verdict)

# ids: lowercase slug, `__` between base and finetune, nothing a shell, `-k` or a file name chokes on
_PAIR_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*__[a-z0-9][a-z0-9.-]*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class RegistryError(ValueError):
    """A registry file or entry is malformed; the message names the file, entry and field."""


class UnknownPairError(KeyError):
    """No registry entry has the requested id."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSource:
    """A language model: a Hub repo id or a local HF checkpoint directory."""

    hub: str | None = None
    """HF repo id, e.g. `google/gemma-2b`."""
    path: Path | None = None
    """Local HF checkpoint directory (config.json, weights, tokenizer)."""
    tl_name: str | None = None
    """TransformerLens official name, for Hub models TL knows (e.g. `gpt2-small`)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); None means the default branch, recorded when resolved."""
    trust_remote_code: bool = False
    """Run the repo's own modelling code. Never on unless an entry says so."""
    interpolate_from: Path | None = None
    """A local checkpoint of the same shape: the weights become from + alpha * (this - from)."""
    alpha: float = 1.0
    """Finetune strength along the straight line from `interpolate_from` (0) to this checkpoint (1)."""

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def describe(self) -> str:
        if self.path is not None:
            if self.interpolate_from is not None:
                return f"{portable_path(self.interpolate_from)} + {self.alpha} x ({portable_path(self.path)} - it)"
            return portable_path(self.path)
        return f"{self.hub}@{self.revision}" if self.revision else str(self.hub)


@dataclass(frozen=True)
class SaeSource:
    """An SAE: a SAELens release + id, or a local SAELens directory (cfg.json + weights)."""

    name: str
    """Short slug used in test ids and reports."""
    release: str | None = None
    sae_id: str | None = None
    path: Path | None = None
    trained_on: str | None = None
    """What it was trained on, in words (e.g. "prose: the zoo's TinyStories-like set"); the report shows it.
    Default: the SAE cfg's `dataset_path`."""

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def describe(self) -> str:
        return portable_path(self.path) if self.path is not None else f"{self.release}/{self.sae_id}"


@dataclass(frozen=True)
class DatasetSource:
    """Evaluation text or tokens: a Hub dataset or a local file (parquet/json/arrow dir)."""

    hub: str | None = None
    path: Path | None = None
    config: str | None = None
    """Hub dataset config name (e.g. a fineweb sample)."""
    split: str = "train"
    column: str = "text"
    """`text` is tokenized with the base tokenizer; `input_ids`/`tokens` are used as they are."""
    revision: str | None = None
    name: str | None = None
    """Slug naming the dataset in test ids (`-{name}` after the first dataset's) and in axes' `datasets`;
    default: the file's stem or the Hub id's last part."""

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def key(self) -> str:
        """The dataset's name: given, or derived from its source."""
        if self.name is not None:
            return self.name
        ref = self.path.stem if self.path is not None else str(self.hub).rstrip("/").rsplit("/", 1)[-1]
        return re.sub(r"[^a-z0-9._-]+", "-", ref.lower()).strip("-.") or "dataset"

    @property
    def pretokenized(self) -> bool:
        return self.column in ("input_ids", "tokens")

    def describe(self) -> str:
        return portable_path(self.path) if self.path is not None else f"{self.hub}:{self.split}"


@dataclass(frozen=True)
class OutlierPolicy:
    """Which activations count as norm outliers (Kissane et al.; the post §4.1).

    Exactly one of `relative` and `absolute` is set. A relative threshold is fitted on each model's own
    typical norm (a finetune may legitimately change the residual scale); both are recorded.
    """

    relative: float | None = 2.0
    """Outlier if ||x|| > relative * (mean ||x|| of the base model's non-BOS positions)."""
    absolute: float | None = None
    """Outlier if ||x|| > absolute, in raw norm units (the post used 200 for Mistral); the finetune too
    unless `absolute_finetune` is set."""
    absolute_finetune: float | None = None
    """The finetune's own absolute threshold, for a finetune whose residual scale differs."""


@dataclass(frozen=True)
class Expectation:
    """What a published source says about a pair."""

    verdict: Verdict
    source: str
    extrapolated: bool = False
    """True when the source studied a neighbouring setting (another SAE, layer or checkpoint)."""
    norm_matched: bool = False
    """True when the source's numbers are norm-matched (Kissane et al. rescale each evaluated model by
    its own factor): the expectation is then compared with the norm-matched verdict."""


@dataclass(frozen=True)
class Axis:
    """One (hook, SAE, optional finetune-native SAE) entry of a pair; the entry's own fields are axis 0."""

    sae: SaeSource
    hook: str
    native_sae: SaeSource | None = None
    """With a native SAE, the axis is also evaluated finetune -> base (Kissane et al. ran both directions)."""
    n_tokens: int | None = None
    """This axis's token budget; on a dataset with its own budget, the smaller of the two applies."""
    datasets: tuple[str, ...] | None = None
    """Dataset names this axis runs on; None: all of the pair's datasets."""
    expected: Expectation | None = None
    """What a source says about this axis, base -> finetune on its first dataset."""


@dataclass(frozen=True)
class DatasetEntry:
    """One evaluation distribution of a pair with its own token budget (None: the pair's `n_tokens`)."""

    dataset: DatasetSource
    n_tokens: int | None = None


Direction = Literal["forward", "reverse"]
DIRECTION_LABELS: dict[str, str] = {"forward": "base -> finetune", "reverse": "finetune -> base"}


@dataclass(frozen=True)
class Pair:
    """One evaluation: a model (the SAE's own), another model, and the SAE at one hook on one dataset.

    A registry entry expands (`expand`) into one `Pair` per (axis, dataset, direction). The entry's own
    fields are its first axis and first dataset, base -> finetune (`primary`); for the reverse direction
    `base` and `finetune` are swapped, so `base` is always the model the evaluated SAE was trained on.
"""

    id: str
    base: ModelSource
    finetune: ModelSource
    sae: SaeSource
    hook: str
    dataset: DatasetSource
    context_size: int | None = None
    """Tokens per row; None takes the SAE's training context."""
    prepend_bos: bool | None = None
    """None takes the SAE's training setting (Mistral's SAE was trained without BOS)."""
    n_tokens: int = 65_536
    """Default token budget of the shared sample (the `--tokens` option overrides it)."""
    batch_size: int = 8
    """Prompts per forward pass."""
    seed: int = 0
    outliers: OutlierPolicy = field(default_factory=OutlierPolicy)
    expected: Expectation | None = None
    native_sae: SaeSource | None = None
    """An SAE trained on the finetune itself: Kissane et al.'s reference point."""
    needs_gpu: bool = False
    """Too large for a CPU run; its tests carry the `gpu` marker."""
    description: str = ""
    source_file: Path | None = field(default=None, compare=False)
    axes: tuple[Axis, ...] = ()
    """All (hook, SAE, native SAE) entries of the registry entry, its own first; () for a single evaluation."""
    datasets: tuple[DatasetEntry, ...] = ()
    """All datasets of the registry entry, its own first; () for a single evaluation."""
    axis: int = 0
    """Which of `axes` this evaluation is."""
    dataset_index: int = 0
    """Which of `datasets` this evaluation runs on."""
    direction: Direction = "forward"

    @property
    def test_id(self) -> str:
        """Pair, SAE and hook (+ `-{dataset}` after the first dataset): a new axis adds ids, it renames none.

        The SAE is the evaluated one, so the reverse direction (the native SAE on the base) has its own id."""
        suffix = f"-{self.dataset.key}" if self.dataset_index > 0 else ""
        return f"{self.id}-{self.sae.name}-{self.hook}{suffix}"

    @property
    def primary(self) -> bool:
        """The entry's own (hook, dataset, base -> finetune): what `expected` and the cross-pair findings read."""
        return self.axis == 0 and self.dataset_index == 0 and self.direction == "forward"

    @property
    def group_id(self) -> str:
        """The evaluations computed in one streaming pass: the entry on one dataset.

        No `@`: pytest-xdist's loadgroup takes the text after a node id's last `@` as its group, so an `@`
        here would put every pair's tests on one dataset into one group (one worker)."""
        return f"{self.id}/{self.dataset.key}"

    @property
    def direction_label(self) -> str:
        return DIRECTION_LABELS[self.direction]

    @property
    def is_tiny(self) -> bool:
        return self.id.startswith("tiny-")

    @property
    def needs_hub(self) -> bool:
        sources: list[Any] = [self.base, self.finetune, self.sae, self.dataset]
        if self.native_sae is not None:
            sources.append(self.native_sae)
        return any(not s.is_local for s in sources)

    @property
    def layer(self) -> int:
        """Block index of the hook (`blocks.6.hook_resid_post` -> 6)."""
        return int(self.hook.split(".")[1])


def expand(entry: Pair) -> tuple[Pair, ...]:
    """Every evaluation of a registry entry: per dataset, per axis, base -> finetune and, with a native
    SAE, finetune -> base. The first is the entry itself. A `Pair` built by hand (no axes) is its own."""
    if not entry.axes:
        return (entry,)
    if entry.direction == "reverse":  # back to the entry's own orientation
        entry = replace(swapped(entry), direction="forward")
    out = []
    for d, ds in enumerate(entry.datasets):
        for a, axis in enumerate(entry.axes):
            if axis.datasets is not None and ds.dataset.key not in axis.datasets:
                continue
            first_of_axis = axis.datasets is None and d == 0 or axis.datasets is not None and \
                ds.dataset.key == axis.datasets[0]
            budget = min(b for b in (axis.n_tokens, ds.n_tokens or entry.n_tokens) if b is not None)
            forward = replace(entry, sae=axis.sae, hook=axis.hook, native_sae=axis.native_sae, dataset=ds.dataset,
                              n_tokens=budget, axis=a, dataset_index=d, direction="forward",
                              expected=axis.expected if first_of_axis else None)
            out.append(forward)
            if axis.native_sae is not None:
                out.append(reversed_direction(forward))
    return tuple(out)


def reversed_direction(forward: Pair) -> Pair:
    """The finetune-native SAE evaluated on the base: its own model (the finetune) becomes `base`, and the
    base SAE on the base is the native reference."""
    assert forward.native_sae is not None
    return replace(swapped(forward), sae=forward.native_sae, native_sae=forward.sae, expected=None,
                   direction="reverse")


def swapped(pair: Pair) -> Pair:
    """Base and finetune exchanged, with their outlier thresholds (its own inverse)."""
    p = pair.outliers
    outliers = p if p.absolute_finetune is None else replace(p, absolute=p.absolute_finetune, absolute_finetune=p.absolute)
    return replace(pair, base=pair.finetune, finetune=pair.base, outliers=outliers)


def group_of(pair: Pair) -> tuple[Pair, ...]:
    """The evaluations sharing `pair`'s streaming pass (its entry on its dataset), `pair` among them."""
    members = tuple(p for p in expand(pair) if p.dataset_index == pair.dataset_index)
    return members if pair in members else (pair,)


def pass_cost(pair: Pair) -> int:
    """A relative estimate of the work of `pair`'s streaming pass: tokens x SAE splices over its group (each
    evaluation splices its SAE into both models and, norm-matched, into the other, plus its native SAE),
    so that a scheduler can start the largest passes first."""
    return sum(p.n_tokens * (3 + (p.native_sae is not None)) for p in group_of(pair))


# ---------------------------------------------------------------------------------------------
# parsing


def _keys(cls: type, *, rename: Mapping[str, str] | None = None, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """The TOML keys of a dataclass: its field names (`rename`: field -> key), less those a file cannot set."""
    rename = rename or {}
    return tuple(rename.get(f.name, f.name) for f in fields(cls) if f.name not in exclude)


def _default(cls: type, name: str) -> Any:
    """A field's default, read from the dataclass so that it lives only there."""
    default = next(f.default for f in fields(cls) if f.name == name)
    assert default is not MISSING, f"{cls.__name__}.{name} has no plain default"
    return default


def _fail(where: str, message: str) -> RegistryError:
    return RegistryError(f"{where}: {message}")


def _table(raw: Mapping[str, Any], key: str, where: str, required: bool = True) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise _fail(where, f"missing required field '{key}'")
        return None
    if not isinstance(value, Mapping):
        raise _fail(where, f"field '{key}' must be a table, got {type(value).__name__}")
    return dict(value)


def _check_keys(raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _typed(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _fail(where, f"field '{key}' must be a number, got a boolean")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(where, f"field '{key}' must be {names}, got {value!r}")
    return value


def _path(raw: Mapping[str, Any], base_dir: Path, where: str) -> Path | None:
    value = _typed(raw, "path", str, where)
    return None if value is None else (base_dir / value).resolve()


def _one_of(raw: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    present = [k for k in keys if raw.get(k) is not None]
    if len(present) != 1:
        raise _fail(where, f"give exactly one of {list(keys)}, got {present or 'none'}")


def _model(raw: Mapping[str, Any], base_dir: Path, where: str) -> ModelSource:
    _check_keys(raw, _keys(ModelSource), where)
    _one_of(raw, ("hub", "path"), where)
    start = _typed(raw, "interpolate_from", str, where)
    alpha = float(_typed(raw, "alpha", (int, float), where, _default(ModelSource, "alpha")))
    if start is not None and raw.get("path") is None:
        raise _fail(where, "field 'interpolate_from' needs a local 'path' to interpolate towards")
    if start is None and "alpha" in raw:
        raise _fail(where, "field 'alpha' needs 'interpolate_from'")
    return ModelSource(
        interpolate_from=None if start is None else (base_dir / start).resolve(),
        alpha=alpha,
        hub=_typed(raw, "hub", str, where),
        path=_path(raw, base_dir, where),
        tl_name=_typed(raw, "tl_name", str, where),
        revision=_typed(raw, "revision", str, where),
        trust_remote_code=_typed(raw, "trust_remote_code", bool, where, _default(ModelSource, "trust_remote_code")),
    )


def _sae(raw: Mapping[str, Any], base_dir: Path, where: str) -> SaeSource:
    _check_keys(raw, _keys(SaeSource, rename={"sae_id": "id"}), where)
    _one_of(raw, ("release", "path"), where)
    if raw.get("release") is not None and raw.get("id") is None:
        raise _fail(where, "field 'id' is required with 'release' (the SAELens sae_id)")
    name = _typed(raw, "name", str, where, raw.get("release"))
    if name is None:
        raise _fail(where, "field 'name' is required for a local SAE (a slug for test ids)")
    if not _SLUG.match(name):
        raise _fail(where, f"field 'name' {name!r} must be a lowercase slug [a-z0-9._-]")
    return SaeSource(
        name=name,
        release=_typed(raw, "release", str, where),
        sae_id=_typed(raw, "id", str, where),
        path=_path(raw, base_dir, where),
        trained_on=_typed(raw, "trained_on", str, where),
    )


def _dataset(raw: Mapping[str, Any], base_dir: Path, where: str) -> DatasetSource:
    _check_keys(raw, _keys(DatasetSource), where)
    _one_of(raw, ("hub", "path"), where)
    return DatasetSource(
        hub=_typed(raw, "hub", str, where),
        path=_path(raw, base_dir, where),
        config=_typed(raw, "config", str, where),
        split=_typed(raw, "split", str, where, _default(DatasetSource, "split")),
        column=_typed(raw, "column", str, where, _default(DatasetSource, "column")),
        revision=_typed(raw, "revision", str, where),
        name=_typed(raw, "name", str, where),
    )


def _outliers(raw: Mapping[str, Any] | None, where: str) -> OutlierPolicy:
    if raw is None:
        return OutlierPolicy()
    _check_keys(raw, _keys(OutlierPolicy), where)
    _one_of(raw, ("relative", "absolute"), where)
    relative = _typed(raw, "relative", (int, float), where)
    absolute = _typed(raw, "absolute", (int, float), where)
    absolute_ft = _typed(raw, "absolute_finetune", (int, float), where)
    if absolute_ft is not None and absolute is None:
        raise _fail(where, "field 'absolute_finetune' needs 'absolute' (the base's threshold)")
    for key, value in (("relative", relative), ("absolute", absolute), ("absolute_finetune", absolute_ft)):
        if value is not None and value <= 0:
            raise _fail(where, f"field '{key}' must be positive, got {value}")
    return OutlierPolicy(
        relative=None if relative is None else float(relative),
        absolute=None if absolute is None else float(absolute),
        absolute_finetune=None if absolute_ft is None else float(absolute_ft),
    )


def _expectation(raw: Mapping[str, Any] | None, where: str) -> Expectation | None:
    if raw is None:
        return None
    _check_keys(raw, _keys(Expectation), where)
    verdict = _typed(raw, "verdict", str, where)
    if verdict not in VERDICTS:
        raise _fail(where, f"field 'verdict' must be one of {list(VERDICTS)}, got {verdict!r}")
    source = _typed(raw, "source", str, where)
    if not source:
        raise _fail(where, "field 'source' is required: say where the expectation comes from")
    extrapolated = _typed(raw, "extrapolated", bool, where, _default(Expectation, "extrapolated"))
    norm_matched = _typed(raw, "norm_matched", bool, where, _default(Expectation, "norm_matched"))
    return Expectation(verdict=verdict, source=source, extrapolated=extrapolated, norm_matched=norm_matched)


_PAIR_KEYS = _keys(Pair, exclude=("source_file", "axis", "dataset_index", "direction"))  # set here, never in a file
_AXIS_KEYS = _keys(Axis)
_DATASET_ENTRY_KEYS = (*_keys(DatasetSource), "n_tokens")


def _hook(raw: Mapping[str, Any], where: str) -> str:
    hook = _typed(raw, "hook", str, where)
    if hook is None or not re.match(r"^blocks\.\d+\.hook_[a-z_]+$", hook):
        raise _fail(where, f"field 'hook' must look like 'blocks.6.hook_resid_post', got {hook!r}")
    return hook


def _positive(raw: Mapping[str, Any], key: str, where: str, default: int | None) -> int | None:
    value = _typed(raw, key, int, where, default)
    if value is not None and value <= 0:
        raise _fail(where, f"field '{key}' must be a positive integer, got {value}")
    return value


def _tables(raw: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _fail(where, f"field '{key}' must be an array of tables ([[pair.{key}]])")
    return [dict(v) for v in value]


def _axis(raw: Mapping[str, Any], base_dir: Path, where: str, names: Sequence[str]) -> Axis:
    _check_keys(raw, _AXIS_KEYS, where)
    native = _table(raw, "native_sae", where, required=False)
    datasets = raw.get("datasets")
    if datasets is not None:
        if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
            raise _fail(where, f"field 'datasets' must be a non-empty list of dataset names, got {datasets!r}")
        missing = [d for d in datasets if d not in names]
        if missing:
            raise _fail(where, f"field 'datasets' names {missing}, which the pair does not have; its datasets: "
                        f"{list(names)}")
    return Axis(sae=_sae(_table(raw, "sae", where) or {}, base_dir, f"{where} field 'sae'"),
                native_sae=None if native is None else _sae(native, base_dir, f"{where} field 'native_sae'"),
                hook=_hook(raw, where), n_tokens=_positive(raw, "n_tokens", where, None),
                datasets=None if datasets is None else tuple(datasets),
                expected=_expectation(_table(raw, "expected", where, required=False), f"{where} field 'expected'"))


def _datasets(raw: Mapping[str, Any], base_dir: Path, where: str, n_tokens: int) -> tuple[DatasetEntry, ...]:
    first = _dataset(_table(raw, "dataset", where) or {}, base_dir, f"{where} field 'dataset'")
    entries = [DatasetEntry(first, n_tokens)]
    for i, table in enumerate(_tables(raw, "datasets", where)):
        at = f"{where} [[pair.datasets]] #{i + 1}"
        _check_keys(table, _DATASET_ENTRY_KEYS, at)
        if table.get("name") is None:
            raise _fail(at, "field 'name' is required: it is appended to the test ids (`-{name}`)")
        budget = _positive(table, "n_tokens", at, None)
        table.pop("n_tokens", None)
        entries.append(DatasetEntry(_dataset(table, base_dir, at), budget))
    names = [e.dataset.key for e in entries]
    for e in entries:
        if not _SLUG.match(e.dataset.key):
            raise _fail(where, f"dataset name {e.dataset.key!r} must be a lowercase slug [a-z0-9._-]")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(where, f"dataset name(s) {duplicates} given twice; give each dataset its own 'name'")
    return tuple(entries)


def parse_pair(raw: Mapping[str, Any], base_dir: Path, where: str) -> Pair:
    """Turn one `[[pair]]` table into a `Pair` (the entry; `expand` gives its evaluations), or raise
    `RegistryError` naming the field."""
    pair_id = _typed(raw, "id", str, where)
    if pair_id is None:
        raise _fail(where, "missing required field 'id'")
    where = f"{where} ({pair_id})"
    if not _PAIR_ID.match(pair_id):
        raise _fail(where, "field 'id' must be a lowercase slug with '__' between base and finetune, "
                    "e.g. 'gemma-2b__python-codes' (never an HF path)")
    _check_keys(raw, _PAIR_KEYS, where)
    hook = _hook(raw, where)
    native = _table(raw, "native_sae", where, required=False)
    positive = {key: _positive(raw, key, where, _default(Pair, key)) for key in ("context_size", "n_tokens", "batch_size")}
    datasets = _datasets(raw, base_dir, where, positive["n_tokens"])
    expected = _expectation(_table(raw, "expected", where, required=False), f"{where} field 'expected'")
    sae = _sae(_table(raw, "sae", where) or {}, base_dir, f"{where} field 'sae'")
    native_sae = None if native is None else _sae(native, base_dir, f"{where} field 'native_sae'")
    names = [d.dataset.key for d in datasets]
    axes = [Axis(sae=sae, hook=hook, native_sae=native_sae, expected=expected)]
    for i, table in enumerate(_tables(raw, "axes", where)):
        at = f"{where} [[pair.axes]] #{i + 1}"
        axis = _axis(table, base_dir, at, names)
        for j, other in enumerate(axes):
            if (other.sae, other.hook) == (axis.sae, axis.hook):
                first = "the entry's own sae/hook" if j == 0 else f"[[pair.axes]] #{j}"
                raise _fail(at, f"duplicate axis: SAE {axis.sae.describe()} at {axis.hook} is already {first}")
        axes.append(axis)
    return Pair(
        id=pair_id,
        base=_model(_table(raw, "base", where) or {}, base_dir, f"{where} field 'base'"),
        finetune=_model(_table(raw, "finetune", where) or {}, base_dir, f"{where} field 'finetune'"),
        sae=sae, native_sae=native_sae, hook=hook, dataset=datasets[0].dataset,
        prepend_bos=_typed(raw, "prepend_bos", bool, where),
        seed=_typed(raw, "seed", int, where, _default(Pair, "seed")),
        outliers=_outliers(_table(raw, "outliers", where, required=False), f"{where} field 'outliers'"),
        expected=expected,
        needs_gpu=_typed(raw, "needs_gpu", bool, where, _default(Pair, "needs_gpu")),
        description=_typed(raw, "description", str, where, _default(Pair, "description")),
        axes=tuple(axes), datasets=datasets,
        **positive,
    )


def parse_registry_file(path: Path) -> tuple[Pair, ...]:
    """Parse one TOML registry file."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"registry file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RegistryError(f"{path}: not valid TOML: {err}") from err
    _check_keys(data, ("pair",), str(path))
    entries = data.get("pair", [])
    if not isinstance(entries, list):
        raise RegistryError(f"{path}: 'pair' must be an array of tables ([[pair]])")
    return tuple(replace(parse_pair(raw, path.parent, f"{path} [[pair]] #{index + 1}"), source_file=path)
                 for index, raw in enumerate(entries))


def registry_files(extra: Sequence[Path | str] = ()) -> list[Path]:
    """The committed registry, then files named in `SAETRANSFER_REGISTRY` (os.pathsep-separated), then `extra`."""
    env = [Path(p) for p in os.environ.get("SAETRANSFER_REGISTRY", "").split(os.pathsep) if p]
    return [DEFAULT_REGISTRY, *env, *(Path(p) for p in extra)]


def load_registry(files: Sequence[Path | str] | None = None) -> tuple[Pair, ...]:
    """Every evaluation (`expand`) of every entry in `files` (default: `registry_files()`); test ids must be
    unique across files."""
    pairs: list[Pair] = []
    seen: dict[str, Path | None] = {}
    for file in registry_files() if files is None else [Path(f) for f in files]:
        for pair in (p for entry in parse_registry_file(file) for p in expand(entry)):
            if pair.test_id in seen:
                raise RegistryError(
                    f"duplicate test id {pair.test_id!r} in {file} (first defined in {seen[pair.test_id]}); "
                    "give the entry another SAE name or pair id")
            seen[pair.test_id] = file
            pairs.append(pair)
    return tuple(pairs)


def get_pair(pairs: Sequence[Pair], key: str) -> Pair:
    """The pair whose id or test id is `key`; an unknown key suggests the closest ids."""
    matches = [p for p in pairs if key == p.test_id] or [p for p in pairs if key == p.id and p.primary]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UnknownPairError(f"pair id {key!r} is ambiguous; use one of {[p.test_id for p in matches]}")
    known = sorted({p.id for p in pairs} | {p.test_id for p in pairs})
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise UnknownPairError(f"unknown pair id {key!r}.{hint} Known ids: {sorted({p.id for p in pairs})}")
