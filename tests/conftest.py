"""Shared test fixtures. Tests that need the real weights/images skip when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real ImageNet weights + labelled sample); skips when absent."""
    if not (SHARED_DATA / "weights").is_dir():
        pytest.skip(f"shared reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep every test, module- and session-scoped fixtures included, away from the user's
    cache (~/.cache/edgecnn): a stale cached baseline there would leak into the results."""
    previous = os.environ.get("EDGECNN_CACHE")
    os.environ["EDGECNN_CACHE"] = str(tmp_path_factory.getbasetemp() / "edgecnn-cache")
    yield
    if previous is None:
        os.environ.pop("EDGECNN_CACHE", None)
    else:
        os.environ["EDGECNN_CACHE"] = previous


@pytest.fixture(scope="module")
def torch_one_thread():
    """Small tensors: one torch thread avoids thread hand-off costs, worst on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _claims_timed_back_to_back(monkeypatch):
    """The searches the tests run on toy models time their final choice with back-to-back rounds:
    spreading them over CLAIM_SPREAD_S (30 s) would add that to every search test, and the pause
    after a spinning runtime (SETTLE_S) a minute over the layer probes. The spread is tested in
    test_interleave.py and test_search.py (with a small spread), the pause in test_interleave.py."""
    from edgecnn.measure import interleave, latency

    monkeypatch.setattr(interleave, "CLAIM_SPREAD_S", 0.0)
    monkeypatch.setattr(latency, "SETTLE_S", 0.0)
