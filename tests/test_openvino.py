"""The OpenVINO targets (ov-x86, ov-x86-vnni): their runtime as a backend of the measuring side.

The runner, ``compile --backend openvino``, ``bench``, the one timer, accuracy and a compress run
take OpenVINO's CPU plugin wherever the file's target names it; ``ship`` refuses in one line.
The encodings' claims on this host's OpenVINO kernels are in test_cpu_kernels.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError

pytest.importorskip("openvino", reason="the OpenVINO targets need openvino (pip install 'edgecnn[openvino]')")


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    from edgecnn.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    return export_onnx(model, tmp_path_factory.mktemp("ov") / "small.onnx", input_shape=(1, 3, 16, 16), batch="dynamic",
                       parity=False)


def test_the_runner_computes_what_onnx_runtime_does_in_f32(small_onnx):
    from edgecnn.backends.openvino import OvRunner
    from edgecnn.backends.ort import OrtRunner

    runner = OvRunner(small_onnx, threads=1)
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(runner.run(x), OrtRunner(small_onnx, threads=1).run(x), rtol=1e-4, atol=1e-5)
    assert runner.runtime_precision() == "f32"  # never bf16 behind the file's back
    assert runner.run(x[:1]).shape == (1, 5) and len(runner._requests) == 2  # one static compile per shape
    assert runner.input_for(4).shape == (4, 3, 16, 16)
    with pytest.raises(UserError, match="does not exist"):
        OvRunner(small_onnx.with_name("missing.onnx"))


def test_the_timer_and_open_runner_take_the_openvino_backend(small_onnx):
    from edgecnn.measure.interleave import Timer
    from edgecnn.measure.latency import measure_latency, open_runner

    with Timer(threads=1, rounds=2, iterations=3, warmup_runs=1, backend="openvino") as timer:
        times = timer.time({"a": small_onnx})
    assert times["a"].stats.samples == 6
    result = measure_latency(small_onnx, backend="openvino", threads=1, warmup_s=0.0, iterations=3)
    assert result.runtime == "openvino-cpu" and result.stats.samples == 3
    with pytest.raises(UserError, match="CPU runtimes"):
        Timer(backend="trt")
    with pytest.raises(UserError, match="OpenVINO's CPU plugin takes neither"):
        open_runner(small_onnx, "openvino", opt_level="disable")


def test_compile_writes_openvinos_model_files_and_keeps_the_output_rules(small_onnx, tmp_path):
    from edgecnn.backends.openvino import OvRunner
    from edgecnn.cli import cli

    def main(args):
        return cli.main(args=args, standalone_mode=False)

    out = tmp_path / "small.xml"
    main(["compile", str(small_onnx), "--backend", "openvino", "-o", str(out)])
    assert out.is_file() and out.with_suffix(".bin").is_file()
    import openvino as ov

    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(compiled({0: x})[0], OvRunner(small_onnx).run(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="exists"):  # no --force: nothing is replaced
        main(["compile", str(small_onnx), "--backend", "openvino", "-o", str(out)])
    main(["compile", str(small_onnx), "--backend", "openvino", "-o", str(out), "--force"])  # edgecnn's own: replaced
    for args, message in ((["-o", str(tmp_path / "x.onnx")], r"\.xml file"), (["--fp16"], "OpenVINO's model files take none")):
        with pytest.raises(UserError, match=message):
            main(["compile", str(small_onnx), "--backend", "openvino", *args])


@pytest.mark.slow
def test_an_openvino_target_is_measured_in_openvino_and_not_shipped(tmp_path, monkeypatch, capsys):
    """compress with ov-x86: its rows run in OpenVINO (accuracy on its kernels where this CPU runs
    them, latency in openvino-cpu), the FP32 row stays ONNX Runtime's; eval and bench pick the
    file's runtime; ship refuses before any work, and after it."""
    from test_golden_artifacts import _inputs
    from test_measure_semantics import MEASURE, _run

    from edgecnn import cpu
    from edgecnn.cli import cli

    def main(args):
        return cli.main(args=args, standalone_mode=False)
    from edgecnn.recipe import validate
    from edgecnn.targets import TARGETS

    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    raw = {"model": {"name": "net.py:build", "weights": "weights.pth"}, "data": {"calib": "calib", "eval": "calib", "calib_images": 8},
           "stages": ["fold_bn", {"quantize": {"bits": 7}}, "export", MEASURE], "targets": ["ov-x86", "ort-x86"]}
    report = _run(raw, tmp_path / "out", monkeypatch)
    rows = {r["target"]: r for r in report["results"]}
    host = cpu.host_class()
    fits = TARGETS["ov-x86"].runs_on(host)
    assert report["cpu_accuracy"]["ov-x86"] == ("optimized" if fits else "reference")
    assert rows["ov-x86"]["runtime"] == ("openvino-cpu" if fits else None)
    assert rows["ort-x86"]["runtime"] == "onnxruntime-cpu" and rows["fp32"]["runtime"] == "onnxruntime-cpu"
    assert rows["ov-x86"]["agreement"] is not None and rows["ov-x86"]["agreement"] >= 75.0  # 7-bit, 8 images

    ov_file = tmp_path / "out" / "ov-x86" / "model.onnx"
    main(["bench", str(ov_file), "--iterations", "3", "--warmup", "0", "--json", "--no-size"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]["backend"] == "openvino"
    main(["eval", str(ov_file), "--data", "calib", "--reference", str(tmp_path / "out" / "fp32" / "model.onnx"), "--json"])
    assert '"semantics": "runtime"' in capsys.readouterr().out

    with pytest.raises(UserError, match="ship writes no app bundle for ov-x86") as refused:
        main(["ship", str(tmp_path / "out"), "--target", "ov-x86", "-o", str(tmp_path / "bundle")])
    assert "\n" not in str(refused.value) and not (tmp_path / "bundle").exists()
    with pytest.raises(UserError, match=r"stages\[4\]\.ship: ship writes no app bundle for ov-x86"):
        validate({**raw, "stages": [*raw["stages"], "ship"]}, "test")
    validate({**raw, "stages": [*raw["stages"], {"ship": {"targets": ["ort-x86"]}}]}, "test")  # the others ship


def test_search_accepts_openvino_targets_and_times_in_their_runtime():
    from edgecnn.search.run import SearchConfig

    assert SearchConfig(target="openvino").target in ("ov-x86", "ov-x86-vnni")
    with pytest.raises(ValueError, match="ov-x86"):
        SearchConfig(target="trt")


@pytest.mark.slow
def test_a_search_for_an_openvino_target_times_and_measures_in_openvino(tmp_path, monkeypatch):
    from test_search import SEARCH_RECIPE

    from edgecnn.cli import cli
    from edgecnn.measure import interleave

    backends = []
    real_load = interleave._Worker.load
    monkeypatch.setattr(interleave._Worker, "load", lambda self, model, threads, batch, backend="ort":
                        backends.append(backend) or real_load(self, model, threads, batch, backend))
    recipe = tmp_path / "search.yaml"
    recipe.write_text(SEARCH_RECIPE + "targets: [ov-x86]\n")
    out = tmp_path / "out"
    cli.main(args=["compress", "squeezenet", "--recipe", str(recipe), "-o", str(out), "--quiet"], standalone_mode=False)
    report = json.loads((out / "report.json").read_text())
    search = next(s for s in report["stages"] if s["name"] == "search")["summary"]
    assert search["final_timing"]["rounds"] == 10 and set(backends) == {"openvino"}  # probes, candidates, final timing
    rows = {r["target"]: r for r in report["results"] if r.get("checkpoint", "final") == "final"}
    assert rows["ov-x86"]["runtime"] == "openvino-cpu"


def test_a_device_runs_an_openvino_file_in_openvino_there(small_onnx, tmp_path):
    """The device agent's stream and interleaved timing take the backend (here on ``local``); an
    SSH device without openvino is told what to install."""
    from edgecnn.backends.openvino import OvRunner
    from edgecnn.devices import parse_device
    from edgecnn.measure.on_device import interleave_on

    device = parse_device("local")
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with device.stream(device.put(small_onnx), backend="openvino") as stream:
        np.testing.assert_allclose(stream.send(x), OvRunner(small_onnx).run(x), rtol=1e-5, atol=1e-6)
    rounds = interleave_on(device, {"a": str(small_onnx)}, 1, 1, 2, 2, 0, backend="openvino")
    assert len(rounds["a"]) == 2 and all(len(r) == 2 for r in rounds["a"])
    ssh = parse_device("ssh://user@127.0.0.1")
    with pytest.raises(UserError, match="openvino is missing from the device's Python"):
        ssh.require_runtime({"runtimes": {"numpy": "2", "onnxruntime": "1.20"}}, "openvino")
    ssh.require_runtime({"runtimes": {"numpy": "2", "openvino": "2025.1"}}, "openvino")
