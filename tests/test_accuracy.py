"""Accuracy on a tiny labelled folder generated here: a colour classifier whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgecnn.errors import UserError
from edgecnn.export.metadata import write_metadata
from edgecnn.measure.accuracy import evaluate_onnx
from edgecnn.preprocess import Preprocess

PREPROCESS = Preprocess(input_size=8, resize=8, crop=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_scale=1 / 255)
COLOURS = {"red": (220, 10, 10), "green": (10, 220, 10), "blue": (10, 10, 220)}


@pytest.fixture
def folder(tmp_path):
    """data/<synset>/*.png, classes.txt in the parent: n003 blue = 0, n001 red = 1, n002 green = 2.
    The green folder holds one red image, so a perfect colour classifier scores 11/12."""
    (tmp_path / "classes.txt").write_text("n003 blue\nn001 red\nn002 green\n")
    data = tmp_path / "data"
    for synset, colour in (("n001", "red"), ("n002", "green"), ("n003", "blue")):
        (data / synset).mkdir(parents=True)
        for i in range(4):
            fill = COLOURS["red"] if (synset == "n002" and i == 3) else COLOURS[colour]
            Image.new("RGB", (12 + i, 10), fill).save(data / synset / f"img{i}.png")
    return data


def colour_model(path, class_of_channel, batch="N", preprocess=PREPROCESS, size=8):
    """logits[k] = mean of the RGB channel ``class_of_channel`` maps to class k (no torch);
    ``size`` None leaves height and width symbolic."""
    weight = np.zeros((3, 3), np.float32)
    for channel, cls in enumerate(class_of_channel):
        weight[cls, channel] = 1.0
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size or "H", size or "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if preprocess is not None:
        write_metadata(model, preprocess.to_metadata())
    onnx.save(model, str(path))
    return path


def test_top1_top5_and_agreement(folder, tmp_path):
    model = colour_model(tmp_path / "m.onnx", class_of_channel=(1, 2, 0))  # R->1, G->2, B->0: correct
    reference = colour_model(tmp_path / "ref.onnx", class_of_channel=(0, 2, 1))  # red/blue swapped
    report = evaluate_onnx(model, folder, reference=reference, batch_size=5, progress=False)
    assert report.samples == 12 and report.labelled
    assert report.top1 == pytest.approx(11 / 12) and report.top5 == 1.0
    assert report.agreement == pytest.approx(3 / 12) and report.reference_top1 == pytest.approx(3 / 12)
    assert report.preprocess["input_size"] == 8


def test_fixed_batch_model_and_limit(folder, tmp_path):
    model = colour_model(tmp_path / "b1.onnx", class_of_channel=(1, 2, 0), batch=1)
    report = evaluate_onnx(model, folder, batch_size=5, limit=3, progress=False)
    assert report.samples == 3 and report.top1 == 1.0  # one image from each class (spread, not the first 3)


def test_missing_preprocessing_is_a_user_error(folder, tmp_path):
    bare = colour_model(tmp_path / "bare.onnx", class_of_channel=(1, 2, 0), preprocess=None)
    with pytest.raises(UserError, match="--preprocess"):
        evaluate_onnx(bare, folder, progress=False)
    report = evaluate_onnx(bare, folder, preprocess=PREPROCESS, progress=False)
    assert report.top1 == pytest.approx(11 / 12)


def test_eval_command_on_onnx_and_zoo_model(folder, tmp_path, torch_one_thread):
    from edgecnn.cli import cli

    model = colour_model(tmp_path / "m.onnx", class_of_channel=(1, 2, 0))
    result = CliRunner().invoke(cli, ["eval", str(model), "--data", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["top1"] == pytest.approx(11 / 12)
    any_size = colour_model(tmp_path / "any.onnx", class_of_channel=(1, 2, 0), size=None)
    zoo_args = ["eval", "squeezenet1_1", "--num-classes", "3", "--preprocess-set", "input_size=64", "--data", str(folder)]
    mismatch = CliRunner().invoke(cli, zoo_args + ["--reference", str(model)])
    assert isinstance(mismatch.exception, UserError) and "8x8" in str(mismatch.exception)
    zoo = CliRunner().invoke(cli, zoo_args + ["--reference", str(any_size), "--json"])
    assert zoo.exit_code == 0, zoo.output
    payload = json.loads(zoo.output)
    assert payload["samples"] == 12 and 0 <= payload["top1"] <= 1 and payload["reference_top1"] == pytest.approx(11 / 12)
    wrong = CliRunner().invoke(cli, ["eval", str(model), "--data", str(folder), "--weights", "imagenet"])
    assert isinstance(wrong.exception, UserError)


def test_tied_logits_rank_by_class_index_in_every_accuracy_path(monkeypatch):
    """An int8 model's quantized logits often tie at the top; one rule (lower class first, as
    argmax) must decide them everywhere, or one file scores differently in two tools."""
    import sys
    from pathlib import Path

    from edgecnn.measure.accuracy import ranked_classes

    rng = np.random.default_rng(0)
    logits = np.round(rng.standard_normal((400, 1000)) * 2).astype(np.float32) / 2  # coarse: ties everywhere
    logits[:, 7] = logits[:, 900] = logits.max(axis=1) + 1.0  # a tie for first place in every row
    ranked = ranked_classes(logits)
    assert ranked.shape == (400, 5)
    assert (ranked[:, 0] == logits.argmax(axis=1)).all() and (ranked[:, 0] == 7).all() and (ranked[:, 1] == 900).all()
    order = np.take_along_axis(logits, ranked, axis=1)
    assert (np.diff(order, axis=1) <= 0).all()  # best first
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    sys.modules.pop("_stats", None)
    from _stats import top5_of

    assert (top5_of(logits) == ranked).all()
