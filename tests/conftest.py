"""Shared fixtures.

``one_torch_thread``: runs a test module on one torch thread (modules opt in with
``pytestmark = pytest.mark.usefixtures("one_torch_thread")``). Tiny networks run fastest on one
thread, and are immune to OpenMP stalls on a busy 2-core machine.

``data_root``: the directory with the real data sets (``LMCONV_BENCH_DATA``). Tests that need
real data skip with the reason when it is absent, unless ``LMCONV_BENCH_REQUIRE_DATA=1``
(as in CI), where they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _require_data() -> bool:
    return os.environ.get("LMCONV_BENCH_REQUIRE_DATA", "") not in ("", "0", "false", "no")


def need_path(path: Path, what: str) -> Path:
    """Return ``path`` if it exists; otherwise skip the test, or fail when data is required."""
    if path.exists():
        return path
    msg = f"{what} not found at {path}; set LMCONV_BENCH_DATA to the data directory"
    if _require_data():
        pytest.fail(msg + " (LMCONV_BENCH_REQUIRE_DATA=1)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data directory (``LMCONV_BENCH_DATA``), or skip/fail as described above."""
    env = os.environ.get("LMCONV_BENCH_DATA")
    if not env:
        if _require_data():
            pytest.fail("LMCONV_BENCH_REQUIRE_DATA=1 but LMCONV_BENCH_DATA is not set")
        pytest.skip("LMCONV_BENCH_DATA is not set; real-data tests skipped")
    return need_path(Path(env), "data directory")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Set ``torch.set_num_threads(1)`` for the module, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
