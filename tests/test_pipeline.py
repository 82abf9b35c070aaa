"""Pipeline building blocks: atomic output folder, embedded digits, baseline cache, deep compression."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.data import embedded
from edgecnn.errors import UserError
from edgecnn.outputs import MANIFEST, write_manifest
from edgecnn.pipeline import OutputFolder
from edgecnn.recipe import SHIPPED_RECIPES, load_recipe

# --- output folder ------------------------------------------------------------------------------


def test_output_folder_refuses_existing_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UserError, match="already exists; pass --force"):
        OutputFolder(out, force=False).check()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        OutputFolder(tmp_path / "file", force=True).check()


def test_output_folder_commit_replaces_and_abort_keeps(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    write_manifest(out, "compress")  # an earlier edgecnn run: --force may replace it
    folder = OutputFolder(out, force=True)
    work = folder.open()
    (work / "new.txt").write_text("new")
    folder.abort()
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "old.txt"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder (nor lock) left
    folder = OutputFolder(out, force=True)
    work = folder.open()
    (work / "new.txt").write_text("new")
    folder.commit()
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "new.txt"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- embedded digits ----------------------------------------------------------------------------


def test_digits_split_is_fixed_and_stratified():
    images, labels = embedded.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 255
    train, test = embedded.split_indices(labels)
    assert len(train) == 1438 and len(test) == 359 and not set(train) & set(test)
    per_class = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(per_class, 0.2, atol=0.01)
    again_train, again_test = embedded.split_indices(labels)
    assert (again_test == test).all()


@pytest.mark.slow
def test_digits_folders_and_baseline_cache(tmp_path):
    """Materialised once (in the session cache, shared with the CLI tests), read by
    ImageFolder; a second baseline request hits the cache."""
    from edgecnn.data.images import ImageFolder
    from edgecnn.models import create

    folders = embedded.materialize()
    assert folders.root.parent.parent == embedded.cache_root()
    train, test = ImageFolder(folders.train), ImageFolder(folders.test)
    assert (len(train), len(test)) == (1438, 359) and train.num_classes == 10 and test.labelled

    def build():
        return create("squeezenet1_1", num_classes=10)

    import torch

    threads = torch.get_num_threads()
    first = embedded.train_baseline(build, "squeezenet1_1", {}, input_size=32, epochs=1, max_train_images=64, cache=tmp_path)
    # Trained on one thread in channels-last: the caller's thread count and a plain layout come back.
    assert torch.get_num_threads() == threads
    assert all(p.is_contiguous() for p in first.module.parameters())
    second = embedded.train_baseline(build, "squeezenet1_1", {}, input_size=32, epochs=1, max_train_images=64, cache=tmp_path)
    assert not first.cached and second.cached and first.key == second.key
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert (a == b).all()
    other = embedded.baseline_key("squeezenet1_1", {}, 48, 1, 0, 64)
    assert other != first.key  # input size is part of the key
    assert "accuracy is on digits, not ImageNet" in first.description


# --- deep compression ---------------------------------------------------------------------------


@pytest.mark.slow
def test_deep_compression_recipe_gives_421098_nonzeros():
    """The seeds' table on a dense squeezenet1_0: 421,098 non-zero conv weights (within 0.1 %)."""
    import torch.nn as nn

    from edgecnn.models import create
    from edgecnn.passes.registry import PassContext
    from edgecnn.pipeline.checkpoint import profile
    from edgecnn.pipeline.stages.transform import run_transform

    import torch

    recipe = load_recipe(SHIPPED_RECIPES / "squeezenet-deep-compression.yaml")
    torch.manual_seed(0)
    model = create("squeezenet1_0")
    with torch.no_grad():  # a trained (dense) model has non-zero biases; the zoo's init zeroes them
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(0.01, 0.1)
    assert profile(model, 224)["nonzeros"] == 1_248_424
    for stage in recipe.stages:
        if stage.is_pass:
            model = run_transform(stage.name, model, stage.config, PassContext(example_input=None, progress=False)) or model
    nonzero = profile(model, 224)["nonzeros"]
    assert abs(nonzero - 421_098) <= 0.001 * 421_098, nonzero
    shared = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(len(m.weight.unique()) <= 2**6 + 1 for m in shared)  # 6-bit codebook (+ the pruned zeros)
