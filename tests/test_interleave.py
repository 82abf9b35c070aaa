"""The one timer (edgecnn.measure.interleave): one process per model, interleaved rounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.measure.interleave import Timer


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from edgecnn.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("interleave")
    paths = {}
    for name, width in (("small", 4), ("large", 64)):
        model = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, width, 3)).eval()
        paths[name] = export_onnx(model, folder / f"{name}.onnx", input_shape=(1, 3, 32, 32), parity=False)
    return paths


def test_every_model_gets_one_median_per_round_from_its_own_process(two_models):
    with Timer(threads=1, rounds=3, iterations=5, warmup_runs=1) as timer:
        times = timer.time(two_models)
        pids = {w.process.pid for w in timer.workers}
        assert len(pids) == 2  # one process per model
        again = timer.time({"large": two_models["large"]})  # the worker holding it is reused
        assert {w.process.pid for w in timer.workers} == pids
    assert set(times) == {"small", "large"}
    for timing in times.values():
        assert len(timing.round_medians_ms) == 3 and timing.stats.samples == 15
        assert min(timing.round_medians_ms) <= timing.median_ms <= max(timing.round_medians_ms)
    assert again["large"].stats.samples == 15
    assert all(w.process.poll() is not None for w in timer.workers) or not timer.workers


def test_another_runtime_is_timed_through_its_opener(two_models):
    from edgecnn.measure.interleave import Engine

    engine = Engine("edgecnn.backends.ort:OrtRunner", (("path", str(two_models["small"])),), (1, 3, 32, 32))
    with Timer(threads=1, rounds=2, iterations=3, warmup_runs=1) as timer:
        times = timer.time({"onnx": two_models["small"], "engine": engine})
    assert times["engine"].stats.samples == 6 and times["engine"].median_ms > 0
    with pytest.raises(UserError, match="cannot open engine"):
        with Timer() as timer:
            timer.time({"x": Engine("edgecnn.no_such_module:Runner", (), (1, 3, 8, 8))})


def test_the_model_after_a_spinning_runtime_waits_for_its_threads_to_settle(two_models):
    """ONNX Runtime's threads spin on after a run: the next model waits SETTLE_S, every switch."""
    from edgecnn.measure import latency

    slept = []
    with Timer(threads=1, rounds=2, iterations=2, warmup_runs=1, settle_s=0.05, sleep=slept.append) as timer:
        timer.time(two_models)
        assert slept == [0.05] * 3  # small | large, small | large: every call but the first
        slept.clear()
        timer.time({"small": two_models["small"]})
        assert slept == []  # one model: no neighbour to wait for
    assert Timer().settle_s == latency.SETTLE_S  # conftest sets it to 0 for the toy searches


def test_a_runtime_that_settles_at_once_is_not_waited_for(two_models):
    pytest.importorskip("openvino")
    slept = []
    with Timer(threads=1, rounds=2, iterations=2, warmup_runs=1, backend="openvino", settle_s=0.05, sleep=slept.append) as timer:
        timer.time(two_models)
    assert slept == []


def test_the_device_agent_waits_as_the_timer_does(two_models, monkeypatch):
    import time

    from edgecnn.measure import agent, latency

    monkeypatch.setattr(latency, "SETTLE_S", 0.05)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    times = agent.interleave({k: str(v) for k, v in two_models.items()}, 1, 1, rounds=2, iters=2, warmup=1)
    assert slept == [0.05] * 3 and all(len(r) == 2 for r in times.values())


def test_a_missing_or_broken_file_is_one_line(tmp_path, two_models):
    with pytest.raises(UserError, match="does not exist"):
        with Timer() as timer:
            timer.time({"x": tmp_path / "missing.onnx"})
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(UserError, match="cannot load"):
        with Timer() as timer:
            timer.time({"x": broken})


def test_rounds_of_a_claim_are_spread_over_the_protocols_seconds(two_models):
    import time

    from edgecnn.measure import interleave

    with Timer(threads=1, rounds=2, iterations=2, warmup_runs=1) as timer:
        began = time.perf_counter()
        spread = timer.time(two_models, rounds=3, spread_s=1.0)
        took = time.perf_counter() - began
        claim = timer.time_claim({"small": two_models["small"]}, spread_s=0.0)
        with pytest.raises(UserError, match="spread"):
            timer.time(two_models, spread_s=-1.0)
    for timing in spread.values():  # three rounds, the last starting a second after the first
        assert len(timing.round_medians_ms) == 3 and 1.0 <= timing.window_s <= took
        assert timing.to_dict()["window_s"] == round(timing.window_s, 1)
    assert len(claim["small"].round_medians_ms) == interleave.CLAIM_ROUNDS


def test_paced_rounds_start_evenly_over_the_spread_and_never_make_up_for_a_slow_round():
    from edgecnn.measure.latency import paced_rounds

    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    starts = []
    for k in paced_rounds(4, 3.0, clock=lambda: now[0], sleep=sleep):
        starts.append(now[0])
        now[0] += 0.25 if k != 1 else 2.5  # round 1 overruns the next start
    assert starts == [0.0, 1.0, 3.5, 3.75] and slept == [0.75]
    now[0], slept[:] = 0.0, []
    assert list(paced_rounds(3, 0.0, clock=lambda: now[0], sleep=sleep)) == [0, 1, 2] and slept == []
    with pytest.raises(UserError):
        list(paced_rounds(0, 1.0))
