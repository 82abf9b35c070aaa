"""The ssh:// device against a real OpenSSH server on 127.0.0.1 (tests/sshd_server.py), whose
"device Python" is a separate virtual environment with numpy and onnxruntime only (no torch,
no edgecnn): the happy path and every named fault. Skips with a reason when sshd is missing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecnn.devices import parse_device
from edgecnn.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from sshd_server import SshServer, find_sshd  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    sshd = find_sshd()
    if sshd is None or subprocess.run(["sh", "-c", "command -v ssh && command -v ssh-keygen"],
                                      capture_output=True).returncode != 0:
        pytest.skip("OpenSSH server/client not installed (apt-get install -y openssh-server openssh-client)")
    server = SshServer(tmp_path_factory.mktemp("sshd"), sshd).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def device_python(tmp_path_factory) -> str:
    """A venv without torch or edgecnn, numpy + onnxruntime at this environment's versions."""
    root = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("numpy", "onnxruntime")]
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
                           *pins], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot build the device's virtual environment: {done.stderr.strip().splitlines()[-1:]}")
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "sitecustomize.py").write_text(SLOW_FLOAT_DEVICE)
    return str(root / "bin" / "python")


# A device whose ONNX Runtime runs float models slowly: active only where the agent works in a
# cache folder holding the marker file, so the other tests see an ordinary device.
SLOW_FLOAT_DEVICE = """
import os
if os.path.exists("slow-float-models"):
    import time
    import onnxruntime
    _init, _run = onnxruntime.InferenceSession.__init__, onnxruntime.InferenceSession.run

    def __init__(self, model, *args, **kwargs):
        data = open(model, "rb").read() if isinstance(model, str) else bytes(model)
        self._slow = b"QuantizeLinear" not in data
        _init(self, model, *args, **kwargs)

    def run(self, *args, **kwargs):
        if self._slow:
            time.sleep(0.003)
        return _run(self, *args, **kwargs)

    onnxruntime.InferenceSession.__init__, onnxruntime.InferenceSession.run = __init__, run
"""


@pytest.fixture()
def ssh_env(sshd, monkeypatch):
    monkeypatch.setenv("EDGECNN_SSH_CONFIG", str(sshd.root / "ssh_config"))
    return sshd


@pytest.fixture()
def device_spec(ssh_env, device_python, tmp_path):
    return ssh_env.spec(device_python, dir=str(tmp_path / "device-cache"))


def _edgecnn(*args: str) -> subprocess.CompletedProcess:
    """The command line as a user types it (a fresh process; the device tests' ssh config inherited)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _model(path: Path, ops: int = 1) -> Path:
    """A small ONNX model: a chain of ``ops`` MatMuls on a 1x64 input (more ops: slower)."""
    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(ops):
        inits.append(helper.make_tensor(f"W{i}", TensorProto.FLOAT, [64, 64],
                                        (rng.standard_normal((64, 64)) / 8).astype(np.float32).ravel()))
        nodes.append(helper.make_node("MatMul", [name, f"W{i}"], [f"y{i}"]))
        name = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_specs_are_checked_and_quoted():
    device = parse_device("ssh://nvidia@orin.local:2222?python=/opt/py;rm -rf ~/bin/python3")
    assert (device.user, device.host, device.port) == ("nvidia", "orin.local", 2222)
    argv = device.ssh_argv(device._in_folder([device.python, "-V"]))
    assert argv[:1] == ["ssh"] and "BatchMode=yes" in argv and "StrictHostKeyChecking=no" not in " ".join(argv)
    assert argv[-2] == "orin.local" and "'/opt/py;rm -rf ~/bin/python3'" in argv[-1]
    for bad in ("ssh://-oProxyCommand=x", "ssh://a@b@c", "ssh://u:pw@host", "ssh://host:99999", "ssh://host?x=1"):
        with pytest.raises(UserError):
            parse_device(bad)


def test_probe_stage_bench_and_clean(device_spec, tmp_path):
    device = parse_device(device_spec)
    info = device.probe()
    assert info["device_kind"] == "ssh" and "onnxruntime" in info["runtimes"] and "torch" not in info["runtimes"]
    model = _model(tmp_path / "m.onnx")
    remote = device.put(model)
    folder = Path(device.folder)
    assert (folder / Path(remote).name).read_bytes() == model.read_bytes()
    device._present.clear()
    stamp = (folder / Path(remote).name).stat().st_mtime_ns
    assert device.put(model) == remote and (folder / Path(remote).name).stat().st_mtime_ns == stamp  # not re-copied

    result = _edgecnn("bench", str(model), "--device", device_spec, "--iterations", "50", "--warmup", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["devices"][0]
    assert run["device"] == device_spec and run["results"][0]["stats"]["samples"] == 50
    assert run["probe"]["runtimes"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device-cache", "m.onnx"]  # nothing written beside
    assert "removed" in device.clean() and not folder.exists()
    assert "nothing to clean" in device.clean()


def test_bench_several_devices_prints_one_table(device_spec, tmp_path):
    model = _model(tmp_path / "m.onnx")
    result = _edgecnn("bench", str(model), "--device", device_spec, "--device", "local", "--iterations", "30",
                      "--warmup", "0.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("m.onnx: ort") == 1, result.stdout
    assert "127.0.0.1" in result.stdout and "│ local" in result.stdout and "Python 3" in result.stdout


def test_eval_streams_batches_through_the_device(device_spec, tmp_path):
    from edgecnn.measure.on_device import device_predictor

    model = _model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((6, 64)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    predict, stream = device_predictor(parse_device(device_spec), model)
    with stream:
        got = np.concatenate([predict(x[:4]), predict(x[4:])])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _one_line_failure(args) -> str:
    result = _edgecnn(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_unreachable_host_is_one_line(ssh_env, device_python, tmp_path):
    spec = f"ssh://{ssh_env.user}@127.0.0.1:1?python={device_python}"
    line = _one_line_failure(["bench", str(_model(tmp_path / "m.onnx")), "--device", spec])
    assert "cannot reach 127.0.0.1:1" in line


def test_auth_failure_is_one_line(ssh_env, device_python, tmp_path, monkeypatch):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    monkeypatch.setenv("EDGECNN_SSH_CONFIG", str(ssh_env.write_client_config(tmp_path / "cfg", tmp_path / "stranger")))
    line = _one_line_failure(["bench", str(_model(tmp_path / "m.onnx")), "--device", ssh_env.spec(device_python)])
    assert "refused the login" in line and "ssh-copy-id" in line


def test_unknown_host_key_is_not_accepted(ssh_env, device_python, tmp_path, monkeypatch):
    config = ssh_env.write_client_config(tmp_path / "cfg", ssh_env.root / "user_key")
    (tmp_path / "empty_known_hosts").write_text("")
    config.write_text(config.read_text().replace(str(ssh_env.root / "known_hosts"), str(tmp_path / "empty_known_hosts")))
    monkeypatch.setenv("EDGECNN_SSH_CONFIG", str(config))
    line = _one_line_failure(["bench", str(_model(tmp_path / "m.onnx")), "--device", ssh_env.spec(device_python)])
    assert "host key" in line and (tmp_path / "empty_known_hosts").read_text() == ""


def test_missing_onnxruntime_says_what_to_install(ssh_env, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    spec = ssh_env.spec(str(bare / "bin" / "python"), dir=str(tmp_path / "c"))
    line = _one_line_failure(["bench", str(_model(tmp_path / "m.onnx")), "--device", spec])
    assert "is missing from the device's Python" in line and "-m pip install" in line


def test_read_only_cache_folder_is_one_line(ssh_env, device_python, tmp_path):
    import os

    if os.geteuid() == 0:  # root writes through permissions: a folder even root cannot create
        folder = "/sys/edgecnn-device-cache"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        folder = str(tmp_path / "ro" / "cache")
    line = _one_line_failure(["bench", str(_model(tmp_path / "m.onnx")), "--device",
                              ssh_env.spec(device_python, dir=folder)])
    assert "cannot write the cache folder" in line


def test_full_disk_is_one_line_and_leaves_no_partial_file(device_spec, tmp_path):
    import hashlib

    model = _model(tmp_path / "m.onnx")
    device = parse_device(device_spec)
    device.probe()  # stages the agent
    part = Path(device.folder) / f"{hashlib.sha256(model.read_bytes()).hexdigest()[:32]}.onnx.part"
    part.symlink_to("/dev/full")  # every write there fails with ENOSPC, as on a full disk
    with pytest.raises(UserError, match="disk is full"):
        device.put(model)
    assert not part.exists() and not part.is_symlink()
    assert not list(Path(device.folder).glob("*.onnx"))


def test_dropped_connection_is_retried_once(device_spec, ssh_env, tmp_path):
    model = _model(tmp_path / "m.onnx")
    restarted = threading.Event()

    def drop_then_restart():
        time.sleep(2.0)
        ssh_env.stop()
        ssh_env.start()
        restarted.set()

    threading.Thread(target=drop_then_restart, daemon=True).start()
    result = _edgecnn("bench", str(model), "--device", device_spec, "--duration", "4", "--warmup", "0.1", "--json")
    assert restarted.wait(15)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["devices"][0]["results"][0]["stats"]["samples"] > 10


def test_lost_connection_is_one_line_and_writes_nothing_here(device_spec, ssh_env, tmp_path):
    model = _model(tmp_path / "m.onnx")
    device = parse_device(device_spec)
    remote = device.put(model)
    threading.Timer(2.0, ssh_env.stop).start()
    try:
        with pytest.raises(UserError, match="connection dropped .* retry failed .*cannot reach"):
            device.run_agent(["latency", remote, "--duration", "5", "--warmup", "0.1"])
        with pytest.raises(UserError, match="cannot reach"):
            device.fetch(remote, tmp_path / "back.onnx")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["device-cache", "m.onnx"]
    finally:
        ssh_env.start()


def _fake_trtexec(folder: Path, python: str) -> Path:
    """A stand-in for trtexec on the device: saves an engine and prints a real 10.3 timing summary."""
    summary = (Path(__file__).parent / "data" / "trtexec" / "trtexec-10.3.0.txt").read_text()
    script = folder / "trtexec"
    script.write_text(f"#!{python}\nimport sys\nSUMMARY = {summary!r}\n"
                      "engine = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--saveEngine=')][0]\n"
                      "open(engine, 'wb').write(b'engine:' + ' '.join(sys.argv[1:]).encode())\n"
                      "sys.stdout.write(SUMMARY)\n")
    script.chmod(0o755)
    return script


def test_compile_trt_builds_on_the_device_and_brings_back_engine_log_and_timing(ssh_env, device_python, tmp_path):
    model = _model(tmp_path / "m.onnx")
    spec = ssh_env.spec(device_python, dir=str(tmp_path / "device-cache"))
    line = _one_line_failure(["compile", str(model), "--backend", "trt", "--device", spec])
    assert "trtexec is not on the device" in line and "TensorRT" in line
    fake = _fake_trtexec(tmp_path, device_python)
    result = _edgecnn("compile", str(model), "--backend", "trt", "--device", f"{spec}&trtexec={fake}", "--json")
    assert result.returncode == 0, result.stderr
    build = json.loads(result.stdout)
    assert Path(build["engine"]).read_bytes().startswith(b"engine:--onnx=")
    assert "--useSpinWait" in Path(build["engine"]).read_text()  # the pinned timing policy ran there
    assert build["timing"]["median_ms"] == 0.95 and build["device"] == f"{spec}&trtexec={fake}"
    assert Path(build["log"]).is_file() and json.loads(Path(build["timing_file"]).read_text())["engine"]


SEARCH_RECIPE = """
stages:
  - fold_bn
  - search: {max_drop: 100.0, precisions: [fp32, w7a8], max_verify: 1, sensitivity_images: 8, threads: 1}
  - export
  - measure: {latency_runs: 10, warmup: 1, warmup_seconds: 0.0}
"""
TINY_MODEL = """
import torch.nn as nn


def tiny(num_classes=10, **_):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
"""


def _tiny_search_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """A two-conv model, its weights and 40 labelled 40x40 images: a search small enough to run in seconds."""
    import torch
    from PIL import Image

    (folder / "tiny.py").write_text(TINY_MODEL)
    sys.path.insert(0, str(folder))
    try:
        from tiny import tiny
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)
    torch.save(tiny().state_dict(), folder / "tiny.pth")
    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / "data" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "data" / f"c{c}" / f"{i}.png")
    (folder / "data" / "classes.txt").write_text("".join(f"c{c} class{c}\n" for c in range(10)))
    return folder / "tiny.py", folder / "tiny.pth", folder / "data"


def test_compress_search_measures_on_the_device(device_spec, tmp_path, monkeypatch):
    """--measure-on: the search's latency table and the final timing come from the device's agent,
    and they decide: on a device where float models are slow the search picks int8 layers."""
    from edgecnn.devices.ssh import SshDevice

    calls = []
    original = SshDevice.run_agent
    monkeypatch.setattr(SshDevice, "run_agent", lambda self, args, timeout=600.0: calls.append(args[0]) or
                        original(self, args, timeout))
    from edgecnn.cli import main

    model, weights, data = _tiny_search_inputs(tmp_path)
    (tmp_path / "device-cache").mkdir()
    (tmp_path / "device-cache" / "slow-float-models").write_text("")
    (tmp_path / "search.yaml").write_text(SEARCH_RECIPE)
    out = tmp_path / "out"
    main(["compress", f"{model}:tiny", "--weights", str(weights), "--num-classes", "10", "--recipe",
          str(tmp_path / "search.yaml"), "--data", str(data), "--calib", str(data), "-o", str(out), "--quiet",
          "--measure-on", device_spec])
    assert calls[0] == "probe" and calls.count("interleave") >= 2 and "latency" in calls
    report = json.loads((out / "report.json").read_text())
    assert any(n.startswith(f"latency measured on {device_spec}") for n in report["notes"])
    assert "latency measured on ssh://" in (out / "report.md").read_text()
    search = next(s for s in report["stages"] if s["name"] == "search")["summary"]
    assert "w7a8" in {r["precision"] for r in search["chosen_layers"]}


def _bundle(tmp_path: Path) -> Path:
    """A bundle of a 3-class model on 8x8 images (edgecnn ship, as a user writes one)."""
    from onnx import numpy_helper
    from PIL import Image

    from edgecnn.export.metadata import write_metadata
    from edgecnn.preprocess import Preprocess

    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    write_metadata(model, Preprocess(input_size=8, resize=8, crop=8).to_metadata())
    onnx.save(model, str(tmp_path / "m.onnx"))
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    done = _edgecnn("ship", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "bundle"), "--golden",
                    str(tmp_path / "red.png"), "--labels", str(tmp_path / "labels.txt"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "bundle"


def test_ship_check_runs_the_golden_test_on_the_device(device_spec, device_python, tmp_path):
    bundle = _bundle(tmp_path)
    done = _edgecnn("ship", "--check", str(bundle), "--device", device_spec)
    assert done.returncode == 2 and "pillow is missing from the device's Python" in done.stderr, done.stderr
    pin = f"pillow=={importlib.metadata.version('pillow')}"
    subprocess.run([sys.executable, "-m", "pip", "--python", device_python, "install", "-q", pin], check=True)
    done = _edgecnn("ship", "--check", str(bundle), "--device", device_spec)
    assert done.returncode == 0, done.stderr
    assert "reproduces the golden top-5 from model.onnx" in done.stdout and f"checked on {device_spec}" in done.stdout


def test_eval_on_the_device_matches_eval_here(device_spec, shared_data, tmp_path):
    """Real weights and images: the device computes what this machine computes."""
    onnx_file = tmp_path / "sq.onnx"
    done = _edgecnn("export", "squeezenet1_1", "--weights", str(shared_data / "weights" / "squeezenet1_1.pth"),
                    "--batch", "dynamic", "-o", str(onnx_file))
    assert done.returncode == 0, done.stderr
    args = ["eval", str(onnx_file), "--data", str(shared_data / "imagenet-sample"), "--limit", "16", "--batch", "8",
            "--json"]
    here = _edgecnn(*args)
    there = _edgecnn(*args, "--device", device_spec, "--reference", str(onnx_file))  # the reference runs here
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    here, there = json.loads(here.stdout), json.loads(there.stdout)
    assert there["samples"] == here["samples"] == 16 and there["top1"] == here["top1"] and there["agreement"] == 1.0
    assert there["device"] == device_spec


def test_devices_file_names_an_ssh_device(tmp_path, monkeypatch):
    (tmp_path / "devices.yaml").write_text("jetson: ssh://nvidia@orin.local?python=/usr/bin/python3.10\n")
    monkeypatch.setenv("EDGECNN_DEVICES", str(tmp_path / "devices.yaml"))
    device = parse_device("jetson")
    assert device.kind == "ssh" and device.host == "orin.local" and device.python == "/usr/bin/python3.10"
    assert device.name.startswith("jetson (ssh://nvidia@orin.local")


def test_a_busy_device_is_flagged():
    from edgecnn.measure.on_device import busy_warning

    device = parse_device("ssh://pi@board")
    assert busy_warning(device, {"load_average": [3.5, 1, 1], "usable_cpus": 4}) is not None
    assert busy_warning(device, {"load_average": [0.2, 1, 1], "usable_cpus": 4}) is None
