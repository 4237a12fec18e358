"""Where sample tokens come from: a column of a local file, or a seeded stream of a Hub dataset.

Local files (parquet, JSON lines, arrow, a `save_to_disk` dir) are read whole, as a list, and the
caller permutes them. Hub datasets are streamed (shuffled with a seeded buffer), pinned to one
commit: the cached snapshot offline, the resolved commit with `allow_hub`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from saetransfer.loading.errors import DatasetFormatError, HubUnavailableError, LoadingError, MissingPathError
from saetransfer.loading.hub import commit_of, describe_path, hub_guard, offline_reason, snapshot
from saetransfer.registry import DatasetSource

SHUFFLE_BUFFER = 10_000
"""Documents held by the streaming shuffle buffer (Hub and HF-cache datasets)."""


def open_values(dataset: DatasetSource, *, seed: int, allow_hub: bool) -> tuple[Iterable[Any], str | None, bool]:
    """The column's values, their commit, and whether they are a whole local list (for the caller to
    permute) rather than an already shuffled stream."""
    if dataset.path is not None:
        return read_column(Path(dataset.path), dataset.column, dataset.split), None, True
    if dataset.hub is None:
        raise MissingPathError("dataset source names neither a Hub repo nor a local path")
    stream, revision = _stream(dataset, allow_hub=allow_hub)
    stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    column = dataset.column

    def values() -> Iterator[Any]:
        for row in stream:
            if column not in row:
                raise DatasetFormatError(f"{dataset.describe()} has no column {column!r}; columns: {sorted(row)}")
            yield row[column]

    return values(), revision, False


def _stream(dataset: DatasetSource, *, allow_hub: bool) -> tuple[Any, str | None]:
    """A streaming dataset pinned to one commit: from the HF cache offline, from the Hub with allow_hub."""
    import datasets
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    assert dataset.hub is not None
    try:
        if allow_hub:
            revision = HfApi().dataset_info(dataset.hub, revision=dataset.revision).sha
            location = dataset.hub
        else:
            folder = snapshot(dataset.hub, repo_type="dataset", revision=dataset.revision, allow_hub=False,
                              what="dataset")
            revision, location = commit_of(folder), str(folder)
        with hub_guard(allow_hub):
            stream = datasets.load_dataset(location, name=dataset.config, split=dataset.split,
                                           revision=revision if allow_hub else None, streaming=True)
    except LoadingError:
        raise
    except OfflineModeIsEnabled as err:
        raise HubUnavailableError(offline_reason(dataset.hub, allow_hub=allow_hub, what="dataset")) from err
    except HfHubHTTPError as err:
        raise HubUnavailableError(f"dataset {dataset.describe()}: {err}") from err
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise DatasetFormatError(f"dataset {dataset.describe()} (config {dataset.config!r}): {err}") from err
    return stream, revision


def read_column(path: Path, column: str, split: str = "train") -> list[Any]:
    """One column of a local parquet / json-lines / arrow file or `save_to_disk` dir, as a list.

    Raises:
        MissingPathError: the path does not exist.
        DatasetFormatError: an unsupported format, an unreadable file, or a missing column.
    """
    import pyarrow as pa

    if not path.exists():
        raise MissingPathError(f"dataset: {describe_path(path)}")
    try:
        if path.is_dir():
            return _from_saved(path, column, split)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            _has(column, names, path)
            table = pq.read_table(path, columns=[column])
        elif suffix in (".json", ".jsonl"):
            import pyarrow.json as pj

            table = pj.read_json(path)
        elif suffix == ".arrow":
            table = _read_arrow(path)
        else:
            raise DatasetFormatError(f"{path}: unsupported dataset format {suffix!r} "
                                     "(use .parquet, .jsonl/.json (JSON lines), .arrow or a save_to_disk dir)")
    except pa.ArrowInvalid as err:
        raise DatasetFormatError(f"{path}: not a readable {path.suffix} dataset: {err}") from err
    _has(column, table.column_names, path)
    return table.column(column).to_pylist()


def _read_arrow(path: Path) -> Any:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:  # `datasets` writes the stream format
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _from_saved(path: Path, column: str, split: str) -> list[Any]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path} is a directory but not a `datasets` save_to_disk dir: {err}") from err
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DatasetFormatError(f"{path} has no split {split!r}; splits: {sorted(ds)}")
        ds = ds[split]
    _has(column, ds.column_names, path)
    return list(ds.with_format(None)[column])


def _has(column: str, names: Iterable[str], path: Path) -> None:
    names = list(names)
    if column not in names:
        raise DatasetFormatError(f"{path} has no column {column!r}; columns: {names}")


def permuted(values: Iterable[Any], seed: int) -> Iterator[Any]:
    """`values` in a seeded random order."""
    items = list(values)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    return (items[i] for i in order.tolist())
