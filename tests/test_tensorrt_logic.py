"""TensorRT logic without TensorRT: build plans, applying them, trtexec commands and output,
Jetson power state, and the compile command's behaviour when TensorRT is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from edgecnn.backends.jetson import detect, parse_jetson_clocks, parse_nvpmodel
from edgecnn.backends.tensorrt import (
    TrtBuildConfig,
    apply_plan,
    config_for_onnx,
    network_creation_flags,
    plan_build,
)
from edgecnn.backends.trtexec import TrtexecTiming, parse_trtexec_output, trtexec_command
from edgecnn.errors import UserError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None

# --- build plans ---------------------------------------------------------------------------


def test_trt10_weak_typing_uses_builder_flags():
    plan = plan_build(TrtBuildConfig(trt_major=10, fp16=True, int8=True, sparse=True, workspace_mb=256))
    assert plan.network_flags == []
    assert plan.builder_flags == ["FP16", "INT8", "SPARSE_WEIGHTS"]
    assert plan.memory_pool_limits == {"WORKSPACE": 256 << 20}


def test_trt11_is_strongly_typed_and_refuses_precision_flags():
    plan = plan_build(TrtBuildConfig(trt_major=11, sparse=True))
    assert plan.network_flags == ["STRONGLY_TYPED"] and plan.builder_flags == ["SPARSE_WEIGHTS"]
    with pytest.raises(UserError, match="--precision fp16"):
        plan_build(TrtBuildConfig(trt_major=11, fp16=True))
    with pytest.raises(UserError, match="strongly typed"):
        plan_build(TrtBuildConfig(trt_major=11, strongly_typed=False))
    with pytest.raises(UserError, match="drop --fp16"):
        plan_build(TrtBuildConfig(trt_major=10, strongly_typed=True, fp16=True))


def test_dla_with_and_without_gpu_fallback():
    plan = plan_build(TrtBuildConfig(trt_major=10, fp16=True, dla_core=1))
    assert plan.default_device_type == "DLA" and plan.dla_core == 1 and "GPU_FALLBACK" in plan.builder_flags
    strict = plan_build(TrtBuildConfig(trt_major=10, fp16=True, dla_core=0, gpu_fallback=False))
    assert "GPU_FALLBACK" not in strict.builder_flags and strict.notes
    fp32_on_dla = plan_build(TrtBuildConfig(trt_major=10, dla_core=0))
    assert any("FP16/INT8 only" in note for note in fp32_on_dla.notes)
    with pytest.raises(UserError, match="DLA core"):
        plan_build(TrtBuildConfig(dla_core=-1))
    with pytest.raises(UserError, match="workspace"):
        plan_build(TrtBuildConfig(workspace_mb=0))


def _onnx(tmp_path, name, dtype="float32", qdq=False, batch="N"):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.ones((4, 3, 1, 1), dtype=dtype)
    nodes, inits = [], [numpy_helper.from_array(weight, "w")]
    source = "input"
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        source = "x16"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", [source, "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        source = "dq"
    out = "y16" if dtype == "float16" else "output"
    nodes.append(helper.make_node("Conv", [source, "w"], [out]))
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", ["y16"], ["output"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_config_follows_the_onnx_file(tmp_path):
    fp32 = config_for_onnx(_onnx(tmp_path, "a.onnx"), 10, batch=(1, 4, 8), fp16=True)
    assert fp32.input_shape == (3, 8, 8) and fp32.batch == (1, 4, 8) and fp32.strongly_typed is None
    assert plan_build(fp32).profile_shapes == {"input": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}
    typed10 = config_for_onnx(_onnx(tmp_path, "b.onnx", dtype="float16"), 10)
    assert typed10.strongly_typed is True  # TRT 10 builds an FP16 file strongly typed by default
    qdq11 = config_for_onnx(_onnx(tmp_path, "c.onnx", qdq=True, batch=1), 11, int8=True)
    assert not qdq11.int8 and qdq11.notes and qdq11.input_shape is None
    assert plan_build(qdq11).network_flags == ["STRONGLY_TYPED"]


class _Recorder:
    """Stands in for tensorrt's builder/config/profile objects, recording what is set."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs)) or self

    def __setattr__(self, name, value):
        if name == "calls":
            object.__setattr__(self, name, value)
        else:
            self.calls.append(("set " + name, value))


def _fake_trt():
    enum = lambda *names: SimpleNamespace(**{n: f"{n}" for n in names})  # noqa: E731
    return SimpleNamespace(
        __version__="10.3.0",
        BuilderFlag=enum("FP16", "INT8", "SPARSE_WEIGHTS", "GPU_FALLBACK"),
        MemoryPoolType=enum("WORKSPACE"),
        DeviceType=enum("DLA", "GPU"),
        ProfilingVerbosity=enum("DETAILED"),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
    )


def test_apply_plan_sets_the_real_api_calls(tmp_path):
    trt, builder, config = _fake_trt(), _Recorder(), _Recorder()
    cfg = TrtBuildConfig(trt_major=10, fp16=True, sparse=True, dla_core=0, workspace_mb=64,
                         timing_cache=str(tmp_path / "tc.bin"), optimization_level=4, input_shape=(3, 8, 8))
    apply_plan(trt, builder, config, plan_build(cfg))
    names = [c[0] for c in config.calls]
    assert [c[1][0] for c in config.calls if c[0] == "set_flag"] == ["FP16", "SPARSE_WEIGHTS", "GPU_FALLBACK"]
    assert ("set_memory_pool_limit", ("WORKSPACE", 64 << 20), {}) in config.calls
    assert ("set default_device_type", "DLA") in config.calls and ("set DLA_core", 0) in config.calls
    assert ("set builder_optimization_level", 4) in config.calls
    assert "add_optimization_profile" in names and "set_timing_cache" in names
    assert ("create_timing_cache", (b"",), {}) in config.calls  # no cache file yet: empty cache
    assert network_creation_flags(trt, plan_build(TrtBuildConfig(trt_major=11))) == 1 << 1


# --- trtexec ---------------------------------------------------------------------------------


def test_trtexec_command_pins_every_timing_flag():
    cfg = TrtBuildConfig(trt_major=10, fp16=True, sparse=True, dla_core=0, workspace_mb=512,
                         timing_cache="tc.bin", input_shape=(3, 224, 224), batch=(1, 8, 8))
    timing = TrtexecTiming(warmup_ms=500, duration_s=15, iterations=200, avg_runs=20, batch=8,
                           cuda_graph=True, export_times="times.json")
    args = trtexec_command("m.onnx", cfg, timing, save_engine="m.engine")
    for flag in ("--onnx=m.onnx", "--fp16", "--sparsity=enable", "--useDLACore=0", "--allowGPUFallback",
                 "--memPoolSize=workspace:512M", "--timingCacheFile=tc.bin", "--saveEngine=m.engine",
                 "--warmUp=500", "--duration=15", "--iterations=200", "--avgRuns=20", "--percentile=90,95,99",
                 "--useSpinWait", "--noDataTransfers", "--useCudaGraph", "--exportTimes=times.json",
                 "--minShapes=input:1x3x224x224", "--maxShapes=input:8x3x224x224", "--shapes=input:8x3x224x224"):
        assert flag in args, flag
    assert "--stronglyTyped" not in args and "--int8" not in args


def test_trtexec_command_trt11_and_loaded_engine():
    args = trtexec_command("m16.onnx", TrtBuildConfig(trt_major=11), TrtexecTiming(data_transfers=True))
    assert "--fp16" not in args and "--stronglyTyped" not in args and "--sparsity=disable" in args
    assert "--noDataTransfers" not in args and "--useCudaGraph" not in args
    args10 = trtexec_command("m16.onnx", TrtBuildConfig(trt_major=10, strongly_typed=True))
    assert "--stronglyTyped" in args10
    loaded = trtexec_command(None, TrtBuildConfig(trt_major=10), load_engine="m.engine")
    assert loaded[1] == "--loadEngine=m.engine" and not any(a.startswith("--sparsity") for a in loaded)
    with pytest.raises(UserError, match="--fp16"):
        trtexec_command("m.onnx", TrtBuildConfig(trt_major=11, fp16=True))


TRT10_OUTPUT = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --onnx=mobilenet_v2.onnx --fp16 --useSpinWait
[11/20/2026-10:02:11] [I] TensorRT version: 10.3.0
[11/20/2026-10:02:11] [I] Selected Device: Orin
[11/20/2026-10:02:41] [I] === Performance summary ===
[11/20/2026-10:02:41] [I] Throughput: 1043.22 qps
[11/20/2026-10:02:41] [I] Latency: min = 0.942139 ms, max = 1.41724 ms, mean = 0.957034 ms, median = 0.954346 ms, percentile(90%) = 0.962891 ms, percentile(95%) = 0.966797 ms, percentile(99%) = 0.991211 ms
[11/20/2026-10:02:41] [I] Enqueue Time: min = 0.231689 ms, max = 0.498047 ms, mean = 0.245436 ms, median = 0.242188 ms, percentile(90%) = 0.253906 ms, percentile(95%) = 0.259277 ms, percentile(99%) = 0.304688 ms
[11/20/2026-10:02:41] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[11/20/2026-10:02:41] [I] GPU Compute Time: min = 0.942139 ms, max = 1.41724 ms, mean = 0.957034 ms, median = 0.954346 ms, percentile(90%) = 0.962891 ms, percentile(95%) = 0.966797 ms, percentile(99%) = 0.991211 ms
[11/20/2026-10:02:41] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[11/20/2026-10:02:41] [I] Total Host Walltime: 10.0017 s
[11/20/2026-10:02:41] [I] Total GPU Compute Time: 9.98612 s
[11/20/2026-10:02:41] [W] * Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be under-utilized.
&&&& PASSED TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --onnx=mobilenet_v2.onnx --fp16 --useSpinWait
"""

TRT11_OUTPUT = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b4] # trtexec --onnx=mobilenet_v2_fp16.onnx --useCudaGraph
[03/02/2027-08:15:02] [I] === Performance summary ===
[03/02/2027-08:15:02] [I] Throughput: 2871.5 qps
[03/02/2027-08:15:02] [I] Latency: min = 0.338 ms, max = 0.52 ms, mean = 0.3462 ms, median = 0.3447 ms, percentile(90%) = 0.3501 ms, percentile(99%) = 0.3712 ms
[03/02/2027-08:15:02] [I] Enqueue Time: min = 0.0021 ms, max = 0.0198 ms, mean = 0.0031 ms, median = 0.003 ms, percentile(90%) = 0.0034 ms, percentile(99%) = 0.0061 ms
[03/02/2027-08:15:02] [I] GPU Compute Time: min = 0.3311 ms, max = 0.4987 ms, mean = 0.3398 ms, median = 0.3385 ms, percentile(90%) = 0.3433 ms, percentile(99%) = 0.3642 ms
[03/02/2027-08:15:02] [I] Total Host Walltime: 10.0004 s
[03/02/2027-08:15:02] [I] Total GPU Compute Time: 9.76 s
&&&& PASSED TensorRT.trtexec [TensorRT v110100] [b4] # trtexec --onnx=mobilenet_v2_fp16.onnx --useCudaGraph
"""

TRT8_OUTPUT = """\
[07/25/2022-19:02:56] [I] Latency: min = 6.0 ms, max = 9.6 ms, mean = 7.4 ms, median = 7.2 ms, percentile(99%) = 9.3 ms
[07/25/2022-19:02:56] [I] GPU Compute Time: min = 5.99756 ms, max = 9.45909 ms, mean = 7.35231 ms, median = 7.1825 ms, percentile(99%) = 9.2168 ms
&&&& FAILED TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=x.onnx
"""


def test_parse_trtexec_trt10_output():
    result = parse_trtexec_output(TRT10_OUTPUT)
    assert result["median_ms"] == 0.954346 and result["p90_ms"] == 0.962891 and result["p99_ms"] == 0.991211
    assert result["gpu_compute"]["p95"] == 0.966797 and result["latency"]["mean"] == 0.957034
    assert result["throughput_qps"] == 1043.22 and result["host_walltime_s"] == 10.0017
    assert result["trt_version"] == "10.3.0" and result["device"] == "Orin" and result["passed"] is True
    assert result["h2d"]["median"] == 0.0


def test_parse_trtexec_trt11_and_old_output():
    result = parse_trtexec_output(TRT11_OUTPUT)
    assert (result["median_ms"], result["p90_ms"], result["p99_ms"]) == (0.3385, 0.3433, 0.3642)
    assert result["trt_version"] == "11.1.0" and "p95" not in result["gpu_compute"]
    old = parse_trtexec_output(TRT8_OUTPUT)
    assert old["median_ms"] == 7.1825 and old["p90_ms"] is None and old["p99_ms"] == 9.2168
    assert old["trt_version"] == "8.2.1" and old["passed"] is False
    with pytest.raises(UserError, match="GPU Compute Time"):
        parse_trtexec_output("&&&& FAILED TensorRT.trtexec [TensorRT v100300]\n")


def test_stats_from_export_times(tmp_path):
    from edgecnn.backends.trtexec import stats_from_export_times

    records = [{"startMs": i, "endMs": i + 1, "latencyMs": 1.2, "computeMs": 1.0 + (i % 10) / 100} for i in range(100)]
    path = tmp_path / "times.json"
    path.write_text(json.dumps(records))
    stats = stats_from_export_times(path)
    assert stats["samples"] == 100 and stats["median_ms"] == pytest.approx(1.045)


def test_run_trtexec_with_a_stand_in_binary(tmp_path, monkeypatch):
    import os
    import stat

    from edgecnn.backends.trtexec import find_trtexec, run_trtexec

    (tmp_path / "out.txt").write_text(TRT10_OUTPUT)
    script = tmp_path / "trtexec"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args.txt\ncat {tmp_path}/out.txt\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    binary = find_trtexec()
    args = trtexec_command(None, TrtBuildConfig(trt_major=10), TrtexecTiming(iterations=50), load_engine="m.engine",
                           trtexec=binary)
    result = run_trtexec(args, log_path=tmp_path / "log.txt")
    assert result["median_ms"] == 0.954346 and result["command"].startswith(binary)
    assert "--loadEngine=m.engine" in (tmp_path / "args.txt").read_text()
    assert (tmp_path / "log.txt").read_text() == TRT10_OUTPUT
    (tmp_path / "out.txt").write_text("[E] Error[1]: engine deserialization failed\n")
    script.write_text(f"#!/bin/sh\ncat {tmp_path}/out.txt\nexit 1\n")
    with pytest.raises(UserError, match="deserialization failed"):
        run_trtexec(args)


# --- Jetson --------------------------------------------------------------------------------

NVPMODEL_Q = "NV Fan Mode:quiet\nNV Power Mode: 15W\n2\n"
CLOCKS_PINNED = """SOC family:tegra234  Machine:NVIDIA Jetson Orin NX
Online CPUs: 0-7
cpu0: Online=1 Governor=schedutil MinFreq=1984000 MaxFreq=1984000 CurrentFreq=1984000 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=1984000 MaxFreq=1984000 CurrentFreq=1984000 IdleStates: WFI=0 c7=0
GPU MinFreq=918000000 MaxFreq=918000000 CurrentFreq=918000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
"""
CLOCKS_DYNAMIC = CLOCKS_PINNED.replace("cpu1: Online=1 Governor=schedutil MinFreq=1984000", "cpu1: Online=1 Governor=schedutil MinFreq=729600")


def test_jetson_parsers():
    assert parse_nvpmodel(NVPMODEL_Q) == ("15W", 2)
    assert parse_jetson_clocks(CLOCKS_PINNED) is True
    assert parse_jetson_clocks(CLOCKS_DYNAMIC) is False
    assert parse_jetson_clocks("nothing useful") is None


def test_jetson_detection_and_warnings(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic, EABI: aarch64\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    outputs = {"nvpmodel": NVPMODEL_Q, "jetson_clocks": CLOCKS_DYNAMIC}
    state = detect(run=lambda cmd: outputs.get(cmd[0]), tegra_release=release, device_tree_model=model)
    assert state.is_jetson and state.nvpmodel_mode == "15W" and state.clocks_pinned is False
    assert any("jetson_clocks" in w for w in state.warnings) and any("MAXN" in w for w in state.warnings)
    outputs = {"nvpmodel": "NV Power Mode: MAXN\n0\n", "jetson_clocks": CLOCKS_PINNED}
    pinned = detect(run=lambda cmd: outputs.get(cmd[0]), tegra_release=release, device_tree_model=model)
    assert pinned.clocks_pinned is True and pinned.warnings == []
    elsewhere = detect(run=lambda cmd: None, tegra_release=tmp_path / "none", device_tree_model=tmp_path / "none")
    assert not elsewhere.is_jetson


# --- compile without TensorRT ----------------------------------------------------------------


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_compile_without_tensorrt(tmp_path):
    from edgecnn.cli import cli

    onnx_path = _onnx(tmp_path, "m.onnx")
    result = CliRunner().invoke(cli, ["compile", str(onnx_path), "--backend", "trt", "--fp16"])
    assert isinstance(result.exception, UserError)
    message = str(result.exception)
    assert "TensorRT is not installed" in message and "pypi.nvidia.com" in message and "\n" not in message
    printed = CliRunner().invoke(cli, ["compile", str(onnx_path), "--backend", "trt", "--fp16", "--print-trtexec",
                                       "--batch", "4"])
    assert printed.exit_code == 0, printed.output
    line = printed.output.strip()
    assert line.startswith("trtexec --onnx=") and "--fp16" in line and "--shapes=input:4x3x8x8" in line
    assert not Path(tmp_path / "m.engine").exists()
