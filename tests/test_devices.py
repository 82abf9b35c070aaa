"""Devices: the registry, specs, and the agent protocol every kind shares (run on ``local``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecnn.devices import DEVICE_KINDS, device_kinds, parse_device
from edgecnn.devices.agent_zip import agent_bytes, agent_zip
from edgecnn.errors import UserError


def _matmul_model(path):
    """y = x @ W: a model whose answer is known exactly."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], w.ravel())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return w


@pytest.mark.parametrize("kind", device_kinds())
def test_every_kind_says_how_it_is_written(kind):
    entry = DEVICE_KINDS[kind]
    assert entry.name == kind and entry.spec_help
    assert entry.measures_latency or entry.why_no_latency, "a kind without latency says why"


def test_local_is_the_default_and_bad_specs_are_one_line():
    assert parse_device(None).kind == "local" and parse_device("local").kind == "local"
    with pytest.raises(UserError, match="is not a device"):
        parse_device("nonsense://x")


def test_devices_file_names_a_device(tmp_path, monkeypatch):
    (tmp_path / "devices.yaml").write_text("bench-box: local\n")
    monkeypatch.setenv("EDGECNN_DEVICES", str(tmp_path / "devices.yaml"))
    device = parse_device("bench-box")
    assert device.kind == "local" and device.name == "bench-box (local)"
    (tmp_path / "devices.yaml").write_text("- not a mapping\n")
    with pytest.raises(UserError, match="should map names"):
        parse_device("bench-box")


def test_local_probe_describes_the_machine():
    info = parse_device("local").probe()
    assert info["device_kind"] == "local" and info["usable_cpus"] >= 1
    assert "onnxruntime" in info["runtimes"] and isinstance(info["cpu_flags"], list)


def test_stream_answers_each_batch_with_the_models_output(tmp_path):
    w = _matmul_model(tmp_path / "m.onnx")
    device = parse_device("local")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with device.stream(device.put(tmp_path / "m.onnx")) as stream:
        for batch in (x[:2], x[2:]):
            np.testing.assert_allclose(stream.send(batch), batch @ w, rtol=1e-6)


def test_a_failing_stream_is_one_line(tmp_path):
    device = parse_device("local")
    with pytest.raises(UserError, match="local: .*does not exist"):
        with device.stream(str(tmp_path / "missing.onnx")) as stream:
            stream.send(np.zeros((1, 4), np.float32))


def test_agent_zip_is_deterministic_and_runs_as_one_file(tmp_path):
    import subprocess
    import sys

    assert agent_bytes() == agent_bytes()
    path = agent_zip(tmp_path)
    assert agent_zip(tmp_path) == path and path.name.startswith("edgecnn-agent-")
    # -I: isolated mode, no user site and no PYTHONPATH; -S would also drop site-packages (numpy).
    done = subprocess.run([sys.executable, "-I", str(path), "probe"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    from edgecnn import cpu

    probed = json.loads(done.stdout)  # the standalone agent reads the CPU exactly as edgecnn does
    assert probed["cpu_flags"] == cpu.cpu_flags() and probed["cpu_class"] == cpu.host_class()
