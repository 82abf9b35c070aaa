"""Bad input to ``edgecnn compress``: one line on stderr, exit 2, no traceback, output folder untouched.

Every case runs with ``-o`` pointing at an existing folder holding a sentinel file (and
``--force`` where the error would otherwise be the folder itself), so a failure in the
middle of a run is checked to leave that folder exactly as it was and no temp folder behind.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgecnn.cli import main
from edgecnn.outputs import write_manifest

SMALL_DATA = """
data:
  embedded: {input_size: 32, epochs: 1, max_train_images: 100, max_test_images: 50}
  calib_images: 16
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A valid 10-class squeezenet1_1 state dict (random init), for the --weights cases."""
    import torch

    from edgecnn.models import create

    path = tmp_path_factory.mktemp("weights") / "squeezenet10.pth"
    torch.save(create("squeezenet1_1", num_classes=10).state_dict(), path)
    return path


@pytest.fixture
def files(tmp_path, weights_file):
    """Paths every case may refer to."""
    ns = {"tmp": tmp_path, "weights": weights_file}
    empty = tmp_path / "empty"
    empty.mkdir()
    ns["empty"] = empty
    broken = tmp_path / "broken" / "cls"
    broken.mkdir(parents=True)
    (broken / "a.jpg").write_bytes(b"this is not a jpeg")
    ns["broken"] = broken.parent
    good = tmp_path / "good" / "cls"
    good.mkdir(parents=True)
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 20, 30)).save(good / f"{i}.png")
    ns["good"] = good.parent
    notes = tmp_path / "notes" / "sub"
    notes.mkdir(parents=True)
    (notes / "readme.txt").write_text("no photos here")
    ns["notes"] = notes.parent
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a torch checkpoint")
    ns["garbage"] = tmp_path / "garbage.pth"
    ns["syntax"] = _write(tmp_path / "syntax.yaml", "model: {name: squeezenet\nstages: [export\n")
    ns["unknown_key"] = _write(tmp_path / "unknown_key.yaml", "model: {name: squeezenet}\ndata: {calibb: x}\nstages: [export]\n")
    ns["bad_value"] = _write(tmp_path / "bad_value.yaml", "model: {name: squeezenet}\nstages: [{quantize: {bits: 5}}, export]\n")
    ns["bad_stage"] = _write(tmp_path / "bad_stage.yaml", "model: {name: squeezenet}\nstages: [prunee, export]\n")
    _write(tmp_path / "a.yaml", "include: b.yaml\nmodel: {name: squeezenet}\n")
    _write(tmp_path / "b.yaml", "include: a.yaml\nstages: [export]\n")
    ns["cycle"] = tmp_path / "a.yaml"
    ns["order"] = _write(tmp_path / "order.yaml", "model: {name: squeezenet}\nstages: [quantize, {prune: {density: 0.5}}, export]\n")
    ns["measure_first"] = _write(tmp_path / "measure_first.yaml", "model: {name: squeezenet}\nstages: [measure, quantize, export]\n")
    ns["bad_target"] = _write(tmp_path / "bad_target.yaml", "model: {name: squeezenet}\nstages: [export]\ntargets: [ort-x86, tpu]\n")
    ns["list_stages"] = _write(tmp_path / "list_stages.yaml", "model: {name: squeezenet}\nstages: {quantize: {}}\n")
    ns["small"] = _write(tmp_path / "small.yaml", SMALL_DATA + "stages: [fold_bn, quantize, export]\n")
    return ns


SEARCH = ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--max-drop", "1", "--calib", "{good}", "--data", "{good}"]

# (id, argv after 'compress' with {placeholders}, uses --force, expected words in the one line)
CASES = [
    ("output-exists", ["squeezenet", "--bits", "8"], False, "already exists"),
    ("calib-missing", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--calib", "{tmp}/nope"], True, "does not exist"),
    ("calib-empty", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--calib", "{empty}"], True, "no images"),
    ("unreadable-image", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--calib", "{broken}"], True, "a.jpg"),
    ("weights-garbage", ["squeezenet1_1", "--weights", "{garbage}", "--num-classes", "10", "--calib", "{good}"], True, "garbage.pth"),
    ("weights-missing", ["squeezenet1_1", "--weights", "{tmp}/nope.pth", "--calib", "{good}"], True, "nope.pth"),
    ("no-calib-with-weights", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--bits", "8"], True, "--calib"),
    ("calib-without-weights", ["squeezenet", "--calib", "{broken}"], True, "--weights"),
    ("recipe-syntax", ["--recipe", "{syntax}"], True, "not valid YAML"),
    ("recipe-unknown-key", ["--recipe", "{unknown_key}"], True, "data.calibb"),
    ("recipe-bad-value", ["--recipe", "{bad_value}"], True, "stages[0].quantize.bits"),
    ("recipe-unknown-stage", ["--recipe", "{bad_stage}"], True, "prunee"),
    ("recipe-include-cycle", ["--recipe", "{cycle}"], True, "cycle"),
    ("recipe-missing", ["--recipe", "{tmp}/nope.yaml"], True, "nope.yaml"),
    ("recipe-stage-order", ["--recipe", "{order}"], True, "prune"),
    ("recipe-measure-not-last", ["--recipe", "{measure_first}"], True, "measure"),
    ("recipe-bad-target", ["--recipe", "{bad_target}"], True, "tpu"),
    ("recipe-stages-not-list", ["--recipe", "{list_stages}"], True, "stages"),
    ("unknown-model", ["squeezenett", "--bits", "8"], True, "squeezenett"),
    ("unknown-target", ["squeezenet", "--target", "tpu"], True, "tpu"),
    ("prune-out-of-range", ["squeezenet", "--prune", "1.5"], True, "density"),
    ("prune-mode-alone", ["squeezenet", "--prune-mode", "2:4"], True, "--prune"),
    ("bad-model-option", ["squeezenet", "--groups", "3", "--recipe", "{small}"], True, "groups"),
    ("no-model", [], True, "MODEL"),
    ("data-empty", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--calib", "{good}", "--data", "{empty}"], True, "--data"),
    ("data-unreadable-image", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--calib", "{good}", "--data", "{broken}"], True, "a.jpg"),
    ("train-empty-search", [*SEARCH, "--train", "{empty}"], True, "--train"),
    ("train-no-photos-search", [*SEARCH, "--train", "{notes}"], True, "no images"),
    ("train-broken-search", [*SEARCH, "--train", "{broken}"], True, "a.jpg"),
    ("choose-on-missing-search", [*SEARCH, "--choose-on", "{tmp}/nope"], True, "--choose-on"),
    ("choose-on-no-photos-search", [*SEARCH, "--choose-on", "{notes}"], True, "--choose-on"),
    ("calib-list-file-missing-image", ["squeezenet1_1", "--weights", "{weights}", "--num-classes", "10", "--calib", "{notes}/sub/readme.txt"], True, "no photos here"),
]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case_id,argv,force,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_output_alone(case_id, argv, force, expected, files, capsys):
    out = files["tmp"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    write_manifest(out, "compress")  # an earlier edgecnn run: what --force may replace
    before = _snapshot(out)
    args = ["compress"] + [a.format(**files) for a in argv] + ["-o", str(out), "--quiet"] + (["--force"] if force else [])
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exc.value.code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("edgecnn: error: ")
    assert "Traceback" not in captured.err + captured.out
    assert expected.lower() in lines[0].lower(), lines[0]
    assert _snapshot(out) == before
    leftovers = [p.name for p in files["tmp"].iterdir() if p.name.startswith(".out.")]
    assert leftovers == []


@pytest.mark.parametrize("flag", ["--train", "--data", "--calib"])
def test_image_folders_are_refused_before_any_work(flag, files, capsys, monkeypatch):
    """An empty --train used to be refused only after the whole search (minutes)."""
    import edgecnn.pipeline.runner as runner

    def no_work(*args, **kwargs):
        raise AssertionError("the run started working before refusing its input")

    monkeypatch.setattr(runner, "load", no_work)
    argv = [a.format(**files) for a in SEARCH]
    if flag in argv:
        argv[argv.index(flag) + 1] = str(files["empty"])
    else:
        argv += [flag, str(files["empty"])]
    with pytest.raises(SystemExit) as exc:
        main(["compress", *argv, "-o", str(files["tmp"] / "new-out"), "--quiet"])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root reads folders whatever their permissions")
def test_unreadable_train_folder_is_one_line(files, capsys):
    locked = files["tmp"] / "locked"
    (locked / "sub").mkdir(parents=True)
    locked.chmod(0)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["compress", *[a.format(**files) for a in SEARCH], "--train", str(locked), "-o", str(files["tmp"] / "o"), "--quiet"])
    finally:
        locked.chmod(0o755)
    assert exc.value.code == 2 and "permission" in capsys.readouterr().err


def test_error_names_file_key_path_and_allowed_keys(files, capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--recipe", str(files["unknown_key"]), "--dry-run"])
    line = capsys.readouterr().err.strip()
    assert str(files["unknown_key"]) in line
    assert "data.calibb" in line
    assert "allowed keys:" in line and "calib" in line and "eval" in line


@pytest.mark.parametrize("command", [["eval", "squeezenet", "--data", "{empty}"],
                                     ["finetune", "squeezenet", "--data", "{empty}", "-o", "{tmp}/student.pth"]])
def test_eval_and_finetune_refuse_a_folder_without_images(command, files, capsys):
    with pytest.raises(SystemExit) as exc:
        main([a.format(**files) for a in command])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and "--data" in lines[0] and "no images" in lines[0]
