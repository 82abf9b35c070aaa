"""Image folders, list files and batches (numpy and torch)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from edgecnn.data.images import ImageFolder, iter_batches
from edgecnn.errors import UserError
from edgecnn.preprocess import Preprocess

SMALL = Preprocess(input_size=8, resize=10, crop=8, mean=(0, 0, 0), std=(1, 1, 1), value_scale=1.0)


def write_image(path, value, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


@pytest.fixture
def synset_tree(tmp_path):
    """root/classes.txt + root/images/<synset>/*.png, like ../shared/data."""
    (tmp_path / "classes.txt").write_text("n001 cat, kitty\nn002 dog\nn003 bird\n")
    images = tmp_path / "images"
    write_image(images / "n003" / "a.png", 30)
    write_image(images / "n001" / "b.png", 10)
    write_image(images / "n001" / "c.png", 11)
    return images


def test_class_folders_with_classes_file_in_parent(synset_tree):
    ds = ImageFolder(synset_tree)
    assert ds.classes == ["n001", "n002", "n003"] and ds.class_names[0] == "cat, kitty"
    assert [(p.name, label) for p, label in ds.items] == [("b.png", 0), ("c.png", 0), ("a.png", 2)]
    assert ds.labelled and ds.num_classes == 3 and len(ds) == 3


def test_class_folders_without_classes_file_use_sorted_names(tmp_path):
    write_image(tmp_path / "zebra" / "1.jpg", 1)
    write_image(tmp_path / "ant" / "2.JPEG", 2)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["ant", "zebra"]
    assert [label for _, label in ds.items] == [0, 1]


def test_folder_not_in_classes_file(synset_tree):
    write_image(synset_tree / "n999" / "x.png", 1)
    with pytest.raises(UserError, match="class folder .*n999' is not listed in"):
        ImageFolder(synset_tree)


def test_flat_folder_is_unlabelled(tmp_path):
    write_image(tmp_path / "b.png", 2)
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path)
    assert not ds.labelled and ds.num_classes is None
    batches = list(iter_batches(ds, SMALL, batch_size=4))
    assert len(batches) == 1 and batches[0][1] is None
    assert np.allclose(batches[0][0][:, 0, 0, 0], [1, 2])  # sorted order: a, b


def test_list_file_with_labels_and_relative_paths(tmp_path):
    write_image(tmp_path / "imgs" / "one.png", 5)
    write_image(tmp_path / "imgs" / "two words.png", 6)
    (tmp_path / "list.txt").write_text("# comment\nimgs/one.png 3\n\nimgs/two words.png 1\n")
    ds = ImageFolder(tmp_path / "list.txt")
    assert [(p.name, label) for p, label in ds.items] == [("one.png", 3), ("two words.png", 1)]
    assert ds.num_classes == 4
    images, labels = next(iter_batches(ds, SMALL, batch_size=8))
    assert images.shape == (2, 3, 8, 8) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1]


def test_list_file_without_labels(tmp_path):
    write_image(tmp_path / "x.png", 5)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'x.png'}\n")
    assert not ImageFolder(tmp_path / "list.txt").labelled


def test_list_file_mixing_labelled_and_unlabelled_lines(tmp_path):
    write_image(tmp_path / "x.png", 5)
    (tmp_path / "list.txt").write_text("x.png 1\nx.png\n")
    with pytest.raises(UserError, match="has no label while others have"):
        ImageFolder(tmp_path / "list.txt")


def test_missing_empty_and_unreadable(tmp_path):
    with pytest.raises(UserError, match=f"'{tmp_path / 'nope'}' does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="contains no images"):
        ImageFolder(tmp_path / "empty")
    bad = tmp_path / "bad"
    write_image(bad / "ok.png", 1)
    (bad / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(UserError, match=r"cannot read image '.*broken.jpg'"):
        list(iter_batches(ImageFolder(bad), SMALL, batch_size=1))
    (tmp_path / "list.txt").write_text("missing.png 0\n")
    with pytest.raises(UserError, match=r"image '.*missing.png' does not exist"):
        list(iter_batches(ImageFolder(tmp_path / "list.txt"), SMALL, batch_size=1))


def test_batches_keep_order_and_respect_limit(tmp_path):
    for i in range(7):
        write_image(tmp_path / f"{i}.png", 10 * i)
    ds = ImageFolder(tmp_path)
    batches = list(iter_batches(ds, SMALL, batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    assert np.concatenate([b[0] for b in batches])[:, 0, 0, 0].tolist() == [10.0 * i for i in range(7)]
    assert sum(len(b[0]) for b in iter_batches(ds, SMALL, batch_size=3, limit=4)) == 4
    with pytest.raises(UserError, match="batch size must be positive"):
        list(iter_batches(ds, SMALL, batch_size=0))


def test_torch_data(synset_tree):
    import torch

    from edgecnn.data.torch_data import ImageDataset, calibration_batches, make_loader, torch_batches

    ds = ImageFolder(synset_tree)
    images, labels = next(torch_batches(ds, SMALL, batch_size=8))
    assert isinstance(images, torch.Tensor) and images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 2]
    calib = calibration_batches(ds, SMALL, num_images=2, batch_size=1)
    assert len(calib) == 2 and calib[0].shape == (1, 3, 8, 8)
    train = ImageDataset(ds, SMALL, train=True, seed=1)
    first, label = train[0]
    assert first.shape == (3, 8, 8) and label == 0
    assert torch.equal(train[0][0], first)  # same seed, epoch and index: same augmentation
    loader = make_loader(ds, SMALL, batch_size=2, train=True)
    assert sum(len(y) for _, y in loader) == 3


def test_augmentation_crops_and_flips(tmp_path):
    import torch

    from edgecnn.data.torch_data import ImageDataset

    array = np.zeros((10, 10, 3), np.uint8)
    array[:, :5] = 255
    Image.fromarray(array).save(tmp_path / "half.png")
    ds = ImageDataset(ImageFolder(tmp_path), SMALL, train=True)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        image = ds[0][0]
        seen.add(bool(image[0, 4, 0] > image[0, 4, -1]))  # white on the left unless flipped
    assert seen == {True, False}
    assert torch.isfinite(image).all()


def test_shared_sample_labels_match_the_manifest(shared_data):
    ds = ImageFolder(shared_data / "imagenet-sample")
    assert len(ds) == 1150 and ds.num_classes == 1000
    labels = {str(path.relative_to(shared_data / "imagenet-sample")): label for path, label in ds.items}
    with open(shared_data / "imagenet-sample-manifest.csv", newline="") as f:
        manifest = {row["relpath"]: int(row["class_index"]) for row in csv.DictReader(f)}
    assert labels == manifest
