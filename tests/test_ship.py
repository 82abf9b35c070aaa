"""``edgecnn ship`` and ``ship --check``: bundles from a small model (compress --ship), the check's
failure lines, the sample's preprocessing, --force, and the sample in a fresh venv holding only
onnxruntime, numpy and pillow (small bundle always; the shared ImageNet models when ../shared exists).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.cli import cli, main
from edgecnn.errors import UserError

SMALL = """
data:
  embedded: {input_size: 32, epochs: 2, max_train_images: 300, max_test_images: 60}
  calib_images: 16
  batch_size: 16
stages:
  - fold_bn
  - quantize: {bits: 8, calibrator: max}
  - export
  - measure: {checkpoints: final, latency_runs: 5, warmup: 1, warmup_seconds: 0.0, plot: false}
"""
LAYOUT = {"README.md", "classify.py", "labels.txt", "preprocess.json", "model.onnx", "manifest.json",
          "golden/image.png", "golden/input.npy", "golden/expected.json"}


def _cli(*args) -> None:
    """The command line without main()'s exit: a UserError stays an exception."""
    cli.main(args=[str(a) for a in args], standalone_mode=False)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _check_cli(folder: Path, capsys, *extra) -> tuple[int, str, str]:
    capsys.readouterr()
    code = 0
    try:
        main(["ship", "--check", str(folder), *extra])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _rehash(folder: Path) -> None:
    """Re-sign a deliberately edited bundle, so that the step after the hashes sees the edit."""
    from edgecnn.ship.bundle import sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        entry["sha256"] = sha256(folder / rel)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """``compress squeezenet --ship`` on the digits default, small, for ort-x86 and trt."""
    tmp = tmp_path_factory.mktemp("ship")
    recipe = tmp / "small.yaml"
    recipe.write_text(SMALL)
    out = tmp / "out"
    main(["compress", "squeezenet", "--recipe", str(recipe), "--target", "ort-x86", "--target", "trt", "-o", str(out),
          "--quiet", "--ship"])
    return out


@pytest.fixture()
def bundle(small_run, tmp_path) -> Path:
    """A private copy of the ort-x86 bundle, free to break."""
    return Path(shutil.copytree(small_run / "bundle-ort-x86", tmp_path / "bundle"))


# --- what a bundle holds ----------------------------------------------------------------------


@pytest.mark.slow
def test_compress_ship_writes_checked_bundles(small_run, capsys):
    from edgecnn.ship import check_bundle

    report = json.loads((small_run / "report.json").read_text())
    for target, extra in (("ort-x86", {"model.ort", "required_operators_and_types.config"}), ("trt", {"build_engine.sh"})):
        folder = small_run / f"bundle-{target}"
        assert _files(folder) == LAYOUT | extra
        assert not list(folder.rglob("*.engine"))
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["format"] == "edgecnn-bundle" and manifest["target"] == target
        assert set(manifest["files"]) == _files(folder) - {"manifest.json"}
        assert (folder / "model.onnx").read_bytes() == (small_run / target / "model.onnx").read_bytes()
        result = check_bundle(folder)
        assert result.failures == [] and len(result.passed) == 3 + (2 if target == "ort-x86" else 1)
        labels = (folder / "labels.txt").read_text().splitlines()
        assert labels == [f"digit_{d}" for d in range(10)]
        row = next(r for r in report["results"] if r["target"] == target)
        readme = (folder / "README.md").read_text()
        assert f"{row['onnx_bytes']:,} B" in readme
        if row["latency_ms_median"] is None:  # trt: not timed on the CPU
            assert "not measured for this target" in readme and "-o model.engine" in readme
        else:
            assert report["latency_note"] in readme and f"{row['latency_ms_median']:.3f} ms" in readme
        assert "accuracy is on digits, not ImageNet" in readme and "onnxruntime " in readme
        expected = json.loads((folder / "golden" / "expected.json").read_text())
        assert expected["origin"].startswith("embedded UCI digits, test split")
        assert expected["top1_margin"] > 2 * expected["atol"] > 0
    code, out, err = _check_cli(small_run / "bundle-ort-x86", capsys)
    assert code == 0 and err == "" and "reproduces the golden top-5 from model.ort" in out


@pytest.mark.slow
def test_trt_bundle_carries_the_trtexec_line_not_an_engine(small_run):
    from edgecnn.backends.tensorrt import config_for_onnx
    from edgecnn.backends.trtexec import format_command, trtexec_command

    folder = small_run / "bundle-trt"
    script = (folder / "build_engine.sh").read_text()
    for release in ("8.5", "8.6", "10", "11"):
        line = format_command(trtexec_command("model.onnx", config_for_onnx(folder / "model.onnx", release),
                                              save_engine="model.engine"))
        assert f"  {release}) {line} ;;" in script
    assert "edgecnn compile model.onnx --backend trt -o model.engine" in script
    assert subprocess.run(["sh", "-n", str(folder / "build_engine.sh")]).returncode == 0
    assert "int8/fp16 kernels round differently" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_ort_format_file_gives_the_onnx_output(small_run):
    """The quantized .ort file loads and computes what the .onnx does, within the golden tolerance."""
    import onnxruntime as ort

    folder = small_run / "bundle-ort-x86"
    expected = json.loads((folder / "golden" / "expected.json").read_text())
    x = np.load(folder / "golden" / "input.npy")
    outs = []
    for name in ("model.onnx", "model.ort"):
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    assert np.abs(outs[0] - outs[1]).max() <= expected["atol"]
    ops = (folder / "required_operators_and_types.config").read_text()
    assert "QLinearConv" in ops  # written at 'extended': Q/DQ fused into integer kernels


# --- ship --check: one line per failure ----------------------------------------------------------


@pytest.mark.slow
def test_tampered_file_fails_with_one_line(bundle, capsys):
    labels = bundle / "labels.txt"
    labels.write_text(labels.read_text().replace("digit_3", "digit_8"))
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2
    assert err.splitlines() == ["edgecnn: check failed: labels.txt: SHA-256 differs from manifest.json "
                                "(the file was changed after shipping)"]


@pytest.mark.slow
def test_wrong_label_count_fails_with_one_line(bundle, capsys):
    labels = bundle / "labels.txt"
    labels.write_text("".join(f"{n}\n" for n in labels.read_text().splitlines()[:-1]))
    _rehash(bundle)
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2
    assert err.splitlines() == ["edgecnn: check failed: labels.txt: 9 class names but model.onnx has 10 outputs"]


@pytest.mark.slow
def test_preprocessing_mismatch_fails_with_one_line(bundle, capsys):
    pre = json.loads((bundle / "preprocess.json").read_text())
    pre["mean"] = [0.5, 0.5, 0.5]
    (bundle / "preprocess.json").write_text(json.dumps(pre))
    _rehash(bundle)
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("edgecnn: check failed: preprocess.json differs from model.onnx's metadata: mean (0.5, 0.5, 0.5)")


@pytest.mark.slow
def test_golden_output_mismatch_is_caught(bundle, capsys):
    expected = json.loads((bundle / "golden" / "expected.json").read_text())
    expected["top5"][1]["logit"] += 3 * expected["atol"]
    (bundle / "golden" / "expected.json").write_text(json.dumps(expected))
    _rehash(bundle)
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2
    assert err.splitlines()[0].startswith(f"edgecnn: check failed: model.onnx: logit of class {expected['top5'][1]['index']}")


@pytest.mark.slow
def test_sample_preprocessing_edit_is_caught(bundle, capsys):
    sample = bundle / "classify.py"
    sample.write_text(sample.read_text().replace("Image.BILINEAR", "Image.NEAREST"))
    _rehash(bundle)
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2 and "classify.py preprocesses golden/image.png differently" in err


@pytest.mark.slow
def test_unlisted_file_and_missing_manifest(bundle, capsys):
    (bundle / "extra.bin").write_bytes(b"x")
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2 and err.splitlines() == ["edgecnn: check failed: extra.bin: not listed in manifest.json"]
    (bundle / "extra.bin").unlink()
    (bundle / "manifest.json").unlink()
    code, _, err = _check_cli(bundle, capsys)
    assert code == 2 and "manifest.json: missing or not an edgecnn bundle manifest" in err


# --- the sample ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["torchvision", "caffe", "tf"])
@pytest.mark.parametrize("size", [(300, 200), (180, 260), (256, 256)])
def test_sample_preprocessing_equals_edgecnn(preset, size):
    from PIL import Image

    from edgecnn.preprocess import get_preset
    from edgecnn.ship import sample

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for pre in (get_preset(preset), get_preset(preset).replace(input_size=160)):
        ours = sample.preprocess(image, json.loads(json.dumps(pre.to_dict())))
        assert ours.shape == (1, 3, pre.input_size, pre.input_size)
        np.testing.assert_array_equal(ours[0], pre.apply(image))


def test_sample_imports_only_onnxruntime_numpy_pillow():
    import ast

    from edgecnn.ship import sample

    tree = ast.parse(Path(sample.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert roots - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "PIL"}


# --- sources, --force, bad input -----------------------------------------------------------------


def _tiny_onnx(path: Path, labels=None, extra=None) -> Path:
    """GlobalAveragePool + Gemm on 8x8 images: 3 logits, one per colour channel."""
    from edgecnn.export.metadata import set_metadata
    from edgecnn.preprocess import Preprocess

    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    meta = Preprocess(input_size=8, resize=8, crop=8, mean=(0.5,) * 3, std=(0.5,) * 3).to_metadata()
    if labels:
        meta["edgecnn.labels"] = json.dumps(labels)
    meta.update(extra or {})
    set_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def _red(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (12, 10), (220, 30, 10)).save(path)
    return path


@pytest.mark.slow
def test_bare_onnx_needs_labels_and_a_golden_image(tmp_path):
    from edgecnn.ship import build_bundle

    model = _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="carries no class names .* pass --labels FILE"):
        build_bundle(model, tmp_path / "b", golden=_red(tmp_path / "red.png"))
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="has 2 class names but the model has 3 outputs"):
        build_bundle(model, tmp_path / "b", golden=tmp_path / "red.png", labels=tmp_path / "two.txt")
    model = _tiny_onnx(tmp_path / "m.onnx", labels=["red", "green", "blue"])
    with pytest.raises(UserError, match="pass --golden IMAGE"):
        build_bundle(model, tmp_path / "b")
    from PIL import Image

    Image.new("RGB", (8, 8), (90, 90, 90)).save(tmp_path / "grey.png")
    with pytest.raises(UserError, match="separates the model's top-1 from its top-2"):
        build_bundle(model, tmp_path / "b", golden=tmp_path / "grey.png")
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]
    bundle = build_bundle(model, tmp_path / "b", golden=tmp_path / "red.png")
    assert bundle.golden["top5"][0]["label"] == "red" and bundle.target == "ort-x86"


def test_classes_txt_labels_and_quantized_target_mismatch(tmp_path):
    from edgecnn.ship import build_bundle
    from edgecnn.ship.source import read_labels_file

    (tmp_path / "classes.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    assert read_labels_file(tmp_path / "classes.txt") == ["tench, Tinca tinca", "goldfish"]
    model = _tiny_onnx(tmp_path / "q.onnx", labels=["r", "g", "b"],
                       extra={"edgecnn.precision": "int8", "edgecnn.target": "trt"})
    with pytest.raises(UserError, match="quantized for trt .* ship it with --target trt"):
        build_bundle(model, tmp_path / "b", target="ort-x86", golden=_red(tmp_path / "red.png"))


@pytest.mark.slow
def test_force_replaces_only_a_bundle(tmp_path, capsys):
    model = _tiny_onnx(tmp_path / "m.onnx", labels=["red", "green", "blue"])
    red = _red(tmp_path / "red.png")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for args, message in (([], "already exists; pass --force"), (["--force"], "is not a bundle edgecnn wrote")):
        with pytest.raises(UserError, match=message):
            _cli("ship", model, "-o", mine, "--golden", red, *args)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "bundle"
    _cli("ship", model, "-o", out, "--golden", red, "--target", "ort-arm")
    with pytest.raises(UserError, match="already exists"):
        _cli("ship", model, "-o", out, "--golden", red)
    (out / "stale.txt").write_text("from before")
    _cli("ship", model, "-o", out, "--golden", red, "--force")
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["target"] == "ort-x86"


@pytest.mark.slow
def test_output_folder_target_must_exist(small_run, tmp_path):
    with pytest.raises(UserError, match="has no ort-arm model; it has: ort-x86, trt"):
        _cli("ship", small_run, "-o", tmp_path / "b", "--target", "ort-arm")
    with pytest.raises(UserError, match="not an edgecnn output folder"):
        _cli("ship", tmp_path, "-o", tmp_path / "b")


def test_ship_stage_in_recipes():
    from edgecnn.recipe import Flags, apply_flags, recipe_from_flags, validate

    raw = recipe_from_flags(None, model="squeezenet", ship=True)
    assert validate(raw).stages[-1].name == "ship"
    again, notes = apply_flags(raw, Flags(ship=True))
    assert [s for s in again["stages"] if s == "ship"] == ["ship"] and "already has a ship stage" in notes[0]
    raw["stages"] = ["fold_bn", "export", "ship", "measure"]
    with pytest.raises(UserError, match="'ship' must be the last stage"):
        validate(raw)
    raw["stages"] = ["fold_bn", "ship"]
    with pytest.raises(UserError, match="after 'export'"):
        validate(raw)


# --- a fresh venv holding only onnxruntime, numpy and pillow -------------------------------------


def _outside_env() -> dict:
    """The environment a user's fresh venv sees: no PYTHONPATH pointing into a checkout of edgecnn."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory) -> str:
    """A venv without system site-packages: the installed versions of onnxruntime, numpy and pillow
    (and their own dependencies) from pip, its cache or PyPI. Skips when pip cannot get them."""
    from importlib.metadata import version

    venv = tmp_path_factory.mktemp("clean-venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pins = [f"{name}=={version(name)}" for name in ("onnxruntime", "numpy", "pillow")]
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"pip could not install {' '.join(pins)} into a fresh venv: {done.stderr.strip()[-300:]}")
    probe = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('torch', 'edgecnn', 'onnx') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, check=True, cwd=venv,
                           env=_outside_env())
    assert probe.stdout.strip() == "[]"
    return python


def _sample_top1(python: str, bundle: Path, *args) -> dict:
    done = subprocess.run([python, str(bundle / "classify.py"), str(bundle / "golden" / "image.png"), "--json", *args],
                          capture_output=True, text=True, cwd=bundle, timeout=300, env=_outside_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["top5"][0]


@pytest.mark.slow
def test_small_bundle_in_a_fresh_venv(small_run, clean_python, capsys):
    for target in ("ort-x86", "trt"):
        folder = small_run / f"bundle-{target}"
        code, out, err = _check_cli(folder, capsys, "--python", clean_python)
        assert code == 0 and err == "", err
        selftest = subprocess.run([clean_python, "classify.py", "--selftest"], capture_output=True, text=True, cwd=folder,
                                  env=_outside_env())
        assert selftest.returncode == 0 and "golden test passed" in selftest.stdout
    expected = json.loads((small_run / "bundle-ort-x86" / "golden" / "expected.json").read_text())
    assert _sample_top1(clean_python, small_run / "bundle-ort-x86", "--model", "model.ort")["index"] == expected["top5"][0]["index"]


# --- the shared ImageNet artifacts ------------------------------------------------------------


def _class_index(shared: Path, synset: str) -> int:
    ids = [line.split(" ", 1)[0] for line in (shared / "classes.txt").read_text().splitlines()]
    return ids.index(synset)


@pytest.mark.slow
def test_shared_squeezenet_int8_bundle_classifies_its_golden_image(shared_data, clean_python, tmp_path, capsys):
    """compress squeezenet1_1 int8 on real weights with --ship; golden from the evaluation images."""
    sample = shared_data / "imagenet-sample"
    recipe = tmp_path / "sq.yaml"
    recipe.write_text(
        f"model: {{name: squeezenet1_1, weights: {shared_data / 'weights' / 'squeezenet1_1.pth'}}}\n"
        f"data: {{calib: {sample}, eval: {sample}, calib_images: 16, eval_images: 16, batch_size: 16}}\n"
        "stages: [fold_bn, {quantize: {bits: 8, calibrator: max}}, export, ship]\n"
        "targets: [ort-x86]\n")
    out = tmp_path / "out"
    main(["compress", "--recipe", str(recipe), "-o", str(out), "--quiet"])
    bundle = out / "bundle-ort-x86"
    labels = (bundle / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench, Tinca tinca"
    expected = json.loads((bundle / "golden" / "expected.json").read_text())
    truth = _class_index(shared_data, Path(expected["origin"]).parent.name)
    assert expected["true_label"] == truth
    for model in ("model.onnx", "model.ort"):
        assert _sample_top1(clean_python, bundle, "--model", model)["index"] == truth
    code, _, err = _check_cli(bundle, capsys, "--python", clean_python)
    assert code == 0, err


@pytest.mark.slow
def test_shared_mobilenet_v2_tf_padding_bundle_classifies_its_golden_image(shared_data, clean_python, tmp_path, capsys):
    """export mobilenet_v2 (TF SAME padding, real weights) to ONNX, ship the file with --golden and
    the standard ImageNet classes.txt as --labels."""
    synset = "n01440764"
    image = shared_data / "imagenet-sample" / synset / "n01440764_tench.JPEG"
    model = tmp_path / "mobilenet_v2.onnx"
    main(["export", "mobilenet_v2", "--weights", str(shared_data / "weights" / "mobilenet_v2.pth"), "--tf-padding",
          "--preprocess", "tf", "-o", str(model), "--data", str(shared_data / "imagenet-sample"), "--parity-images", "4"])
    bundle = tmp_path / "bundle"
    _cli("ship", model, "-o", bundle, "--golden", image, "--target", "ort-arm", "--labels", shared_data / "classes.txt")
    assert (bundle / "model.ort").is_file()
    assert (bundle / "labels.txt").read_text().splitlines()[0] == "tench, Tinca tinca"
    for name in ("model.onnx", "model.ort"):
        assert _sample_top1(clean_python, bundle, "--model", name)["index"] == _class_index(shared_data, synset)
    code, _, err = _check_cli(bundle, capsys, "--python", clean_python)
    assert code == 0, err


# --- relative paths, and what the labels check compared ---------------------------------------------


def test_check_takes_relative_bundle_and_python_paths(bundle, tmp_path, monkeypatch, capsys):
    """The README's `ship --check bundle/` from the folder above it; --python as venv/bin/python."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    wrapper = venv_bin / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    code, out, err = _check_cli(Path("bundle/"), capsys)
    assert code == 0, err
    code, out, err = _check_cli(Path("bundle"), capsys, "--python", "venv/bin/python")
    assert code == 0, err
    assert "reproduces the golden top-5 from model.onnx" in out


def _labels_bundle(tmp_path: Path, carry_labels: bool) -> Path:
    from edgecnn.ship import build_bundle

    names = ["red", "green", "blue"]
    model = _tiny_onnx(tmp_path / "m.onnx", labels=names if carry_labels else None)
    (tmp_path / "names.txt").write_text("".join(f"{n}\n" for n in names))
    labels = None if carry_labels else tmp_path / "names.txt"
    return build_bundle(model, tmp_path / "b", golden=_red(tmp_path / "red.png"), labels=labels).path


def _swap_first_two_labels(bundle: Path) -> None:
    lines = (bundle / "labels.txt").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (bundle / "labels.txt").write_text("".join(f"{n}\n" for n in lines))
    _rehash(bundle)


def test_check_says_labels_could_not_be_checked_when_the_model_carries_none(tmp_path, capsys):
    bundle = _labels_bundle(tmp_path, carry_labels=False)
    code, out, err = _check_cli(bundle, capsys)
    assert code == 0, err
    assert "agree with model.onnx" not in out
    assert "could not be checked against the model, which carries no labels (they came from --labels" in out
    _swap_first_two_labels(bundle)
    code, out, err = _check_cli(bundle, capsys)
    assert code == 2
    assert err.splitlines() == ["edgecnn: check failed: labels.txt line 1 is 'green' but golden/expected.json "
                                "names output 0 'red'"]


def test_swapped_labels_fail_against_a_model_that_carries_labels(tmp_path, capsys):
    bundle = _labels_bundle(tmp_path, carry_labels=True)
    code, out, err = _check_cli(bundle, capsys)
    assert code == 0, err
    assert "labels.txt (3 names) equals model.onnx's labels, line by line" in out
    _swap_first_two_labels(bundle)
    code, out, err = _check_cli(bundle, capsys)
    assert code == 2
    assert err.splitlines()[0] == "edgecnn: check failed: labels.txt line 1 is 'green' but model.onnx's metadata says 'red'"
