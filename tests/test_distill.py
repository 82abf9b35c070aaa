"""Distillation: the KD loss falls on a tiny task; a resumed run ends in the same state."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.passes import after_step_hooks, regularizers
from edgecnn.passes.registry import PassContext, run_pass
from edgecnn.train import DistillConfig, distill, kd_loss


def _net(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def _data(n=40, labelled=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 12, 12, generator=g)
    y = torch.randint(0, 5, (n,), generator=g) if labelled else torch.full((n,), -1)
    return torch.utils.data.TensorDataset(x, y)


def _student(kind="grouped"):
    return run_pass("shift", _net(), {"kind": kind}, PassContext())


@torch.no_grad()
def _soft_loss(student, teacher, data, temperature=4.0):
    x, _ = data.tensors
    student.eval()
    return float(kd_loss(student(x), teacher(x), None, temperature, 1.0)[0])


def test_kd_loss_is_pure_soft_when_unlabelled():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    soft, parts = kd_loss(s, t, torch.full((4,), -1), 2.0, 0.5)
    assert "hard" not in parts
    mixed, parts = kd_loss(s, t, torch.tensor([0, 1, -1, 2]), 2.0, 0.5)
    assert "hard" in parts and float(mixed) != pytest.approx(float(soft))
    assert float(kd_loss(t, t, None, 2.0, 1.0)[0]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("labelled", [True, False])
def test_distillation_reduces_kd_loss(labelled):
    teacher = _net(seed=7).eval()
    data = _data(labelled=labelled)
    student = _student()
    before = _soft_loss(student, teacher, data)
    distill(student, teacher, data, DistillConfig(epochs=4, batch_size=8, lr=1e-2, progress=False))
    assert _soft_loss(student, teacher, data) < 0.7 * before


@pytest.mark.slow
def test_resume_reaches_the_same_state(tmp_path):
    teacher = _net(seed=7).eval()
    data = _data()
    config = DistillConfig(epochs=2, batch_size=8, lr=1e-2, shift_l1=0.1, progress=False)
    straight = _student("active")
    distill(straight, teacher, data, config, regularizers=regularizers(straight, config.shift_l1))
    paused = _student("active")
    first = distill(paused, teacher, data, config, checkpoint_dir=tmp_path, stop_after=3,
                    regularizers=regularizers(paused, config.shift_l1))
    assert first.steps == 3 and not first.finished
    resumed = _student("active")
    result = distill(resumed, teacher, data, config, checkpoint_dir=tmp_path, resume=True,
                     regularizers=regularizers(resumed, config.shift_l1))
    assert result.steps == 10 and result.finished
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_masks_are_reapplied_after_each_step():
    from edgecnn.passes import prune

    if not hasattr(prune, "reapply_masks") or not hasattr(prune, "MASK"):
        pytest.skip("pruning masks not available")
    teacher = _net(seed=7).eval()
    student = _student()
    linear = student[-1]
    mask = torch.ones_like(linear.weight, dtype=torch.bool)
    mask[:, ::2] = False
    linear.register_buffer(prune.MASK, mask)
    with torch.no_grad():
        linear.weight.mul_(mask)
    distill(student, teacher, _data(), DistillConfig(epochs=1, batch_size=8, lr=1e-2, progress=False),
            after_step=after_step_hooks(student))
    assert torch.count_nonzero(linear.weight[:, ::2]) == 0


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        distill(_student(), _net(), _data(), DistillConfig(progress=False), checkpoint_dir=tmp_path, resume=True)


def test_feature_matching_alone_pulls_the_named_layer_to_the_teacher():
    """logit_weight 0 + feature_layers: only the named outputs are matched, and they get closer."""
    teacher = _net(seed=7).eval()
    data = _data(labelled=False)
    student = _student()
    x, _ = data.tensors

    @torch.no_grad()
    def feature_error():
        student.eval()
        return float(((student[:6](x) - teacher[:6](x)) ** 2).mean() / (teacher[:6](x) ** 2).mean())

    before = feature_error()
    run = distill(student, teacher, data, DistillConfig(epochs=4, batch_size=8, lr=1e-2, logit_weight=0.0,
                                                        feature_layers=["5"], feature_weight=1.0, freeze_bn=True,
                                                        progress=False))
    assert feature_error() < 0.75 * before
    assert run.history[-1]["feature"] < run.history[0]["feature"] and run.history[-1]["soft"] > 0
    # the hooks are gone afterwards
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_feature_layers_must_exist_and_match():
    teacher, data = _net(seed=7).eval(), _data()
    with pytest.raises(UserError, match="not found in the student"):
        distill(_student(), teacher, data, DistillConfig(feature_layers=["nope"], feature_weight=1.0, progress=False))
    narrow_teacher = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    with pytest.raises(UserError, match="has shape"):  # layer 0: 8 channels in the student, 4 in the teacher
        distill(_net(), narrow_teacher, data, DistillConfig(feature_layers=["0"], feature_weight=1.0, progress=False))


def test_finetune_cli_end_to_end_with_shift_and_feature_matching(tmp_path, torch_one_thread):
    """``edgecnn finetune``: shift, feature-only distillation on a tiny folder, student written;
    bad flag combinations and an existing output are one-line user errors."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from edgecnn.cli import cli

    data = tmp_path / "images"
    for synset, fill in (("n001", (200, 20, 20)), ("n002", (20, 200, 20))):
        (data / synset).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40 + i, 36), tuple(c + 5 * i for c in fill)).save(data / synset / f"{i}.png")
    out = tmp_path / "student.pth"
    args = ["finetune", "squeezenet1_1", "--num-classes", "2", "--data", str(data), "--input-size", "32",
            "--epochs", "1", "--batch-size", "4", "--shift", "--logit-weight", "0",
            "--feature-layers", "features.12", "-o", str(out), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["history"][-1]["feature"] > 0
    assert summary["passes"][0]["pass"] == "shift" and out.is_file()
    saved = torch.load(out, weights_only=False)
    assert saved["edgecnn"]["distill"]["feature_layers"] == ["features.12"]

    again = CliRunner().invoke(cli, args)
    assert isinstance(again.exception, UserError) and "--force" in str(again.exception)
    no_features = args[:args.index("--feature-layers")] + ["-o", str(tmp_path / "other.pth")]
    nothing = CliRunner().invoke(cli, no_features)
    assert isinstance(nothing.exception, UserError) and "--feature-layers" in str(nothing.exception)


class _Recorder(nn.Module):
    """A teacher that remembers every batch it was shown (what the student is trained on too)."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.head(x.mean((2, 3)))


def test_train_size_and_hflip_shape_what_teacher_and_student_see():
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x)
    teacher, student = _Recorder(), nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    config = DistillConfig(epochs=3, batch_size=4, lr=1e-3, optimizer="sgd", train_size=8, hflip=True,
                           lr_schedule="constant", progress=False)
    distill(student, teacher, data, config)
    assert [tuple(b.shape[-2:]) for b in teacher.seen] == [(8, 8)] * 12
    small = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    flipped = [any(torch.equal(b[0], small[i].flip(2)) for i in range(16)) for b in teacher.seen]
    assert 0 < sum(flipped) < len(flipped)  # some batches mirrored, not all
    again = _Recorder()
    distill(nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), again, data, config)
    assert all(torch.equal(a, b) for a, b in zip(teacher.seen, again.seen))  # same seed, same draws


def test_epoch_lrs_set_each_epochs_rate():
    from edgecnn.train.runtime import lr_lambda

    config = DistillConfig(epochs=3, batch_size=8, lr=3e-4, optimizer="sgd", lr_schedule="epochs",
                           epoch_lrs=[3e-4, 1e-4], progress=False)
    factor = lr_lambda(config, steps_per_epoch=2)
    assert [config.lr * factor(step) for step in range(6)] == pytest.approx([3e-4, 3e-4, 1e-4, 1e-4, 1e-4, 1e-4])
    run = distill(_net(), _net(seed=7).eval(), _data(n=16), config)
    assert run.history[-1]["lr"] == pytest.approx(1e-4)  # the rate the last epoch ended at
    with pytest.raises(ValueError, match="epoch_lrs"):
        DistillConfig(lr_schedule="epochs")
