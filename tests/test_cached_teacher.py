"""Cached-teacher recovery with feature matching (edgecnn.train.cached_teacher) and its use in the search."""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.models.layer_select import block_outputs
from edgecnn.train.cached_teacher import RecoveryConfig, TeacherCache, distill_cached, matching_layers, model_fingerprint
from edgecnn.train.losses import FeatureTaps, feature_loss


def net(stem: int = 8, seed: int = 0) -> nn.Module:
    """Two two-conv blocks ("0", "2") and a head; ``stem`` < 8 is block 0 pruned at its output."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, stem, 1)), nn.ReLU(),
        nn.Sequential(nn.Conv2d(stem, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1)), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, seed: int = 1):
        self.x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.x)

    def key(self, i):
        return f"img{i}"

    def __getitem__(self, i):
        return self.x[i], self.key(i)


@torch.no_grad()
def live_features(model: nn.Module, images: torch.Tensor, layers: list[str]) -> dict:
    taps = FeatureTaps(model, layers, "model")
    model.eval()(images)
    taps.remove()
    return dict(taps.outputs)


def test_block_outputs_are_the_block_modules():
    from edgecnn.models import create

    assert block_outputs(net()) == ["0", "2"]
    assert block_outputs(create("squeezenet1_1")) == [f"features.{i}" for i in (3, 4, 6, 7, 9, 10, 11, 12)]
    assert block_outputs(create("mobilenet_v2")) == [f"features.{i}" for i in range(1, 18)]


def test_cached_features_equal_the_live_teachers(tmp_path):
    teacher, data = net(), Images()
    cache = TeacherCache(tmp_path, teacher, "p", feature_layers=["2", "0"])
    assert cache.fill(data, batch_size=5, progress=False) == len(data)
    live = live_features(teacher, data.x, ["0", "2"])
    with torch.no_grad():
        logits = teacher(data.x)
    for i in range(len(data)):
        cached_logits, cached = cache.load(data.key(i))
        assert sorted(cached) == ["0", "2"] and cached["0"].dtype == np.float16
        for name in ("0", "2"):
            np.testing.assert_allclose(cached[name].astype(np.float32), live[name][i].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(cached_logits, logits[i].numpy(), rtol=2e-3, atol=2e-3)
    assert not teacher[0]._forward_hooks and not teacher[2]._forward_hooks  # the cache's taps are gone


def test_outputs_beyond_float16_range_are_cached_exactly(tmp_path):
    teacher, data = net(), Images(3)
    with torch.no_grad():
        teacher[0][2].weight *= 1e5  # block 0 outputs beyond 65504
    cache = TeacherCache(tmp_path, teacher, "p", feature_layers=["0"])
    cache.fill(data, progress=False)
    live = live_features(teacher, data.x, ["0"])["0"]
    assert live.abs().max() > 7e4
    for i in range(len(data)):  # per image: float32 where float16 would turn values into inf
        cached = cache.load(data.key(i))[1]["0"]
        assert np.isfinite(cached).all()
        np.testing.assert_allclose(cached.astype(np.float32), live[i].numpy(), rtol=2e-3, atol=float(live[i].abs().max()) * 1e-3)


def test_layer_list_is_part_of_the_cache_key(tmp_path):
    teacher, data = net(), Images(4)
    folders = [TeacherCache(tmp_path, teacher, "p", layers).folder for layers in ([], ["0"], ["2"], ["0", "2"])]
    assert len(set(folders)) == 4
    assert TeacherCache(tmp_path, teacher, "p", ["2", "0"]).folder == folders[3]  # a set: order does not matter
    # Logits only keeps the folder name of existing caches: they stay valid.
    assert folders[0].name == f"{model_fingerprint(teacher)}-{hashlib.sha256(b'p').hexdigest()[:12]}"
    TeacherCache(tmp_path, teacher, "p", ["0"]).fill(data, progress=False)
    assert TeacherCache(tmp_path, teacher, "p", ["0", "2"]).fill(data, progress=False) == len(data)
    assert TeacherCache(tmp_path, teacher, "p").fill(data, progress=False) == len(data)


def test_feature_loss_drives_training_with_logit_weight_zero(tmp_path, torch_one_thread):
    teacher, data = net(), Images()
    student = net(seed=3)
    cache = TeacherCache(tmp_path / "cache", teacher, "p", ["0", "2"])
    target = live_features(teacher, data.x, ["2"])

    def distance():
        return float(feature_loss(live_features(student, data.x, ["2"]), target))

    before = distance()
    config = RecoveryConfig(steps=40, batch_size=4, lr=1e-2, logit_weight=0.0, feature_layers=["2"], feature_weight=1.0)
    done = distill_cached(student, data, cache, config, progress=False)
    assert distance() < 0.5 * before
    assert done["feature_layers"] == ["2"] and done["feature_loss"] is not None
    assert done["loss"] == pytest.approx(done["feature_loss"])  # logit weight 0: the features are the whole loss
    assert not student[2]._forward_hooks  # the student's taps are gone


def test_loss_is_weighted_logit_plus_feature_terms(tmp_path, torch_one_thread):
    teacher, data = net(), Images()
    cache = TeacherCache(tmp_path, teacher, "p", ["0", "2"])
    config = RecoveryConfig(steps=3, batch_size=12, lr=1e-3, logit_weight=0.5, feature_layers=["0", "2"], feature_weight=2.0)
    done = distill_cached(net(seed=3), data, cache, config, progress=False)
    assert done["loss"] == pytest.approx(0.5 * done["logit_loss"] + 2.0 * done["feature_loss"], rel=1e-5)


def test_resume_with_features_gives_the_same_state(tmp_path, torch_one_thread):
    teacher, data, start = net(), Images(10), net(seed=5)
    cache = TeacherCache(tmp_path / "cache", teacher, "p", ["0", "2"])
    config = RecoveryConfig(steps=6, batch_size=4, lr=1e-2, checkpoint_every=2, logit_weight=0.5, feature_layers=["0", "2"])
    straight = copy.deepcopy(start)
    done = distill_cached(straight, data, cache, config, checkpoint_dir=tmp_path / "a", progress=False)
    assert done["finished"] and done["steps"] == 6
    paused = copy.deepcopy(start)
    half = distill_cached(paused, data, cache, config, checkpoint_dir=tmp_path / "b", stop_after=3, progress=False)
    assert half["steps"] == 3 and not half["finished"]
    resumed = copy.deepcopy(start)  # a new process would start from the untrained model
    again = distill_cached(resumed, data, cache, config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(straight[2][0].weight, start[2][0].weight)
    assert again["loss"] == pytest.approx(done["loss"]) and again["feature_loss"] == pytest.approx(done["feature_loss"])
    other = config.model_copy(update={"feature_layers": ["2"]})
    with pytest.raises(UserError, match="feature_layers"):
        distill_cached(copy.deepcopy(start), data, cache, other, checkpoint_dir=tmp_path / "b", resume=True, progress=False)


def test_bad_feature_layers_are_user_errors(tmp_path):
    teacher, data = net(), Images(4)
    with pytest.raises(UserError, match="'nope'|nope.*not found in the teacher"):
        TeacherCache(tmp_path, teacher, "p", ["nope"])
    cache = TeacherCache(tmp_path, teacher, "p", ["0"])
    with pytest.raises(UserError, match="not in the teacher cache"):
        distill_cached(net(), data, cache, RecoveryConfig(steps=1, feature_layers=["2"]), progress=False)
    with pytest.raises(UserError, match="not found in the student"):
        other = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                          head=nn.Linear(4, 4)))
        distill_cached(other, data, cache, RecoveryConfig(steps=1, feature_layers=["0"]), progress=False)
    with pytest.raises(UserError, match="shape"):  # block 0 pruned at its output: shapes differ
        distill_cached(net(stem=4), data, cache, RecoveryConfig(steps=1, feature_layers=["0"]), progress=False)
    with pytest.raises(UserError, match="nothing to train"):
        distill_cached(net(), data, cache, RecoveryConfig(steps=1, logit_weight=0.0), progress=False)


def test_matching_layers_leaves_out_the_ones_a_transform_reshaped(tmp_path):
    teacher = net()
    cache = TeacherCache(tmp_path, teacher, "p", block_outputs(teacher))
    image = Images(1)[0][0]
    assert matching_layers(net(seed=2), cache, image) == ["0", "2"]
    assert matching_layers(net(stem=4), cache, image) == ["2"]


def test_search_recovery_matches_the_block_outputs_the_candidate_keeps(tmp_path, torch_one_thread):
    from PIL import Image

    from edgecnn.preprocess import Preprocess
    from edgecnn.search.prepare import make_recovery
    from edgecnn.search.run import SearchConfig

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    teacher = net()
    config = SearchConfig(recovery_size=32, recovery_lr=1e-3)
    recover = make_recovery(teacher, paths, Preprocess(), config, tmp_path / "cache", tmp_path / "work", log=lambda s: None)
    summary = recover(net(stem=4, seed=4), 2)
    assert summary["feature_layers"] == "1 of 2 block outputs" and summary["feature_loss"] is not None
    assert [p.name.endswith("-f" + hashlib.sha256(b"0\n2").hexdigest()[:12]) for p in (tmp_path / "cache").iterdir()] == [True]


def test_dropout_is_off_during_recovery_unless_asked(tmp_path, torch_one_thread):
    # A student identical to its teacher matches the cached logits exactly, unless dropout perturbs it.
    def with_dropout():
        model = net()
        model.insert(6, nn.Dropout(0.5))  # before the head's Linear
        return model

    teacher, data = with_dropout(), Images()
    cache = TeacherCache(tmp_path, teacher, "p")
    quiet = distill_cached(with_dropout(), data, cache, RecoveryConfig(steps=1, batch_size=12, lr=1e-9), progress=False)
    noisy = distill_cached(with_dropout(), data, cache, RecoveryConfig(steps=1, batch_size=12, lr=1e-9, dropout=True),
                           progress=False)
    assert quiet["logit_loss"] < 1e-7
    assert noisy["logit_loss"] > 1e-5


def test_logits_only_distillation_resumes_to_the_same_state(tmp_path, torch_one_thread):
    teacher, data = net(), Images(n=10)
    start = net(seed=5)
    cache = TeacherCache(tmp_path / "cache", teacher, "test-preprocess")
    config = RecoveryConfig(steps=6, batch_size=4, lr=1e-2, checkpoint_every=2)
    straight = copy.deepcopy(start)
    done = distill_cached(straight, data, cache, config, checkpoint_dir=tmp_path / "a", progress=False)
    assert done["steps"] == 6 and done["finished"]
    assert len(list(cache.folder.glob("*.npy"))) == len(data)

    paused = copy.deepcopy(start)
    half = distill_cached(paused, data, cache, config, checkpoint_dir=tmp_path / "b", stop_after=3, progress=False)
    assert half["steps"] == 3 and not half["finished"]
    resumed = copy.deepcopy(start)  # a new process would start from the untrained model
    distill_cached(resumed, data, cache, config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(straight[0][0].weight, start[0][0].weight)
    elsewhere = net(seed=9)  # the checkpoint, not the weights handed in, is where a resume continues
    distill_cached(elsewhere, data, cache, config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), elsewhere.state_dict().values()))
    assert cache.fill(data, progress=False) == 0  # every teacher output was cached


def test_teacher_cache_is_keyed_by_teacher_and_preprocessing(tmp_path):
    teacher = net()
    other = net()
    with torch.no_grad():
        other[0][0].bias += 1
    folders = {TeacherCache(tmp_path, teacher, "p").folder, TeacherCache(tmp_path, other, "p").folder,
               TeacherCache(tmp_path, teacher, "q").folder}
    assert len(folders) == 3
    assert TeacherCache(tmp_path, teacher, "p").folder == TeacherCache(tmp_path, copy.deepcopy(teacher), "p").folder
