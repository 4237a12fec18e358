"""Worker-to-GPU binding for `pytest -n N --gpu`, tested with fake device lists (no GPU needed)."""

from __future__ import annotations

import pytest

from saetransfer.devices import worker_gpu, worker_index


@pytest.mark.parametrize(("visible", "worker", "expected"), [
    ("0,1,2,3", "gw0", "0"),
    ("0,1,2,3", "gw3", "3"),
    ("4,5", "gw2", "4"),                      # more workers than GPUs: they take turns
    (" 2 , 7 ", "gw1", "7"),                  # spaces as users type them
    ("GPU-8f6a,GPU-11c2", "gw1", "GPU-11c2"),  # UUIDs are entries like any other
    (None, "gw5", None),                      # the caller did not choose: leave CUDA's default
])
def test_each_worker_gets_one_of_the_callers_devices(visible, worker, expected):
    assert worker_gpu(visible, worker) == expected


def test_an_empty_device_list_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(ValueError, match="lists no device"):
        worker_gpu(" , ", "gw0")


def test_only_xdist_worker_ids_are_accepted():
    assert worker_index("gw12") == 12
    with pytest.raises(ValueError, match="not a pytest-xdist worker id"):
        worker_index("master")
