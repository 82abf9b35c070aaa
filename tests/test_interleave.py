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


def test_a_missing_or_broken_file_is_one_line(tmp_path, two_models):
    with pytest.raises(UserError, match="does not exist"):
        with Timer() as timer:
            timer.time({"x": tmp_path / "missing.onnx"})
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(UserError, match="cannot load"):
        with Timer() as timer:
            timer.time({"x": broken})
