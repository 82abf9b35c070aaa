"""Latency statistics, the variation warning, the timing loop and isolated measurements."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgecnn.errors import UserError
from edgecnn.measure.latency import (
    LatencyResult,
    measure_in_subprocess,
    measure_latency,
    summarize,
    time_runs,
    variation_warning,
)


def tiny_onnx(path, batch="N"):
    """Conv-Relu-GlobalAveragePool-Flatten-Gemm on 3x8x8 inputs, 5 classes (no torch)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 3, 3, 3)), ("fc_w", (5, 4)))]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_summary_statistics_on_known_timings():
    times = [0.010] * 90 + [0.020] * 9 + [0.100]  # seconds
    stats = summarize(times, batch=4)
    ms = np.asarray(times) * 1000
    assert stats.samples == 100 and stats.median_ms == pytest.approx(10.0)
    assert stats.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert stats.mean_ms == pytest.approx(ms.mean()) and stats.std_ms == pytest.approx(ms.std(ddof=1))
    assert stats.throughput_ips == pytest.approx(400.0)  # 4 images per 10 ms
    assert stats.cv == pytest.approx(ms.std(ddof=1) / ms.mean())
    with pytest.raises(UserError):
        summarize([])


def test_variation_warning_threshold():
    steady = summarize([0.010, 0.0101, 0.0099, 0.010, 0.0100])
    assert steady.cv < 0.025 and variation_warning(steady) is None
    noisy = summarize([0.010, 0.011, 0.009, 0.010, 0.0105])  # cv about 7 %
    warning = variation_warning(noisy)
    assert warning is not None and "2.5%" in warning and "median" in warning
    edge = summarize([0.0100, 0.0105, 0.0095] * 10)
    assert (variation_warning(edge, limit=edge.cv + 1e-9) is None) and variation_warning(edge, limit=edge.cv - 1e-9)


class FakeClock:
    """Each call to the timed function advances time by the next duration."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def clock(self):
        return self.now

    def run(self):
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_time_runs_warmup_by_time_then_iterations():
    fake = FakeClock([0.5, 0.2, 0.2, 0.2] + [0.01] * 100)
    times = time_runs(fake.run, warmup_s=1.0, iterations=10, clock=fake.clock)
    # warm-up: 0.5 + 0.2 + 0.2 + 0.2 = 1.1 s >= 1.0 s -> 4 calls, then exactly 10 timed calls
    assert fake.calls == 14 and len(times) == 10 and times == pytest.approx([0.01] * 10)


def test_time_runs_duration_and_bad_arguments():
    fake = FakeClock([0.1])
    times = time_runs(fake.run, warmup_s=0.0, duration_s=0.95, clock=fake.clock, warmup_runs=3)
    assert fake.calls - len(times) == 3 and len(times) == 10
    with pytest.raises(UserError, match="not both"):
        time_runs(fake.run, duration_s=1, iterations=1, clock=fake.clock)
    with pytest.raises(UserError):
        time_runs(fake.run, iterations=0, clock=fake.clock)


def test_measure_tiny_model_in_process(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx")
    result = measure_latency(path, batch=2, threads=1, warmup_s=0.05, iterations=30)
    assert result.stats.samples == 30 and result.stats.batch == 2 and result.batch == 2
    assert 0 < result.stats.min_ms <= result.median_ms <= result.p90_ms <= result.p99_ms <= result.stats.max_ms
    assert result.system["threads"] == 1 and "onnxruntime" in result.system["libraries"] and result.system["cpu"]
    assert LatencyResult.from_dict(json.loads(json.dumps(result.to_dict()))).stats == result.stats
    with pytest.raises(UserError, match="engine first"):
        measure_latency(path, backend="trt")


@pytest.mark.slow
def test_measure_in_subprocess_returns_json_result(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx")
    result = measure_in_subprocess(path, batch=3, threads=1, warmup_s=0.05, iterations=20)
    assert result.stats.samples == 20 and result.batch == 3 and result.system["usable_cpus"] >= 1
    with pytest.raises(UserError, match="fixed batch"):
        measure_in_subprocess(tiny_onnx(tmp_path / "b1.onnx", batch=1), batch=2, iterations=5, warmup_s=0)


def test_bench_command_json(tmp_path):
    from edgecnn.cli import cli

    path = tiny_onnx(tmp_path / "t.onnx")
    result = CliRunner().invoke(cli, ["bench", str(path), "--threads", "1", "--batch", "1", "--batch", "2",
                                      "--iterations", "10", "--warmup", "0.05", "--in-process", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [r["batch"] for r in payload["results"]] == [1, 2]
    assert payload["size"]["params"] == 4 * 3 * 9 + 5 * 4
    bad = CliRunner().invoke(cli, ["bench", str(path), "--duration", "1", "--iterations", "3"])
    assert isinstance(bad.exception, UserError)
