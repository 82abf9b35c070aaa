"""Relative paths mean what they meant where the user typed them, in every step of a run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecnn.data.images import ImageFolder
from edgecnn.preprocess import Preprocess


def _labelled_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_image_folder_items_are_absolute_whatever_the_working_folder(in_tmp):
    _labelled_folder(in_tmp / "sample")
    folder = ImageFolder("sample")
    assert str(folder.root) == "sample"  # messages name the folder as typed
    assert all(p.is_absolute() for p, _ in folder.items)
    (in_tmp / "list.txt").write_text("sample/class0/0.png 0\nsample/class1/1.png 1\n")
    listed = ImageFolder("list.txt")
    os.chdir(in_tmp / "sample")
    assert all(p.is_file() for p, _ in folder.items + listed.items)


def test_search_images_with_relative_paths_are_read_from_the_users_folder(in_tmp):
    """The search used to write its images' paths into a list file in its temporary folder,
    where relative paths then pointed into that folder."""
    from edgecnn.search.prepare import search_data

    _labelled_folder(in_tmp / "sample")
    items = [(Path("sample") / f"class{c}" / f"{i}.png", c) for c in range(2) for i in range(3)]
    preprocess = Preprocess(input_size=16, resize=16, crop=16)
    data = search_data(items, preprocess, calib_images=2)
    assert data.images.shape == (6, 3, 16, 16) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_recovery_images_are_absolute(in_tmp):
    from edgecnn.search.prepare import recovery_images

    _labelled_folder(in_tmp / "photos")
    paths = recovery_images(Path("photos"))
    assert len(paths) == 6 and all(p.is_absolute() for p in paths)


@pytest.mark.slow
def test_search_with_relative_data_folder_end_to_end(shared_data, in_tmp, capsys):
    """`compress squeezenet --max-drop 1 --data <relative folder>` used to fail once the search
    read its images from its temporary folder. A small labelled folder (relative links to the
    shared sample) and a small time budget keep it short."""
    import json

    from edgecnn.cli import main

    sample = shared_data / "imagenet-sample"
    (in_tmp / "classes.txt").write_text((shared_data / "classes.txt").read_text())
    for synset in sorted(p.name for p in sample.iterdir() if p.is_dir())[:6]:
        (in_tmp / "sample" / synset).mkdir(parents=True)
        for image in sorted((sample / synset).iterdir())[:2]:
            (in_tmp / "sample" / synset / image.name).symlink_to(image)
    main(["compress", "squeezenet", "--weights", str(shared_data / "weights" / "squeezenet1_1.pth"), "--max-drop", "1",
          "--data", "sample", "--calib", "sample", "--search-time", "0.05", "-o", "out", "--quiet"])
    report = json.loads((in_tmp / "out" / "report.json").read_text())
    search = next(s for s in report["stages"] if s["name"] == "search")["summary"]
    assert search["chosen_layers"] and report["data"]["eval_images"] > 0
    assert report["data"]["from_output"] == {"calib": os.path.join("..", "sample"), "eval": os.path.join("..", "sample")}


def test_ship_finds_the_runs_images_from_another_working_folder(in_tmp, monkeypatch):
    """The report keeps --data as typed (relative to where compress ran) and relative to the
    output folder; ship, run from elsewhere, finds the golden candidates by the second."""
    from edgecnn.pipeline.runner import _paths_from_output
    from edgecnn.ship.source import Source, _data_folder

    _labelled_folder(in_tmp / "work" / "sample")
    monkeypatch.chdir(in_tmp / "work")
    data = {"source": "user", "calib": None, "eval": "sample", "train": "missing"}
    data.update(_paths_from_output(data, "out"))
    assert data["from_output"] == {"eval": os.path.join("..", "sample")}
    (in_tmp / "work" / "out").mkdir()
    source = Source(onnx=Path("out/m.onnx"), target="ort-x86", metadata={}, folder=Path("out"), report={"data": data})
    assert len(_data_folder(source).items) == 6
    monkeypatch.chdir(in_tmp)  # "sample" means nothing here
    source.folder = Path("work/out")
    assert len(_data_folder(source).items) == 6
    data.pop("from_output")
    assert _data_folder(source) is None
