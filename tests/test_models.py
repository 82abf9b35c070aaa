"""The zoo: every model builds and runs, torchvision layouts, options, errors, loading."""

from __future__ import annotations

import warnings

import pytest
import torch

from edgecnn.errors import UserError
from edgecnn.models import ALIASES, LoadedModel, available, create, default_preprocess, load_model
from edgecnn.models.layers import SamePadConv2d, same_padding

ZOO = [
    "squeezenet1_0", "squeezenet1_1", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "shufflenet_v1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "resnet18",
]

# torchvision's published parameter counts (its weights metadata) for the shared layouts.
TORCHVISION_PARAMS = {
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "resnet18": 11_689_512,
}


def test_available_lists_the_zoo():
    assert available() == ZOO
    assert ALIASES == {"squeezenet": "squeezenet1_1", "mobilenet": "mobilenet_v2", "shufflenet": "shufflenet_v2_x1_0"}


@pytest.mark.parametrize("name", ZOO)
def test_builds_and_runs_at_224_and_small(name, torch_one_thread):
    model = create(name).eval()
    if name in TORCHVISION_PARAMS:
        assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        out = model(torch.randn(2, 3, 64, 80))  # non-square, smaller than trained
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


@pytest.mark.slow
def test_torchvision_key_layouts():
    """Spot checks of torchvision module names (full strict loads are in test_shared_weights)."""
    keys = {
        "mobilenet_v3_large": ["features.0.0.weight", "features.4.block.2.fc1.weight", "features.16.1.running_var", "classifier.3.weight"],
        "mobilenet_v3_small": ["features.1.block.1.fc2.bias", "features.12.0.weight", "classifier.0.weight"],
        "shufflenet_v2_x1_0": ["conv1.0.weight", "stage2.0.branch1.2.weight", "stage3.1.branch2.5.weight", "conv5.1.bias", "fc.weight"],
        "resnet18": ["conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_mean", "fc.bias"],
        "mobilenet_v2": ["features.0.0.weight", "features.1.conv.0.0.weight", "features.2.conv.3.weight", "features.18.1.bias"],
    }
    for name, expected in keys.items():
        state = create(name).state_dict()
        for key in expected:
            assert key in state, (name, key)


def test_mobilenet_v1_layout():
    state = create("mobilenet_v1").state_dict()
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.0.weight"].shape == (32, 1, 3, 3)
    assert state["features.1.3.weight"].shape == (64, 32, 1, 1)
    assert state["features.13.4.running_var"].shape == (1024,)
    assert state["classifier.1.weight"].shape == (1000, 1024)
    assert "features.14.0.weight" not in state
    assert create("mobilenet_v1", width_mult=0.25).state_dict()["features.13.3.weight"].shape == (256, 256, 1, 1)


@pytest.mark.parametrize(
    "groups,width", [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (8, 1.0), (3, 0.5), (8, 0.5), (4, 0.5), (2, 1.5), (3, 2.0), (1, 0.75)]
)
def test_shufflenet_v1_groups_and_widths_build(groups, width, torch_one_thread):
    model = create("shufflenet_v1", groups=groups, width_mult=width, num_classes=5).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # The first 1x1 of stage 2 is not grouped; the others are.
    assert model.stage2[0].conv1.groups == 1
    assert model.stage2[1].conv1.groups == groups and model.stage3[0].conv1.groups == groups


def test_aliases_and_names_are_forgiving():
    assert type(create("squeezenet")).__name__ == "SqueezeNet"
    assert load_model("mobilenet").name == "mobilenet_v2"
    assert load_model("Shufflenet").name == "shufflenet_v2_x1_0"
    assert load_model("mobilenet-v3-small").name == "mobilenet_v3_small"


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: create("mobilenet_v4"), "unknown model 'mobilenet_v4'; valid models: squeezenet1_0"),
        (lambda: create("mobilenet_v1", width_mult=1.5), "valid: 0.25 to 1.0"),
        (lambda: create("mobilenet_v2", width_mult=0.1), "valid: 0.35 to 1.4"),
        (lambda: create("shufflenet_v1", groups=5), "valid: 1, 2, 3, 4, 8"),
        (lambda: create("shufflenet_v1", width_mult=3), "valid: 0.5 to 2.0"),
        (lambda: create("squeezenet1_1", width_mult=0.5), "does not take option 'width_mult'"),
        (lambda: create("resnet18", num_classes=0), "num_classes must be a positive integer"),
    ],
)
def test_bad_options_are_one_line_user_errors(call, message):
    with pytest.raises(UserError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_same_padding_matches_tensorflow():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(8, 5, 2) == (1, 2)
    assert same_padding(9, 1, 2) == (0, 0)


def test_tf_padding_keeps_keys_and_changes_strided_convs_only(torch_one_thread):
    plain = create("mobilenet_v1", width_mult=0.25).eval()
    tf = create("mobilenet_v1", width_mult=0.25, tf_padding=True).eval()
    assert list(plain.state_dict()) == list(tf.state_dict())
    tf.load_state_dict(plain.state_dict(), strict=True)
    assert isinstance(tf.features[0][0], SamePadConv2d) and isinstance(tf.features[2][0], SamePadConv2d)
    assert type(tf.features[1][0]) is torch.nn.Conv2d  # stride 1 is unchanged
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        # Equivalent to padding (0, 1) explicitly before the plain conv with padding 0.
        conv = plain.features[0][0]
        expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
        assert torch.allclose(tf.features[0][0](x), expected, atol=1e-6)
        assert plain.features[0][0](x).shape == tf.features[0][0](x).shape
        assert not torch.allclose(plain.features[0][0](x), tf.features[0][0](x))
        assert tf(torch.randn(1, 3, 65, 65)).shape == (1, 1000)
    v2 = create("mobilenet_v2", tf_padding=True)
    assert sum(isinstance(m, SamePadConv2d) for m in v2.modules()) == 5  # stem + 4 strided depthwise


@pytest.mark.slow
def test_tf_padding_exports_to_onnx_as_pad_and_conv(tmp_path, torch_one_thread):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = create("mobilenet_v1", width_mult=0.25, tf_padding=True, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    # One constant Pad per strided conv: no shape arithmetic, no pad-reversing Slice chains.
    assert ops.count("Pad") == 5 and not {"Shape", "Slice", "ConstantOfShape"} & set(ops)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        assert abs(got - model(x).numpy()).max() < 1e-4


def test_load_model_defaults():
    loaded = load_model("mobilenet_v1", width_mult=0.5, num_classes=None)
    assert isinstance(loaded, LoadedModel)
    assert loaded.options == {"width_mult": 0.5} and loaded.weights == "random init" and loaded.labels is None
    assert loaded.preprocess.name == "tf" and not loaded.module.training
    assert default_preprocess("squeezenet1_1").name == "torchvision"
    assert default_preprocess("shufflenet_v2_x2_0").resize == 232  # its checkpoint's recipe
    assert load_model("squeezenet1_0", preprocess="caffe").preprocess.crop == 227


# --- user architectures --------------------------------------------------------------------

USER_MODEL = '''
import torch.nn as nn
PREPROCESS = "caffe"

def tiny(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

def not_a_model():
    return 42

def broken():
    raise RuntimeError("boom")
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(USER_MODEL)
    return path


def test_user_factory_is_first_class(user_file):
    loaded = load_model(f"{user_file}:tiny", width=6, num_classes=5)
    assert loaded.name == f"{user_file}:tiny"
    assert loaded.module[0].out_channels == 6 and loaded.module[-1].out_features == 5
    assert loaded.preprocess.name == "caffe"
    assert loaded.options == {"width": 6, "num_classes": 5}


@pytest.mark.parametrize(
    "suffix,options,message",
    [
        (":missing", {}, "has no callable 'missing'; callables defined there: tiny, not_a_model, broken"),
        (":not_a_model", {}, "returned int, not a torch.nn.Module"),
        (":broken", {}, "failed: RuntimeError: boom"),
        (":tiny", {"groups": 3}, "does not take option 'groups'"),
    ],
)
def test_user_factory_errors(user_file, suffix, options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(f"{user_file}{suffix}", **options)


@pytest.mark.parametrize("exit_line", ["import sys\nsys.exit(3)\n", "raise SystemExit\n", "exit('bye')\n"])
def test_user_file_that_exits_on_import_is_one_line(tmp_path, capfd, exit_line):
    """sys.exit at a model file's top level would end edgecnn silently: one line naming the file, exit 2."""
    from edgecnn.cli import main

    path = tmp_path / "exits.py"
    path.write_text("import torch.nn as nn\n" + exit_line + "def make():\n    return nn.Conv2d(3, 4, 1)\n")
    try:
        code = main(["profile", f"{path}:make"]) or 0
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "exits.py' exits when imported" in err


def test_user_factory_that_exits_is_a_user_error(tmp_path):
    path = tmp_path / "quits.py"
    path.write_text("import sys\n\ndef make():\n    sys.exit(0)\n")
    with pytest.raises(UserError, match="quits.py:make' exited"):
        load_model(f"{path}:make")


def test_user_factory_missing_file(tmp_path):
    with pytest.raises(UserError, match="model file .*nope.py' does not exist"):
        load_model(f"{tmp_path}/nope.py:make")


# --- weights ---------------------------------------------------------------------------------


def test_checkpoint_formats_load(tmp_path):
    source = create("mobilenet_v1", width_mult=0.25, num_classes=10)
    state = source.state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}, "labels": [f"c{i}" for i in range(10)]}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    loaded = load_model("mobilenet_v1", weights=str(path), width_mult=0.25, num_classes=10)
    assert loaded.weights == str(path) and loaded.labels == [f"c{i}" for i in range(10)]
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key])
    torch.save({"model": state}, path)
    load_model("mobilenet_v1", weights=str(path), width_mult=0.25, num_classes=10)


def test_pruning_reparametrisation_is_baked_in(tmp_path):
    source = create("squeezenet1_1", num_classes=4)
    state = source.state_dict()
    mask = torch.ones_like(state["features.0.weight"])
    mask[0] = 0
    state["features.0.weight_orig"] = state.pop("features.0.weight")
    state["features.0.weight_mask"] = mask
    torch.save(state, tmp_path / "pruned.pth")
    module = load_model("squeezenet1_1", weights=str(tmp_path / "pruned.pth"), num_classes=4).module
    assert module.features[0].weight[0].abs().sum() == 0 and module.features[0].weight[1].abs().sum() > 0


def test_checkpoint_that_does_not_fit_names_keys(tmp_path):
    path = tmp_path / "v2.pth"
    torch.save(create("mobilenet_v3_small", num_classes=10).state_dict(), path)
    with pytest.raises(UserError) as err:
        load_model("mobilenet_v2", weights=str(path))
    message = str(err.value)
    assert "missing keys (first: 'features.1.conv.0.0.weight')" in message
    assert "unexpected keys (first: 'features.1.block." in message
    assert "\n" not in message
    with pytest.raises(UserError, match=r"shape mismatches \(first: 'classifier.3.weight' is \(10, 1024\).*pass --num-classes 10"):
        load_model("mobilenet_v3_small", weights=str(path))


def test_unreadable_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        load_model("squeezenet1_1", weights=str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_model("squeezenet1_1", weights=str(tmp_path / "missing.pth"))


def test_imagenet_weights_offline_is_one_user_error(monkeypatch, tmp_path):
    import edgecnn.models.weights as weights

    def offline(url, dest):
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights, "download", offline)
    with pytest.raises(UserError, match="cannot download the ImageNet weights of 'squeezenet1_1'.*--weights PATH"):
        load_model("squeezenet", weights="imagenet")
    with pytest.raises(UserError, match="no published ImageNet weights for 'mobilenet_v1'.*--weights PATH"):
        load_model("mobilenet_v1", weights="imagenet")


def test_imagenet_weights_hash_is_checked(monkeypatch, tmp_path):
    import edgecnn.models.weights as weights

    def fake_download(url, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"tampered")

    monkeypatch.setattr(weights, "download", fake_download)
    with pytest.raises(UserError, match="fail their hash check"):
        load_model("resnet18", weights="imagenet")
    assert not list((weights.cache_dir() / "weights").glob("resnet18*"))


def test_imagenet_weights_come_from_the_cache(monkeypatch):
    """A checkpoint already in the cache (with the right name) is loaded without a download."""
    import edgecnn.models.weights as weights

    monkeypatch.setattr(weights, "download", lambda url, dest: pytest.fail("should not download"))
    target = weights.cache_dir() / "weights" / "shufflenetv2_x0.5-f707e7126e.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(create("shufflenet_v2_x0_5").state_dict(), target)
    try:
        loaded = load_model("shufflenet_v2_x0_5", weights="imagenet")
    finally:
        target.unlink()
    assert loaded.weights == "imagenet (shufflenetv2_x0.5-f707e7126e.pth)"
