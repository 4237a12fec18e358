"""Root pytest plumbing for saetransfer.

Sections:
0. Runtime checks: jaxtyping's import hook makes beartype check every saetransfer annotation, shapes included.
1. Offline by default: HF_HUB_OFFLINE is set before anything imports huggingface_hub, unless --hub.
2. Options: --gpu, --hub, --tokens, --registry, --refresh, --require-snapshots.
3. Session fixtures: device, dtype, run options, the registry.
4. Scheduling (longest work first, for xdist) and markers: `gpu` tests are skipped (not deselected) without
   --gpu, so they stay visible in -rs.

This module imports neither torch nor saetransfer at module level: jaxtyping's import hook and the
offline switch must be in place before they are first imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# 0. ---------------------------------------------------------------------------------------------
# Runtime shape checking: beartype checks every call into saetransfer against its annotations,
# jaxtyping's included (`Float[Tensor, "rows ctx"]` dims must agree within a call). The hook only sees
# modules imported after it, so it goes first, before anything imports saetransfer.
def _checked_modules() -> list[str]:
    """`saetransfer.<name>` for every module and subpackage, found without importing them."""
    package = Path(__file__).resolve().parent / "saetransfer"
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in package.glob("*/__init__.py")}
    return [f"saetransfer.{name}" for name in sorted(names)]


from jaxtyping import install_import_hook  # noqa: E402

install_import_hook(_checked_modules(), "beartype.beartype")

# 1. ---------------------------------------------------------------------------------------------
# The Hub libraries read these when first imported, so set them before any plugin or test does.
# `--hub` lifts them (the earliest hook that sees options is pytest_load_initial_conftests, which
# runs after this module is imported; we therefore look at sys.argv directly).
from saetransfer.offline import set_offline_environment  # noqa: E402 (imports only os)

if not ("PYTEST_XDIST_WORKER" in os.environ and sys.argv[:1] == ["-c"]):
    # An xdist worker's sys.argv is `-c` (execnet), not the user's, so --hub is invisible there; the
    # worker inherits the environment its controller set here before starting it: the choice made.
    set_offline_environment(allow_hub="--hub" in sys.argv)


# 2. ---------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("saetransfer")
    group.addoption("--gpu", action="store_true", help="run on CUDA in bf16 and run the `gpu` pairs "
                    "(a usage error when CUDA is absent)")
    group.addoption("--hub", action="store_true", help="allow downloads from the HuggingFace Hub "
                    "(default: offline; only local files and the HF cache)")
    group.addoption("--tokens", type=int, default=None, metavar="N",
                    help="token budget per pair, overriding the registry's n_tokens")
    group.addoption("--registry", action="append", default=[], metavar="FILE",
                    help="an extra pair registry (TOML) read after fixtures/pairs.toml; repeatable")
    group.addoption("--refresh", action="store_true", help="recompute results instead of reading the cache")
    group.addoption("--require-snapshots", action="store_true",
                    help="fail findings that have no snapshot yet (the test suite does; the evidence run "
                    "writes nothing and only lists them)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--gpu") and hasattr(config, "workerinput"):  # one GPU per xdist worker, before CUDA starts
        from saetransfer.devices import worker_gpu

        try:
            gpu = worker_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"), config.workerinput["workerid"])
        except ValueError as err:
            raise pytest.UsageError(str(err)) from err
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if config.getoption("--gpu"):
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--gpu was given but torch.cuda.is_available() is False "
                                    "(install a CUDA build of torch, see README)")
    if hasattr(config, "workerinput"):  # xdist: share the cores instead of oversubscribing them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(config.workerinput["workercount"])))
    _check_inputs(config)
    from hypothesis import settings

    # Deadlines only produce flaky, non-actionable failures here: torch's first call on a shape is
    # slow, and CI shares 2 cores. Examples stay bounded by max_examples instead.
    settings.register_profile("saetransfer", deadline=None, print_blob=True)
    settings.load_profile("saetransfer")


def _check_inputs(config: pytest.Config) -> None:
    """Bad --tokens or a broken registry file: one usage error now, not a traceback per collected module."""
    from saetransfer.registry import RegistryError, load_registry, registry_files

    tokens = config.getoption("--tokens")
    if tokens is not None:  # imported only then: saetransfer.loading pulls in torch
        from saetransfer.loading import TokenBudgetError, check_token_budget  # the CLI's rule too

        try:
            check_token_budget(tokens)
        except TokenBudgetError as err:
            raise pytest.UsageError(str(err)) from None
    try:
        load_registry(registry_files(config.getoption("--registry")))
    except RegistryError as err:
        raise pytest.UsageError(str(err)) from None


# 3. ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """`cuda` under --gpu, else `cpu` (`saetransfer.config.device_and_dtype`)."""
    from saetransfer.config import device_and_dtype

    return device_and_dtype(pytestconfig.getoption("--gpu"))[0]


@pytest.fixture(scope="session")
def dtype(pytestconfig: pytest.Config):
    """Model dtype as a torch dtype: bf16 under --gpu, fp32 on CPU (`saetransfer.config.device_and_dtype`)."""
    import torch

    from saetransfer.config import device_and_dtype

    return getattr(torch, device_and_dtype(pytestconfig.getoption("--gpu"))[1])


@pytest.fixture(scope="session")
def allow_hub(pytestconfig: pytest.Config) -> bool:
    """Whether downloads are allowed (--hub)."""
    return bool(pytestconfig.getoption("--hub"))


@pytest.fixture(scope="session")
def registry(pytestconfig: pytest.Config):
    """All registry pairs (committed file, SAETRANSFER_REGISTRY, --registry files). Read-only."""
    from saetransfer.registry import load_registry, registry_files

    return load_registry(registry_files(pytestconfig.getoption("--registry")))


# 4. ---------------------------------------------------------------------------------------------
def _schedule(items: list[pytest.Item]) -> None:
    """Longest work first, so that no worker is left with a long tail: the `slow` unit tests, then the
    findings' passes, largest first (`registry.pass_cost`), then the other tests, cross-pair findings last
    (stable within each). With `--no-loadscope-reorder` (pytest.ini) xdist hands out its groups in this
    order; its own order (by number of tests) left the zoo's largest pass for the end, the other worker
    idle. A cross-pair test reads every pair's result: scheduled early it would wait on other workers."""
    from saetransfer.registry import pass_cost

    costs: dict[str, int] = {}

    def key(item: pytest.Item) -> tuple[int, int]:
        pair = getattr(item, "callspec", None) and item.callspec.params.get("pair")
        if pair is not None:
            if pair.group_id not in costs:
                costs[pair.group_id] = pass_cost(pair)
            return 1, -costs[pair.group_id]
        if item.path.name == "test_cross_pair.py":
            return 3, 0
        return (0 if item.get_closest_marker("slow") else 2), 0

    items.sort(key=key)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _schedule(items)
    if config.getoption("--gpu"):
        return
    skip_gpu = pytest.mark.skip(reason="needs --gpu (a CUDA machine; too large for a CPU run)")
    for item in items:
        # findings skip their gpu pairs themselves (the `result` fixture), so the report lists them
        if item.get_closest_marker("gpu") and "pair" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip_gpu)
