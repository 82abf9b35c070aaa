"""``edgecnn models`` and ``edgecnn profile``, and their one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from edgecnn.cli import main
from edgecnn.models import available, create


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``edgecnn argv``."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_models_lists_the_zoo(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in available():
        assert name in out
    assert "squeezenet -> squeezenet1_1" in out and "569 M" in out
    from edgecnn import cpu

    assert f"this machine: CPU class {cpu.host_class()}" in " ".join(out.split())


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    data = json.loads(out)
    rows = {row["name"]: row for row in data["models"]}
    assert code == 0 and list(rows) == available()
    assert rows["squeezenet1_0"]["params"] == 1_248_424
    assert round(rows["mobilenet_v2"]["macs"] / 1e6) == 301
    assert rows["mobilenet_v1"]["imagenet_weights"] is False and rows["mobilenet_v1"]["preprocess"] == "tf"
    assert data["aliases"]["shufflenet"] == "shufflenet_v2_x1_0"
    from edgecnn import cpu
    from edgecnn.targets import resolve_target_name

    assert data["cpu_class"] == cpu.host_class() and data["targets_here"]["x86"] == resolve_target_name("x86")


def test_profile_json(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v1", "--json")
    data = json.loads(out)
    assert code == 0 and data["params"] == 4_231_976 and data["macs"] == 568_740_352
    assert isinstance(data["params"], int) and isinstance(data["macs"], int)
    assert data["by_kind"]["pointwise"]["layers"] == 13 and data["rows"][0]["name"] == "features.0.0"


def test_profile_model_options_and_input_size(capsys):
    code, out, _ = run(capsys, "profile", "shufflenet_v1", "--groups", "8", "--width-mult", "0.5", "--num-classes", "10", "--input-size", "64", "--json")
    data = json.loads(out)
    model = create("shufflenet_v1", groups=8, width_mult=0.5, num_classes=10)
    assert code == 0 and data["params"] == sum(p.numel() for p in model.parameters())
    assert data["input_size"] == [64, 64] and data["options"] == {"groups": 8, "width_mult": 0.5, "num_classes": 10}


def test_profile_tables(capsys):
    code, out, _ = run(capsys, "profile", "squeezenet1_1", "--input-size", "96")
    assert code == 0
    assert "features.3.expand3x3" in out and "Resources per layer type" in out and "conv 1x1" in out
    assert "1,235,496 params" in out


def test_profile_user_model_and_weights(capsys, tmp_path):
    path = tmp_path / "net.py"
    path.write_text("import torch.nn as nn\ndef make(num_classes=2):\n    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n")
    code, out, _ = run(capsys, "profile", f"{path}:make", "--input-size", "8", "--json")
    data = json.loads(out)
    assert code == 0 and data["params"] == 4 * 3 + 4 + 4 * 2 + 2 and data["macs"] == 8 * 8 * 4 * 3 + 4 * 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,message",
    [
        (["profile", "mobilenet_v9"], "unknown model 'mobilenet_v9'; valid models: squeezenet1_0, squeezenet1_1, mobilenet_v1"),
        (["profile", "mobilenet_v1", "--width-mult", "2"], "width_mult 2.0 is not valid for mobilenet_v1; valid: 0.25 to 1.0"),
        (["profile", "shufflenet_v1", "--groups", "6"], "groups 6 is not valid for shufflenet_v1; valid: 1, 2, 3, 4, 8"),
        (["profile", "squeezenet", "--tf-padding"], "model 'squeezenet1_1' does not take option 'tf_padding'"),
        (["profile", "mobilenet_v1", "--weights", "imagenet"], "no published ImageNet weights for 'mobilenet_v1'"),
        (["profile", "squeezenet", "--preprocess", "opencv"], "unknown preprocess preset 'opencv'"),
        (["profile", "squeezenet", "--preprocess-set", "crop"], "is not KEY=VALUE"),
        (["profile", "squeezenet1_0", "--input-size", "8"], "--input-size 8 is too small for squeezenet1_0: it needs at least 21"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_checkpoint_that_does_not_fit(capsys, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create("squeezenet1_0").state_dict(), path)
    code, _, err = run(capsys, "profile", "mobilenet_v2", "--weights", str(path))
    assert code == 2 and "missing keys (first: 'features.0.0.weight')" in err
    assert "unexpected keys (first: 'features.0.weight')" in err and err.count("\n") == 1
