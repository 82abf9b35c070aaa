"""qemu-arm: the real aarch64 ONNX Runtime kernels on emulated ARM CPUs (numerics, never latency).

The fast tests check specs, levels, refusals and the environment's pieces without running
anything emulated. The slow ones run ``ort-arm`` artifacts of SqueezeNet 1.1 and MobileNetV2
(real weights from ../shared) and ShuffleNetV2 (random weights) at three CPU levels (NEON,
dot product, I8MM/SVE) and check agreement with reference semantics. They skip when qemu-user
is missing, unless EDGECNN_REQUIRE_QEMU=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecnn.devices import parse_device
from edgecnn.devices import qemu_env
from edgecnn.errors import UserError

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("rpi4", "orin", "max")  # ARMv8.0 NEON; dot product (A78AE id); I8MM/SVE
IMAGES = 4


def _edgecnn(capsys, *args) -> tuple[int, str, str]:
    """``edgecnn ARGS`` as typed: (exit code, stdout, stderr)."""
    from edgecnn.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_specs_name_a_level_and_bad_levels_are_one_line():
    assert parse_device("qemu-arm").level.name == qemu_env.DEFAULT_LEVEL
    assert parse_device("qemu-arm:cortex-a76").level.name == "rpi5"
    assert parse_device("qemu-arm:orin").level.qemu_cpu == "cortex-a76"
    with pytest.raises(UserError, match=r"unknown ARM level 'a53'; write qemu-arm:LEVEL with LEVEL one of rpi4, "):
        parse_device("qemu-arm:a53")


def test_latency_under_emulation_is_refused_with_the_reason():
    with pytest.raises(UserError, match="qemu-arm:rpi5: no latency here .*emulated ARM CPU runs 50-150x slower"):
        parse_device("qemu-arm:rpi5").require_latency()


@pytest.mark.parametrize("level", sorted(qemu_env.ARM_LEVELS))
def test_fake_cpuinfo_lists_every_cpu_with_an_arm_core(level):
    text = qemu_env.ARM_LEVELS[level].cpuinfo(3)
    assert text.count("processor\t:") == 3 and "processor\t: 2\n" in text
    assert text.count("CPU implementer\t: 0x41") == 3 and "asimd" in text


def test_levels_differ_in_the_instructions_the_kernels_may_use():
    features = {name: set(level.features.split()) for name, level in qemu_env.ARM_LEVELS.items()}
    assert "asimddp" not in features["rpi4"] and "asimddp" in features["rpi5"]
    assert {"i8mm", "sve"} <= features["max"]
    assert qemu_env.ARM_LEVELS["orin"].part == "0xd42"  # Cortex-A78AE


def test_missing_qemu_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(qemu_env.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"qemu-aarch64 not found: install qemu-user \(sudo apt-get install qemu-user\)"):
        qemu_env.ensure_env(tmp_path)
    assert not any(tmp_path.iterdir()) or not (tmp_path / "qemu-arm").exists() or not any((tmp_path / "qemu-arm").iterdir())


def test_missing_arm64_architecture_names_the_dpkg_command(monkeypatch):
    monkeypatch.setattr(qemu_env.shutil, "which", lambda name: f"/usr/bin/{name}")

    class Done:
        stdout = "i386\n"

    monkeypatch.setattr(qemu_env.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(UserError, match=r"dpkg --add-architecture arm64 && sudo apt-get update"):
        qemu_env.check_host()


def test_emulated_python_sees_none_of_the_hosts_python_paths(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/x86/site-packages")
    env = parse_device("qemu-arm").agent_env()
    assert "PYTHONPATH" not in env and env.get("PATH") == os.environ.get("PATH")


def test_eval_on_a_device_takes_an_onnx_file(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    code, _, err = _edgecnn(capsys, "eval", "squeezenet1_1", "--data", tmp_path, "--device", "qemu-arm")
    assert code == 2 and "runs ONNX files; export squeezenet1_1 first" in err and len(err.splitlines()) == 1


def test_ship_check_on_a_device_refuses_python_too(tmp_path, capsys):
    code, _, err = _edgecnn(capsys, "ship", "--check", tmp_path, "--device", "qemu-arm", "--python", "python3")
    assert code == 2 and "give --python or --device, not both" in err


# --- on the emulated kernels (slow) ----------------------------------------------------------------


def _tiny(path: Path, integer: bool) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Relu", ["input"], ["logits"])]
    inits = []
    if integer:
        inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_golden_kernels_are_the_targets_own_where_the_host_differs(tmp_path, monkeypatch):
    from edgecnn import cpu
    from edgecnn.ship.golden import target_kernels
    from edgecnn.targets import TARGETS

    monkeypatch.setattr(cpu, "host_class", lambda: "x86-avx2")
    int8, fp32 = _tiny(tmp_path / "q.onnx", True), _tiny(tmp_path / "f.onnx", False)
    assert [d.name for d in target_kernels("ort-arm", int8)] == ["qemu-arm:rpi4", "qemu-arm:rpi5", "qemu-arm:max"]
    assert target_kernels("ort-arm", fp32) is None  # float kernels: the host's answer is the app's within tolerance
    assert target_kernels("ort-x86", int8) is None  # the host is of the target's class
    assert target_kernels("trt", int8) is None  # TensorRT goldens stay reference semantics
    monkeypatch.setattr(cpu, "host_class", lambda: "arm64-dot")
    assert target_kernels("ort-arm", int8) is None
    monkeypatch.setitem(TARGETS, "ort-x86-vnni", TARGETS["ort-x86-vnni"])
    with pytest.raises(UserError, match="must come from x86-vnni kernels, which this arm64-dot CPU does not run"):
        target_kernels("ort-x86-vnni", int8)


@pytest.fixture(scope="session")
def emulation():
    """The emulated environment, built once per test session in the test cache."""
    if shutil.which(qemu_env.QEMU) is None:
        if os.environ.get("EDGECNN_REQUIRE_QEMU") == "1":
            pytest.fail("EDGECNN_REQUIRE_QEMU=1 but qemu-aarch64 is missing: apt-get install qemu-user")
        pytest.skip("qemu-user is not installed (apt-get install qemu-user): no ARM kernels to run")
    return qemu_env.ensure_env()


@pytest.fixture(scope="session")
def arm_artifacts(shared_data, emulation, tmp_path_factory):
    """ort-arm (S8S8, full 8-bit weights) artifacts, built once."""
    sys.path.insert(0, str(REPO / "bench"))
    import arm_kernels

    folder = tmp_path_factory.mktemp("arm")
    return {model: arm_kernels.build_artifact(model, "S8S8", 8, folder / f"{model}.onnx",
                                              shared_data / "distill" / "imagenette", shared=shared_data)
            for model in ("squeezenet1_1", "mobilenet_v2", "shufflenet_v2_x0_5")}


def arm_logits_agree(ref, got) -> str:
    """'' when the ARM kernels' logits ``got`` agree with reference semantics ``ref``: every logit
    within 8 % of the largest |logit| (rounding of fused requantization; a saturating kernel is off
    by a third or more). Then top-1 is the same on every image whose reference top-1 leads its
    top-2 by more than twice the difference; a closer tie may flip on any rounding."""
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    return f"max abs logit difference {diff:.3g} over 8 % of the logit scale {scale:.3g}" if diff > 0.08 * scale else ""


@pytest.mark.slow
@pytest.mark.parametrize("model", ["squeezenet1_1", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_ort_arm_artifact_agrees_with_reference_semantics_on_arm_kernels(model, arm_artifacts, shared_data):
    from edgecnn.data.images import ImageFolder, iter_batches
    from edgecnn.measure.accuracy import onnx_predictor, onnx_preprocess, subset

    path = arm_artifacts[model]
    images, _ = next(iter_batches(subset(ImageFolder(shared_data / "imagenet-sample"), IMAGES),
                                  onnx_preprocess(path), IMAGES, workers=1))
    reference = onnx_predictor(path, threads=1, opt_level="disable")[0](images)
    for level in LEVELS:
        device = parse_device(f"qemu-arm:{level}")
        with device.stream(device.put(path)) as stream:
            got = stream.send(images)
        assert got.shape == reference.shape
        assert arm_logits_agree(reference, got) == "", (model, level)


def test_the_agreement_rule_catches_a_saturating_kernel():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 1000)).astype(np.float32) * 5
    assert arm_logits_agree(ref, ref + 0.01) == ""
    assert "over 8 %" in arm_logits_agree(ref, ref + rng.standard_normal(ref.shape).astype(np.float32) * 3)
    wrong = ref.copy()
    wrong[0, ref[0].argmax()] = ref[0].min() - 1  # one image's top-1 answer gone
    assert "over 8 %" in arm_logits_agree(ref, wrong)


@pytest.mark.slow
def test_eval_cli_reports_agreement_on_the_emulated_cpu(arm_artifacts, shared_data, capsys):
    code, out, err = _edgecnn(capsys, "eval", arm_artifacts["squeezenet1_1"], "--data", shared_data / "imagenet-sample",
                              "--limit", "4", "--device", "qemu-arm:rpi5", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["device"] == "qemu-arm:rpi5" and report["reference"] == "reference semantics"
    assert report["agreement"] == 1.0 and report["semantics"] == "runtime"


SMALL_INT8 = """
data:
  embedded: {input_size: 32, epochs: 2, max_train_images: 300, max_test_images: 60}
  calib_images: 16
  batch_size: 16
stages:
  - fold_bn
  - quantize: {bits: 8, calibrator: max}
  - export
"""


@pytest.mark.slow
def test_int8_ort_arm_bundle_golden_comes_from_arm_kernels_and_reproduces_on_each_level(emulation, tmp_path, capsys):
    """An int8 ort-arm bundle shipped from an x86 host: its golden logits are computed on the
    emulated ARM kernels (this host's S8S8 path differs by more than any top-1 margin), and the
    bundle's classify.py (pillow + onnxruntime + numpy, isolated) reproduces them at every level."""
    from edgecnn import cpu

    if cpu.host_class().startswith("arm64"):
        pytest.skip("on an ARM host the golden output comes from this machine's own kernels")
    recipe, out, bundle = tmp_path / "small.yaml", tmp_path / "out", tmp_path / "bundle"
    recipe.write_text(SMALL_INT8)
    code, _, err = _edgecnn(capsys, "compress", "squeezenet", "--recipe", recipe, "--target", "ort-arm", "-o", out,
                            "--quiet")
    assert code == 0, err
    code, stdout, err = _edgecnn(capsys, "ship", out, "-o", bundle)
    assert code == 0 and (bundle / "model.ort").is_file(), err
    expected = json.loads((bundle / "golden" / "expected.json").read_text())
    assert expected["kernels"] == "qemu-arm:rpi4, qemu-arm:rpi5, qemu-arm:max" and "logits from qemu-arm" in stdout
    assert "onnx-disable on qemu-arm:rpi4" in expected["measured_max_difference"]
    for level in LEVELS:  # without --device the check runs on the target's first level, rpi4
        device = [] if level == "rpi4" else ["--device", f"qemu-arm:{level}"]
        code, stdout, err = _edgecnn(capsys, "ship", "--check", bundle, *device, "--json")
        result = json.loads(stdout.strip().splitlines()[0])
        assert code == 0 and result["ok"], (level, stdout, err)
        assert any(f"from model.ort on qemu-arm:{level}" in line for line in result["passed"])
        assert result["versions"]  # the sample says which runtime answered
    code, _, err = _edgecnn(capsys, "ship", "--check", bundle, "--python", sys.executable)
    assert code == 2 and "check it with --device qemu-arm:rpi4" in err and len(err.strip().splitlines()) == 1
