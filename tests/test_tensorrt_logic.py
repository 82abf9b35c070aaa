"""TensorRT logic without TensorRT, checked against what each release really has.

tests/data/trt_api_manifest.json (scripts/trt_api_manifest.py, from NVIDIA's binding sources
and the tensorrt-cu12-bindings wheels) lists, per release, which TensorRT Python names edgecnn
uses exist, their enum values, and the flags each release's trtexec parses. The stand-in
``tensorrt`` module below is built from it: a name a release lacks raises AttributeError, so a
plan that uses it fails here as it would on the device.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from edgecnn.backends.jetson import detect, parse_jetson_clocks, parse_nvpmodel
from edgecnn.backends.tensorrt import (
    BuildPlan,
    TrtBuildConfig,
    apply_plan,
    build_engine,
    config_for_onnx,
    engine_input,
    network_creation_flags,
    parse_trt_version,
    plan_build,
)
from edgecnn.backends.trtexec import TrtexecTiming, parse_trtexec_output, trtexec_command
from edgecnn.errors import UserError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
DATA = Path(__file__).parent / "data"
MANIFEST = json.loads((DATA / "trt_api_manifest.json").read_text())
# manifest key -> a full version string as tensorrt.__version__ prints it
RELEASES = {"8.5": "8.5.2.2", "8.6": "8.6.2.3", "10.3": "10.3.0.30", "10.16": "10.16.1.11", "11.0": "11.0.0.114",
            "11.1": "11.1.0.106", "11.4": "11.4.0.106"}
PROPERTIES = {"default_device_type", "DLA_core", "builder_optimization_level", "profiling_verbosity", "num_errors"}


def test_manifest_covers_every_release():
    assert set(MANIFEST["versions"]) == set(RELEASES)
    for key, entry in MANIFEST["versions"].items():
        assert entry["structure_from"] and entry["trtexec"]["parsed"], key
        assert not entry["source_not_in_wheel"], key  # sources and the shipped module agree
    assert all(MANIFEST["polygraphy"]["names"].values())  # the runner API edgecnn uses exists in 0.53


# --- a tensorrt module that knows what each release has ---------------------------------------


class _Strict:
    """One TensorRT object: only the release's names exist; calls and sets are recorded."""

    def __init__(self, module, owner: str, returns=None):
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_returns", returns or {})

    def _has(self, name: str) -> bool:
        return self._module._names.get(f"{self._owner}.{name}", False)

    def __getattr__(self, name):
        if name.startswith("__") or not self._has(name):
            raise AttributeError(f"TensorRT {self._module.__version__}: {self._owner} has no attribute '{name}'")
        if name in PROPERTIES:
            return self._returns.get(name, 0)

        def call(*args, **kwargs):
            self._module.calls.append((f"{self._owner}.{name}", args, kwargs))
            made = self._returns.get(name)
            return made() if callable(made) else made

        return call

    def __setattr__(self, name, value):
        if not self._has(name) or name not in PROPERTIES:
            raise AttributeError(f"TensorRT {self._module.__version__}: {self._owner} has no property '{name}'")
        self._module.calls.append((f"set {self._owner}.{name}", value))


def stand_in_tensorrt(key: str) -> ModuleType:
    """A ``tensorrt`` module with exactly the names (and enum values) of release ``key``."""
    entry = MANIFEST["versions"][key]
    names, values = entry["names"], entry["enum_values"]
    module = ModuleType("tensorrt")
    module.__version__ = RELEASES[key]
    module._names = names
    module.calls = []
    for owner in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DeviceType", "ProfilingVerbosity"):
        if not names.get(f"tensorrt.{owner}"):
            continue
        members = {n.split(".", 1)[1]: values[n] for n, ok in names.items() if ok and n.startswith(owner + ".")}
        setattr(module, owner, enum.IntEnum(owner, members))

    class ILogger:
        def __init__(self):
            pass

    def cache():
        return _Strict(module, "ITimingCache", {"serialize": lambda: b"cache-bytes"})

    def config():
        return _Strict(module, "IBuilderConfig", {"create_timing_cache": cache})

    def Builder(logger):
        module.calls.append(("tensorrt.Builder", (), {}))
        return _Strict(module, "Builder", {
            "create_network": lambda: "network", "create_builder_config": config,
            "create_optimization_profile": lambda: _Strict(module, "IOptimizationProfile"),
            "build_serialized_network": lambda: b"engine-bytes"})

    def OnnxParser(network, logger):
        return _Strict(module, "OnnxParser", {"parse_from_file": lambda: True, "num_errors": 0})

    for name, obj in (("ILogger", ILogger), ("Builder", Builder), ("OnnxParser", OnnxParser)):
        if names.get(f"tensorrt.{name}"):
            setattr(module, name, obj)
    return module


# --- ONNX files of each kind ------------------------------------------------------------------


def _onnx(tmp_path, name, dtype="float32", qdq=False, batch="N"):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.ones((4, 3, 1, 1), dtype=dtype)
    nodes, inits = [], [numpy_helper.from_array(weight, "w")]
    source = "input"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", [source, "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        source = "dq"
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", [source], ["x16"], to=TensorProto.FLOAT16))
        source = "x16"
    out = "y16" if dtype == "float16" else "output"
    nodes.append(helper.make_node("Conv", [source, "w"], [out]))
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", ["y16"], ["output"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


KINDS = {"fp32": {}, "qdq": {"qdq": True}, "fp16": {"dtype": "float16"}, "qdq_fp16": {"qdq": True, "dtype": "float16"}}

# The plan per release and file kind, flag by flag: (network flags, builder flags).
EXPECTED = {
    "8": {"fp32": (["EXPLICIT_BATCH"], []), "qdq": (["EXPLICIT_BATCH"], ["FP16", "INT8"]),
          "fp16": (["EXPLICIT_BATCH"], ["FP16"]), "qdq_fp16": (["EXPLICIT_BATCH"], ["FP16", "INT8"])},
    "10": {"fp32": ([], []), "qdq": ([], ["FP16", "INT8"]), "fp16": (["STRONGLY_TYPED"], []),
           "qdq_fp16": (["STRONGLY_TYPED"], [])},
    "11": {"fp32": ([], []), "qdq": ([], []), "fp16": ([], []), "qdq_fp16": ([], [])},
}
# create_network's argument: 1 << enum value, with the values of that release's NvInfer.h
NETWORK_BITS = {"8": {"EXPLICIT_BATCH": 1}, "10": {"STRONGLY_TYPED": 2}, "11": {}}


def _series(key):
    return key.split(".")[0]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("key", list(RELEASES))
def test_build_plan_per_release_runs_on_that_release(key, kind, tmp_path, monkeypatch):
    """Each release's plan, asserted flag by flag, then built through a tensorrt with only its names."""
    onnx_path = _onnx(tmp_path, f"{kind}.onnx", **KINDS[kind])
    options = dict(workspace_mb=64, timing_cache=str(tmp_path / "tc.bin"), sparse=True)
    if key != "8.5":  # 8.5 has no builder_optimization_level (test_release_specific_refusals)
        options["optimization_level"] = 4
    cfg = config_for_onnx(onnx_path, RELEASES[key], batch=(1, 8, 8), **options)
    plan = plan_build(cfg)
    network, builder = EXPECTED[_series(key)][kind]
    assert plan.network_flags == network
    assert plan.builder_flags == builder + ["SPARSE_WEIGHTS"]
    assert plan.memory_pool_limits == {"WORKSPACE": 64 << 20}
    assert plan.profile_shapes == {"input": ((1, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8))}
    used = {f"NetworkDefinitionCreationFlag.{n}" for n in plan.network_flags}
    used |= {f"BuilderFlag.{n}" for n in plan.builder_flags}
    deprecated = used & set(MANIFEST["versions"][key]["deprecated"])
    # Only the weak-typing flags of 10.12+ are used deprecated, and the plan says so.
    assert deprecated <= {"BuilderFlag.FP16", "BuilderFlag.INT8"}
    assert not deprecated or any("deprecates" in n for n in plan.notes)

    trt = stand_in_tensorrt(key)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    result = build_engine(onnx_path, tmp_path / "m.engine", cfg)
    calls = trt.calls
    assert ("Builder.create_network", (sum(NETWORK_BITS[_series(key)][n] for n in network),), {}) in calls
    flags = [c[1][0] for c in calls if c[0] == "IBuilderConfig.set_flag"]
    assert [f.name for f in flags] == builder + ["SPARSE_WEIGHTS"]
    assert ("IBuilderConfig.set_memory_pool_limit", (trt.MemoryPoolType.WORKSPACE, 64 << 20), {}) in calls
    assert (("set IBuilderConfig.builder_optimization_level", 4) in calls) == (key != "8.5")
    assert ("set IBuilderConfig.profiling_verbosity", trt.ProfilingVerbosity.DETAILED) in calls
    assert ("IOptimizationProfile.set_shape", ("input", (1, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8)), {}) in calls
    assert ("IBuilderConfig.create_timing_cache", (b"",), {}) in calls
    assert (tmp_path / "m.engine").read_bytes() == b"engine-bytes" and (tmp_path / "tc.bin").read_bytes() == b"cache-bytes"
    assert result.plan["trt_version"] == key.split(".")[0] + "." + key.split(".")[1]
    assert engine_input(tmp_path / "m.engine") == {"name": "input", "opt_shape": [8, 3, 8, 8], "max_batch": 8,
                                                    "dynamic": True}


def test_dla_plan_on_every_release(monkeypatch):
    for key in RELEASES:
        plan = plan_build(TrtBuildConfig(trt_version=RELEASES[key], qdq=True, dla_core=1))
        trt = stand_in_tensorrt(key)
        apply_plan(trt, None, _Strict(trt, "IBuilderConfig"), plan)
        assert ("set IBuilderConfig.default_device_type", trt.DeviceType.DLA) in trt.calls
        assert ("set IBuilderConfig.DLA_core", 1) in trt.calls
        assert plan.builder_flags[-1] == "GPU_FALLBACK"


def _missing(key: str) -> list[str]:
    names = MANIFEST["versions"][key]["names"]
    return [n for n, ok in names.items() if not ok and n.split(".")[0] in
            ("BuilderFlag", "NetworkDefinitionCreationFlag", "IBuilderConfig")]


@pytest.mark.parametrize("key", list(RELEASES))
def test_a_plan_using_a_missing_name_fails(key):
    """The stand-in is not permissive: every name the release lacks makes its plan fail."""
    missing = _missing(key)
    assert missing or key.startswith("10.")  # 8.x lack STRONGLY_TYPED, 11.x FP16/INT8/EXPLICIT_BATCH
    for name in missing:
        owner, member = name.split(".")
        plan = BuildPlan()
        if owner == "BuilderFlag":
            plan.builder_flags = [member]
        elif owner == "NetworkDefinitionCreationFlag":
            plan.network_flags = [member]
        elif member == "builder_optimization_level":
            plan.optimization_level = 3
        else:
            continue
        trt = stand_in_tensorrt(key)
        with pytest.raises((AttributeError, UserError)):
            network_creation_flags(trt, plan)
            apply_plan(trt, None, _Strict(trt, "IBuilderConfig"), plan)


def test_release_specific_refusals():
    with pytest.raises(UserError, match="no builder optimization level"):
        plan_build(TrtBuildConfig(trt_version="8.5.2", optimization_level=3))
    with pytest.raises(UserError, match="no strongly typed"):
        plan_build(TrtBuildConfig(trt_version="8.6.1", strongly_typed=True))
    with pytest.raises(UserError, match="--precision fp16"):
        plan_build(TrtBuildConfig(trt_version="11.0", fp16=True))
    with pytest.raises(UserError, match="strongly typed"):
        plan_build(TrtBuildConfig(trt_version="11.4", strongly_typed=False))
    with pytest.raises(UserError, match="drop --fp16"):
        plan_build(TrtBuildConfig(trt_version="10.3", strongly_typed=True, fp16=True))
    for bad in ("8.4.3", "9.2", "12.0", "8", "ten"):
        with pytest.raises(UserError):
            parse_trt_version(bad)
    assert parse_trt_version("10.3.0.30") == (10, 3) and parse_trt_version("11") == (11, 0)
    # 11.x: a typed file's own precision wins over --fp16 (a note says so); the rest of a Q/DQ file is FP32
    note = plan_build(TrtBuildConfig(trt_version="11.1", qdq=True, fp16=True)).notes
    assert any("ignored" in n for n in note) and any("run in FP32" in n for n in note)
    # --no-fp16 keeps the float rest of a Q/DQ file in FP32 on 8.x/10.x
    assert plan_build(TrtBuildConfig(trt_version="10.3", qdq=True, fp16=False)).builder_flags == ["INT8"]
    assert plan_build(TrtBuildConfig(trt_version="10.3", qdq=True, strongly_typed=True)).network_flags == ["STRONGLY_TYPED"]


# --- trtexec -----------------------------------------------------------------------------------

# The timing policy per release: GPU compute time, no transfers, no CUDA graph, spin-wait, 1 stream.
POLICY_FLAGS = {
    "8.5": ["--streams=1", "--useSpinWait", "--noDataTransfers"],
    "8.6": ["--infStreams=1", "--useSpinWait", "--noDataTransfers"],
    "10": ["--infStreams=1", "--useSpinWait", "--noDataTransfers"],
    "11": ["--infStreams=1", "--noCudaGraph"],
}
BUILD_FLAGS = {  # per series and file kind
    "8": {"fp32": [], "qdq": ["--fp16", "--int8"], "fp16": ["--fp16"], "qdq_fp16": ["--fp16", "--int8"]},
    "10": {"fp32": [], "qdq": ["--fp16", "--int8"], "fp16": ["--stronglyTyped"], "qdq_fp16": ["--stronglyTyped"]},
    "11": {"fp32": [], "qdq": [], "fp16": [], "qdq_fp16": []},
}


def _policy(key):
    return POLICY_FLAGS.get(key, POLICY_FLAGS.get(_series(key)))


def _check_flags(key: str, args: list[str]):
    """Every flag is one that release's trtexec parses and none is a deprecated no-op."""
    facts = MANIFEST["versions"][key]["trtexec"]
    for arg in args[1:]:
        flag = arg[2:].split("=", 1)[0]
        assert flag in facts["parsed"], f"trtexec {key} has no --{flag}"
        assert flag not in facts["deprecated_noop"], f"--{flag} is a no-op in trtexec {key}"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("key", list(RELEASES))
def test_trtexec_build_and_time_line_per_release(key, kind, tmp_path):
    cfg = config_for_onnx(_onnx(tmp_path, "m.onnx", **KINDS[kind]), RELEASES[key], batch=(1, 8, 8),
                          workspace_mb=512, timing_cache="tc.bin")
    args = trtexec_command("m.onnx", cfg, TrtexecTiming(batch=8), save_engine="m.engine")
    expected = (["trtexec", "--onnx=m.onnx"] + BUILD_FLAGS[_series(key)][kind] + [
        "--sparsity=disable", "--memPoolSize=workspace:512", "--timingCacheFile=tc.bin", "--profilingVerbosity=detailed",
        "--minShapes=input:1x3x8x8", "--optShapes=input:8x3x8x8", "--maxShapes=input:8x3x8x8", "--saveEngine=m.engine",
        "--shapes=input:8x3x8x8", "--warmUp=1000", "--duration=10", "--iterations=100", "--avgRuns=10",
        "--percentile=90,95,99"] + _policy(key))
    assert args == expected
    _check_flags(key, args)


@pytest.mark.parametrize("key", list(RELEASES))
def test_trtexec_other_timing_choices_per_release(key):
    """CUDA graphs, blocking sync and transfers, when asked, are spelled as each release needs."""
    timing = TrtexecTiming(cuda_graph=True, spin_wait=False, data_transfers=True, export_times="t.json",
                           percentiles=(50, 99.9))
    args = trtexec_command(None, TrtBuildConfig(trt_version=RELEASES[key]), timing, load_engine="m.engine")
    tail = args[args.index("--avgRuns=10") + 1:]
    streams = "--streams=1" if key == "8.5" else "--infStreams=1"
    if key.startswith("11"):
        assert tail == ["--percentile=50,99.9", streams, "--noSpinWait", "--includeDataTransfers", "--exportTimes=t.json"]
    else:
        assert tail == ["--percentile=50,99.9", streams, "--useCudaGraph", "--exportTimes=t.json"]
    _check_flags(key, args)


def test_flag_check_catches_a_wrong_release_flag():
    with pytest.raises(AssertionError, match="no-op"):
        _check_flags("11.0", ["trtexec", "--useSpinWait"])
    with pytest.raises(AssertionError, match="no --builderOptimizationLevel"):
        _check_flags("8.5", ["trtexec", "--builderOptimizationLevel=3"])


def test_bench_of_a_loaded_dynamic_engine_times_the_asked_batch(tmp_path):
    info = {"name": "images", "opt_shape": [8, 3, 224, 224], "max_batch": 8, "dynamic": True}
    args = trtexec_command(None, TrtBuildConfig(trt_version="10.3"), TrtexecTiming(batch=8), load_engine="m.engine",
                           engine_input=info)
    assert "--shapes=images:8x3x224x224" in args
    one = trtexec_command(None, TrtBuildConfig(trt_version="10.3"), TrtexecTiming(batch=1), load_engine="m.engine",
                          engine_input=info)
    assert "--shapes=images:1x3x224x224" in one
    with pytest.raises(UserError, match="above the engine's maximum"):
        trtexec_command(None, TrtBuildConfig(trt_version="10.3"), TrtexecTiming(batch=16), load_engine="m.engine",
                        engine_input=info)
    with pytest.raises(UserError, match="static batch"):
        trtexec_command(None, TrtBuildConfig(trt_version="10.3"), TrtexecTiming(batch=8), load_engine="m.engine",
                        engine_input={"name": "input", "opt_shape": None, "dynamic": False})
    with pytest.raises(UserError, match="cannot tell the input"):
        trtexec_command(None, TrtBuildConfig(trt_version="10.3"), TrtexecTiming(batch=8), load_engine="m.engine")


# --- trtexec output, in each release's format -----------------------------------------------------

FIXTURES = sorted((DATA / "trtexec").glob("trtexec-*.txt"))


def test_fixtures_cover_the_releases():
    assert [p.stem.split("-", 1)[1] for p in FIXTURES] == ["10.16", "10.3.0", "11.1", "8.5.3", "8.6.1"]
    for path in FIXTURES:
        assert "NVIDIA/TensorRT tag" in path.read_text().splitlines()[0]


def _summary_numbers(text: str, label: str) -> list[float]:
    import re

    line = next(line for line in text.splitlines() if f"] {label}: min = " in line)
    return [float(v) for v in re.findall(r"= ([\d.e+-]+) ms", line)]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_parse_every_statistic(path):
    text = path.read_text()
    result = parse_trtexec_output(text)
    tag_version = path.stem.split("-", 1)[1]
    assert result["trt_version"].startswith(tag_version.rsplit(".0", 1)[0] if tag_version.count(".") == 2 else tag_version)
    assert result["passed"] is True and result["device"]
    percentiles = [p for p in text.split("--percentile=", 1)[1].split()[0].split(",")]
    for label, key in (("Latency", "latency"), ("Enqueue Time", "enqueue"), ("H2D Latency", "h2d"),
                       ("GPU Compute Time", "gpu_compute"), ("D2H Latency", "d2h")):
        stats = result[key]
        assert list(stats) == ["min", "max", "mean", "median"] + [f"p{float(p):g}" for p in percentiles]
        assert list(stats.values()) == _summary_numbers(text, label)
    assert result["h2d"]["max"] == 0 and result["d2h"]["max"] == 0  # transfers excluded by the policy
    assert result["median_ms"] == result["gpu_compute"]["median"] and result["mean_ms"] == result["gpu_compute"]["mean"]
    assert result["throughput_qps"] > 0 and result["host_walltime_s"] == 10.0021
    assert result["total_gpu_compute_s"] > 0 and result["timed_queries"] > 0 and result["timed_s"] == 10.0021
    assert result["warmup_queries"] > 0 and result["warmup_ms"] == 1000
    assert len(result["trace_averages"]) == 3 and result["trace_averages"][0]["runs"] == 10
    with pytest.raises(UserError, match="GPU Compute Time"):
        parse_trtexec_output(text.replace("GPU Compute Time: min", "GPU Compute Time:"))


def test_version_codes_of_each_release():
    from edgecnn.backends.trtexec import _version_from_code

    assert _version_from_code(8503) == "8.5.3" and _version_from_code(8601) == "8.6.1"
    assert _version_from_code(100300) == "10.3.0" and _version_from_code(101600) == "10.16.0"
    assert _version_from_code(110100) == "11.1.0"


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

    sample = (DATA / "trtexec" / "trtexec-10.3.0.txt").read_text()
    (tmp_path / "out.txt").write_text(sample)
    script = tmp_path / "trtexec"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args.txt\ncat {tmp_path}/out.txt\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    binary = find_trtexec()
    args = trtexec_command(None, TrtBuildConfig(trt_version="10.3"), TrtexecTiming(iterations=50),
                           load_engine="m.engine", trtexec=binary)
    result = run_trtexec(args, log_path=tmp_path / "log.txt")
    assert result["median_ms"] == parse_trtexec_output(sample)["median_ms"] and result["command"].startswith(binary)
    assert "--loadEngine=m.engine" in (tmp_path / "args.txt").read_text()
    assert (tmp_path / "log.txt").read_text() == sample
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
