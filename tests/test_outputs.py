"""Nothing lost, nothing silently wrong: the README's reliability promise, case by case.

* Nothing the user owns is overwritten without --force, and --force replaces only a folder
  edgecnn made (its manifest inside) or a file it made (tests/test_file_ownership.py); the rules hold at the start, at commit time, for
  default output paths and against a concurrent run.
* Bad input is one line on stderr and exit code 2, never a traceback (nor a graph dump).
* No accuracy figure without labels that map to the model's outputs.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgecnn.cli import main
from edgecnn.errors import UserError

MODELS_PY = '''
import torch
import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self, num_classes=10, extra=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.extra = extra
        self.fc = nn.Linear(8, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.extra is not None:
            x = self.extra(x)
        return self.fc(x.mean((2, 3)))


class Erfinv(nn.Module):
    def forward(self, x):
        return torch.special.erfinv(torch.tanh(x) * 0.5)


class Volume(nn.Module):
    """A Conv3d over the channel axis: a layer kind the passes do not know."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.c3(x.unsqueeze(1)).squeeze(1)


def good(num_classes=10):
    return Tiny(num_classes)


def wide(num_classes=1000):
    return Tiny(num_classes)


def bad_op(num_classes=10):
    return Tiny(num_classes, Erfinv())


def volume(num_classes=10):
    return Tiny(num_classes, Volume())
'''


def run(argv, capfd):
    """(exit code, stdout, stderr) of ``edgecnn ARGV`` captured at the file-descriptor level."""
    try:
        code = main(list(map(str, argv)))
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    return code or 0, out, err


def assert_one_line_error(code, out, err, *words):
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecnn: error:"), err
    assert "Traceback" not in out + err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture(scope="module")
def models_py(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text(MODELS_PY)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A labelled folder: 3 classes x 3 small PNGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "train"
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, models_py) -> Path:
    """A 10-class tiny model exported by edgecnn (with preprocessing metadata), 32x32 inputs."""
    from edgecnn.export.onnx_export import export_with_parity
    from edgecnn.models import load_model

    loaded = load_model(f"{models_py}:good")
    loaded.preprocess = loaded.preprocess.replace(input_size=32)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_with_parity(loaded, path, input_shape=(1, 3, 32, 32), parity=False)
    return path


def _sentinel_folder(root: Path) -> Path:
    folder = root / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("my thesis")
    (folder / "sub" / "data.csv").write_text("1,2,3")
    return folder


def _untouched(folder: Path) -> None:
    assert (folder / "thesis.tex").read_text() == "my thesis"
    assert (folder / "sub" / "data.csv").read_text() == "1,2,3"
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --- files the user owns are never lost ----------------------------------------------------


def test_force_refuses_a_folder_edgecnn_did_not_write(tmp_path, capfd):
    folder = _sentinel_folder(tmp_path)
    code, out, err = run(["compress", "squeezenet", "--bits", "8", "-o", folder, "--force"], capfd)
    assert_one_line_error(code, out, err, "not written by edgecnn")
    _untouched(folder)


def test_force_replaces_a_folder_edgecnn_wrote(tmp_path):
    from edgecnn.outputs import MANIFEST, check_output_dir, write_manifest

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "report.md").write_text("old")
    with pytest.raises(UserError, match="not written by edgecnn"):
        check_output_dir(folder, force=True)
    write_manifest(folder, "compress")
    assert (folder / MANIFEST).is_file()
    check_output_dir(folder, force=True)
    with pytest.raises(UserError, match="already exists"):
        check_output_dir(folder, force=False)


def test_commit_rechecks_the_output_folder(tmp_path):
    """A file created in the output folder while the job ran is not deleted at the end."""
    from edgecnn.pipeline import OutputFolder

    path = tmp_path / "out"
    out = OutputFolder(path, force=False)
    work = out.open()
    (work / "report.md").write_text("new result")
    path.mkdir()
    (path / "notes.txt").write_text("written during the run")
    with pytest.raises(UserError, match="already exists"):
        out.commit()
    out.abort()
    assert (path / "notes.txt").read_text() == "written during the run"
    assert not work.exists()


def test_commit_with_force_still_refuses_a_foreign_folder(tmp_path):
    from edgecnn.pipeline import OutputFolder

    path = tmp_path / "out"
    out = OutputFolder(path, force=True)
    out.open()
    folder = _sentinel_folder(tmp_path)
    folder.rename(path)
    with pytest.raises(UserError, match="not written by edgecnn"):
        out.commit()
    out.abort()
    assert (path / "thesis.tex").read_text() == "my thesis"


def test_a_concurrent_run_on_the_same_output_fails_fast(tmp_path, capfd):
    from edgecnn.outputs import output_lock
    from edgecnn.pipeline import OutputFolder

    path = tmp_path / "same"
    with output_lock(path):  # another run holds the output
        code, out, err = run(["compress", "squeezenet", "--bits", "8", "-o", path], capfd)
        assert_one_line_error(code, out, err, "another edgecnn run", "same")
        with pytest.raises(UserError, match="another edgecnn run"):
            OutputFolder(path, force=False).open()
    assert not path.exists()
    first = OutputFolder(path, force=False)
    first.open()
    try:
        with pytest.raises(UserError, match="another edgecnn run"):
            OutputFolder(path, force=True).open()
    finally:
        first.abort()
    second = OutputFolder(path, force=False)  # released: the next run may write it
    second.open()
    second.abort()


@pytest.mark.parametrize("where", [".", ".."])
def test_output_dot_and_dotdot_are_refused_before_any_work(tmp_path, capfd, monkeypatch, where):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("x")
    monkeypatch.chdir(cwd)
    code, out, err = run(["compress", "squeezenet", "--bits", "8", "-o", where, "--force"], capfd)
    assert_one_line_error(code, out, err, "current folder")
    assert (cwd / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in cwd.iterdir()) == ["keep.txt"]


def test_compile_default_output_follows_the_o_rules(tiny_onnx, tmp_path, capfd):
    src = tmp_path / "c.onnx"
    src.write_bytes(tiny_onnx.read_bytes())
    default = tmp_path / "c.ort.onnx"
    default.write_text("mine")
    code, out, err = run(["compile", src, "--backend", "ort"], capfd)
    assert_one_line_error(code, out, err, "c.ort.onnx", "--force")
    assert default.read_text() == "mine"
    code, out, err = run(["compile", src, "--backend", "ort", "--force"], capfd)
    assert_one_line_error(code, out, err, "c.ort.onnx", "not written by edgecnn")  # --force spares a user's file
    assert default.read_text() == "mine"
    default.unlink()
    assert run(["compile", src, "--backend", "ort"], capfd)[0] == 0
    code, out, err = run(["compile", src, "--backend", "ort", "--force"], capfd)  # its own output: replaced
    assert code == 0, err
    assert default.stat().st_size > 100


def test_pack_and_unpack_default_outputs_follow_the_o_rules(tiny_onnx, tmp_path, capfd):
    src = tmp_path / "m.onnx"
    src.write_bytes(tiny_onnx.read_bytes())
    (tmp_path / "m.ecnn").write_text("mine")
    code, out, err = run(["pack", src], capfd)
    assert_one_line_error(code, out, err, "m.ecnn", "--force")
    assert (tmp_path / "m.ecnn").read_text() == "mine"


# --- unwritable outputs are named as the problem, before the work -------------------------


def _unwritable(tmp_path: Path, name: str) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / name


def test_export_to_an_unwritable_path(tmp_path, capfd, models_py):
    target = _unwritable(tmp_path, "m.onnx")
    code, out, err = run(["export", f"{models_py}:good", "-o", target], capfd)
    assert_one_line_error(code, out, err, str(target))


def test_pack_and_unpack_to_an_unwritable_path(tiny_onnx, tmp_path, capfd):
    target = _unwritable(tmp_path, "m.ecnn")
    code, out, err = run(["pack", tiny_onnx, "-o", target], capfd)
    assert_one_line_error(code, out, err, str(target))
    packed = tmp_path / "m.ecnn"
    assert run(["pack", tiny_onnx, "-o", packed], capfd)[0] == 0
    target = _unwritable(tmp_path, "back.onnx")
    code, out, err = run(["unpack", packed, "-o", target], capfd)
    assert_one_line_error(code, out, err, str(target))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_compile_to_proc_names_the_output_not_the_input(tiny_onnx, capfd):
    code, out, err = run(["compile", tiny_onnx, "--backend", "ort", "-o", "/proc/z.onnx"], capfd)
    assert_one_line_error(code, out, err, "/proc/z.onnx", "output")
    assert str(tiny_onnx) not in err


def test_files_are_readable_by_others(tiny_onnx, tmp_path, capfd, models_py, images):
    """pack, unpack and finetune wrote mode 0600 (a temp file's); artifacts get 0666 & ~umask."""
    previous = os.umask(0o022)
    try:
        packed, back, student = tmp_path / "m.ecnn", tmp_path / "back.onnx", tmp_path / "student.pth"
        assert run(["pack", tiny_onnx, "-o", packed], capfd)[0] == 0
        assert run(["unpack", packed, "-o", back], capfd)[0] == 0
        code, out, err = run(["finetune", f"{models_py}:good", "--data", images, "--epochs", "1", "--batch-size", "4",
                              "--input-size", "32", "--device", "cpu", "-o", student, "--json"], capfd)
        assert code == 0, err
        for path in (packed, back, student):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(previous)


# --- one line, exit 2 ---------------------------------------------------------------------


def test_unsupported_onnx_op_is_one_line_naming_op_and_layer(tmp_path, capfd, models_py):
    code, out, err = run(["export", f"{models_py}:bad_op", "-o", tmp_path / "m.onnx"], capfd)
    assert_one_line_error(code, out, err, "aten::erfinv", "'extra'", "--opset")
    assert out == ""  # no TorchScript graph dump on stdout


@pytest.mark.slow
def test_export_input_size_below_the_models_measured_minimum(tmp_path, capfd):
    from edgecnn.models import create
    from edgecnn.models.input_size import _runs, smallest_input_size

    code, out, err = run(["export", "squeezenet", "--input-size", "8", "-o", tmp_path / "s.onnx"], capfd)
    assert_one_line_error(code, out, err, "--input-size 8 is too small", "at least")
    minimum = int(err.split("at least ")[1].split()[0])
    module = create("squeezenet1_1").eval()
    assert minimum == smallest_input_size(module)
    assert _runs(module, minimum) and not _runs(module, minimum - 1)


@pytest.mark.slow
def test_export_input_size_that_cannot_fit_in_memory(tmp_path, capfd):
    code, out, err = run(["export", "mobilenet_v2", "--input-size", "100000", "-o", tmp_path / "m.onnx"], capfd)
    assert_one_line_error(code, out, err, "GB", "smaller --input-size")
    code, out, err = run(["profile", "mobilenet_v2", "--input-size", "100000"], capfd)
    assert_one_line_error(code, out, err, "smaller --input-size")


def test_user_model_without_weights_says_what_is_missing(capfd, models_py, tmp_path):
    code, out, err = run(["compress", f"{models_py}:good", "--bits", "8", "-o", tmp_path / "o"], capfd)
    assert_one_line_error(code, out, err, "--weights")
    assert "unknown model" not in err


def test_num_classes_hint_only_for_the_classifier(tmp_path, capfd, images):
    import torch

    from edgecnn.models import create

    state = create("squeezenet1_1").state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)  # first conv: 64 filters in the model
    bad = tmp_path / "first-conv.pth"
    torch.save(state, bad)
    code, out, err = run(["compress", "squeezenet1_1", "--weights", bad, "--calib", images, "-o", tmp_path / "o"], capfd)
    assert_one_line_error(code, out, err, "features.0.weight")
    assert "--num-classes 32" not in err
    state = create("squeezenet1_1").state_dict()
    state["classifier.1.weight"] = torch.zeros(32, 512, 1, 1)
    state["classifier.1.bias"] = torch.zeros(32)
    torch.save(state, bad)
    code, out, err = run(["compress", "squeezenet1_1", "--weights", bad, "--calib", images, "-o", tmp_path / "o"], capfd)
    assert_one_line_error(code, out, err, "--num-classes 32")


def test_pack_refuses_a_zero_byte_onnx(tmp_path, capfd):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, out, err = run(["pack", empty, "-o", tmp_path / "e.ecnn"], capfd)
    assert_one_line_error(code, out, err, "not an ONNX model")
    assert not (tmp_path / "e.ecnn").exists()


# --- numbers that are silently wrong ------------------------------------------------------


def _folder(root: Path, names, per_class: int = 1) -> Path:
    from PIL import Image

    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (36, 36), (i * 40, 90, 30)).save(root / name / f"{i}.png")
    return root


def test_imagenet_synset_folders_map_to_the_standard_order(tmp_path):
    from edgecnn.data.images import ImageFolder
    from edgecnn.data.labels import imagenet_synsets, resolve_labels

    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and list(synsets) == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[999] == "n15075141"
    data = ImageFolder(_folder(tmp_path / "val", ["n01440764", "n02102040", "n15075141"]))
    assert [label for _, label in data.items] == [0, 1, 2]
    assert resolve_labels(data, 1000) is None
    assert [label for _, label in data.items] == [0, synsets.index("n02102040"), 999]


def test_eval_refuses_accuracy_when_labels_cannot_be_resolved(tmp_path, capfd, tiny_onnx):
    data = _folder(tmp_path / "val", ["n01440764", "n02102040", "n15075141"])  # 3 folders, 10 outputs
    code, out, err = run(["eval", tiny_onnx, "--data", data], capfd)
    assert_one_line_error(code, out, err, "classes.txt", "--reference")
    code, out, err = run(["eval", tiny_onnx, "--data", data, "--reference", tiny_onnx, "--json"], capfd)
    assert code == 0, err
    result = json.loads(out)
    assert result["top1"] is None and result["agreement"] == 1.0 and "classes.txt" in result["note"]
    (tmp_path / "classes.txt").write_text("".join(f"{n} x\n" for n in ["n01440764", "n02102040", "n15075141"]))
    code, out, err = run(["eval", tiny_onnx, "--data", data, "--json"], capfd)
    assert code == 0, err
    assert json.loads(out)["top1"] is not None


@pytest.mark.slow
def test_eval_synsets_without_classes_file_on_real_weights(shared_data, tmp_path, capfd):
    """21 synset folders spread over ImageNet, no classes.txt: scored in the standard order."""
    sample = shared_data / "imagenet-sample"
    chosen = sorted(p.name for p in sample.iterdir() if p.is_dir())[::40][:21]
    data = tmp_path / "val"
    for name in chosen:
        (data / name).mkdir(parents=True)
        for image in sorted((sample / name).iterdir())[:2]:
            (data / name / image.name).symlink_to(image)
    weights = shared_data / "weights" / "squeezenet1_1.pth"
    code, out, err = run(["eval", "squeezenet1_1", "--weights", weights, "--data", data, "--json"], capfd)
    assert code == 0, err
    assert json.loads(out)["top1"] > 0.4  # sorted folder indices 0..20 gave ~0


def test_preprocess_set_applies_to_onnx_files_or_is_refused(tmp_path, capfd, tiny_onnx, images):
    code, out, err = run(["eval", tiny_onnx, "--data", images, "--preprocess-set", "mean=1,2"], capfd)
    assert_one_line_error(code, out, err, "mean")
    ref = ["--reference", tiny_onnx]  # the class folders are not the model's classes: agreement only
    code, out, err = run(["eval", tiny_onnx, "--data", images, *ref, "--preprocess-set", "mean=200,200,200", "--json"], capfd)
    assert code == 0, err
    assert json.loads(out)["preprocess"]["mean"] == [200.0, 200.0, 200.0]
    code, out, err = run(["eval", tiny_onnx, "--data", images, *ref, "--preprocess", "caffe", "--preprocess-set", "crop=20", "--json"], capfd)
    assert code == 0, err
    prep = json.loads(out)["preprocess"]
    assert prep["crop"] == 20 and prep["channel_order"] == "BGR" and prep["input_size"] == 32
    code, out, err = run(["eval", tiny_onnx, "--data", images, *ref, "--preprocess-set", "input_size=64"], capfd)
    assert_one_line_error(code, out, err, "32x32")
    code, out, err = run(["eval", "squeezenet", "--data", images, "--preprocess-set", "mean=1,2"], capfd)  # zoo models alike
    assert_one_line_error(code, out, err, "mean")


def test_quantize_lists_layers_of_a_kind_it_does_not_know(models_py, torch_one_thread):
    import torch

    from edgecnn.models import load_model
    from edgecnn.passes.registry import PassContext, run_pass

    module = load_model(f"{models_py}:volume").module
    ctx = PassContext(example_input=torch.zeros(1, 3, 16, 16), calib_batches=[torch.rand(4, 3, 16, 16)], progress=False)
    run_pass("quantize", module, {"bits": 8}, ctx)
    assert ctx.reports[-1].summary["skipped_layers"] == [{"layer": "extra.c3", "kind": "Conv3d"}]


def test_stage_that_collapses_accuracy_is_flagged():
    from edgecnn.report import accuracy_drops, to_markdown

    rows = [
        {"stage": "baseline", "target": "fp32", "top1": 97.8},
        {"stage": "fold_bn", "target": "fp32", "top1": 97.8},
        {"stage": "channel_prune", "target": "fp32", "top1": 9.7},
        {"stage": "quantize", "target": "ort-x86", "top1": 9.5},
    ]
    drops = accuracy_drops(rows, 5.0)
    assert len(drops) == 1 and "channel_prune" in drops[0] and "88.1" in drops[0]
    assert accuracy_drops(rows, 90.0) == []
    report = _report(rows, warnings=drops)
    assert "## Warnings" in to_markdown(report) and "channel_prune" in to_markdown(report).split("## Results")[0]


def _report(rows, **extra):
    from edgecnn.report import new_result

    base = {
        "model": {"name": "m", "num_classes": 1000, "input_shape": [1, 3, 224, 224]},
        "data": {"source": "user"}, "targets": ["ort-x86", "trt"], "tool": {"version": "0"},
        "created_utc": "now", "total_seconds": 1.0, "stages": [], "notes": [],
        "results": [new_result(**r) for r in rows],
    }
    base.update(extra)
    return base


def test_agreement_on_calibration_images_is_named_so():
    from edgecnn.report import table_rows, to_markdown

    report = _report([{"stage": "baseline", "target": "fp32", "agreement": 100.0}])
    report["data"]["agreement_on"] = "calibration images"
    header, _ = table_rows(report)
    assert "agree % (calib)" in header and "agree %" not in [h for h in header if h != "agree % (calib)"]
    assert "not an accuracy figure" in to_markdown(report)
    report["data"]["agreement_on"] = "evaluation images"
    assert "agree %" in table_rows(report)[0]


def test_accuracy_plot_answers_what_each_stage_cost():
    from edgecnn.report import accuracy_figure

    rows = [
        {"stage": "baseline", "target": "fp32", "top1": 97.8, "latency_ms_median": 0.29, "shipped_bytes": 2_440_000},
        {"stage": "fold_bn", "target": "fp32", "top1": 97.8, "latency_ms_median": 0.288, "shipped_bytes": 2_440_000},
        {"stage": "quantize", "target": "ort-x86", "top1": 97.5, "latency_ms_median": 0.277, "shipped_bytes": 557_700},
        {"stage": "quantize", "target": "trt", "top1": 97.45, "latency_ms_median": 0.3, "shipped_bytes": 560_000},
    ]
    fig = accuracy_figure(_report(rows))
    accuracy = fig.axes[0]
    low, high = accuracy.get_ylim()
    assert high - low >= 10  # a 0.3-point drop is not a cliff
    legend = [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert legend[0].startswith("FP32") and "ort-x86" in legend and "trt" in legend
    ticks = [t.get_text() for t in fig.axes[2].get_xticklabels()]
    assert ticks == ["baseline", "fold_bn", "quantize\nort-x86", "quantize\ntrt"]  # one column each: no overlap
    assert [ax.get_ylabel() for ax in fig.axes] == ["top-1 %", "shipped MB", "latency ms"]


# --- a small end-to-end run: manifest, .ecnn, skipped layers, class count, label refusal ---


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory, models_py, images):
    import torch

    from edgecnn.models import load_model

    root = tmp_path_factory.mktemp("run")
    weights = root / "volume.pth"
    torch.save(load_model(f"{models_py}:volume").module.state_dict(), weights)
    eval_data = _folder(root / "eval", [f"class{i:04d}" for i in range(12)])
    (root / "classes.txt").write_text("".join(f"class{i:04d} c{i}\n" for i in range(1000)))
    recipe = root / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        model: {{name: "{models_py}:volume", weights: "{weights}", preprocess: {{input_size: 32, resize: 36, crop: 32}}}}
        data: {{calib: "{images}", calib_images: 8}}
        stages: [{{quantize: {{bits: 8}}}}, export, {{measure: {{latency_runs: 5, warmup: 1, warmup_seconds: 0}}}}]
    """))
    out, out2 = root / "out", root / "out2"
    assert main(["compress", "--recipe", str(recipe), "-o", str(out), "--quiet"]) in (0, None)
    assert main(["compress", "--recipe", str(recipe), "--data", str(eval_data), "-o", str(out2), "--quiet"]) in (0, None)
    return out, out2


@pytest.mark.slow
def test_run_writes_manifest_ecnn_and_names_skipped_layers(volume_run):
    from edgecnn.outputs import is_edgecnn_output

    out, _ = volume_run
    assert is_edgecnn_output(out)
    report = json.loads((out / "report.json").read_text())
    ecnn = report["artifacts"]["ort-x86"]["ecnn"]
    assert (out / ecnn).is_file()
    assert (out / ecnn).stat().st_size == report["results"][-1]["shipped_bytes"]
    assert report["model"]["num_classes"] == 10
    assert any(s["kind"] == "Conv3d" and s["layer"] == "extra.c3" for s in report["skipped_layers"])
    assert any("Conv3d" in w for w in report["warnings"])
    md = (out / "report.md").read_text()
    assert "classes: 10" in md and "Conv3d" in md and "agree % (calib)" in md
    assert "Conv3d" in (out / "log.txt").read_text()
    assert report["data"]["agreement_on"] == "calibration images"


@pytest.mark.slow
def test_run_with_more_classes_than_outputs_warns_and_reports_no_accuracy(volume_run):
    _, out = volume_run
    report = json.loads((out / "report.json").read_text())
    assert all(r["top1"] is None for r in report["results"])
    assert all(r["agreement"] is not None for r in report["results"])
    assert any("1000 classes but the model outputs 10" in w for w in report["warnings"])
    assert "top-1 not measured" in (out / "log.txt").read_text()
    assert report["data"]["agreement_on"] == "evaluation images"


def test_zoo_imagenet_model_header_names_its_classes():
    from edgecnn.models import create
    from edgecnn.models.input_size import output_classes

    assert output_classes(create("squeezenet1_1").eval(), 64) == 1000
    assert output_classes(create("mobilenet_v2", num_classes=7).eval(), 64) == 7


def test_readme_states_the_reliability_promise():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    for promise in ("--force", "only what edgecnn made", "An input is never an output", "exit code 2", "accuracy",
                    "tests/test_outputs.py", "tests/test_file_ownership.py"):
        assert promise in section, promise


def test_layers_the_profiler_skips_reach_the_report(monkeypatch):
    """Whatever ``skipped`` list the MAC counter returns is shown, with each layer's kind."""
    from types import SimpleNamespace

    from edgecnn.pipeline import checkpoint

    fake = SimpleNamespace(params=10, nonzero_params=10, macs=40, skipped=[{"layer": "extra.c3", "kind": "Conv3d"}])
    monkeypatch.setattr(checkpoint, "profile_model", lambda model, size: fake)
    stats = checkpoint.profile(object(), 32)
    assert stats["macs"] == 40 and stats["skipped"] == [{"layer": "extra.c3", "kind": "Conv3d"}]
    from edgecnn.report import skipped_text

    assert "extra.c3 (Conv3d)" in skipped_text("the MAC count skips", stats["skipped"])


def test_one_atomic_write_path():
    """Files are written through edgecnn/fileio.py (folders through edgecnn/outputs.py), so every
    artifact gets the same atomic rename and the usual permissions."""
    root = Path(__file__).resolve().parents[1] / "edgecnn"
    allowed = {root / "fileio.py", root / "outputs.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path in allowed:
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(root)}: {word}" for word in ("mkstemp", "mkdtemp", "os.replace(") if word in text]
    assert offenders == []


def test_macs_count_every_convolution_and_name_what_they_skip():
    """A model with nn.Conv3d reported 40 MACs (its Linear only): conv of any dimension and
    transposed conv count, and a layer kind the counter does not know is listed with its kind."""
    import torch.nn as nn

    from edgecnn.models.macs import profile_model

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c3 = nn.Conv3d(1, 2, 3, padding=1)
            self.up = nn.ConvTranspose2d(6, 4, 3, stride=2)
            self.bi = nn.Bilinear(4, 4, 2)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            x = self.c3(x.unsqueeze(1)).flatten(1, 2)  # 1x6x8x8
            x = self.up(x).mean((2, 3))  # 1x4x17x17 -> 1x4
            return self.fc(x) + self.bi(x, x).sum()

    prof = profile_model(Net(), 8)
    c3 = 2 * 3 * 8 * 8 * (1 * 27)  # outputs x (in_channels / groups) x kernel volume
    up = 6 * 8 * 8 * (4 * 9)  # inputs x (out_channels / groups) x kernel area
    assert {r.name: r.macs for r in prof.rows} == {"c3": c3, "up": up, "fc": 40}
    assert prof.macs == c3 + up + 40
    assert prof.skipped == [{"layer": "bi", "kind": "Bilinear"}]
    assert {"conv3d", "transposed", "linear"} <= set(prof.by_kind)


@pytest.mark.slow
def test_wrote_is_said_only_after_the_commit(tmp_path, monkeypatch):
    """A refusal when the folder is put in place must not follow a 'wrote OUT/' line."""
    import io

    from rich.console import Console
    from test_golden_artifacts import _inputs

    from edgecnn.pipeline import run_recipe
    from edgecnn.pipeline.output import OutputFolder
    from edgecnn.recipe import validate

    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGECNN_TORCH_THREADS", "1")
    raw = {"model": {"name": "net.py:build", "weights": "weights.pth"}, "data": {"calib": "calib", "calib_images": 8},
           "stages": ["fold_bn", {"quantize": {"bits": 8}}, "export"], "targets": ["ort-x86"]}

    def run(out):
        text = io.StringIO()
        run_recipe(validate(raw, "test"), output=out, console=Console(file=text, width=120), progress=False)
        return text.getvalue()

    assert "wrote" in run(tmp_path / "ok")

    def refuse(self):
        raise UserError("output folder appeared meanwhile")

    monkeypatch.setattr(OutputFolder, "commit", refuse)
    text = io.StringIO()
    with pytest.raises(UserError, match="appeared meanwhile"):
        run_recipe(validate(raw, "test"), output=tmp_path / "refused", console=Console(file=text, width=120), progress=False)
    assert "wrote" not in text.getvalue()
