"""--force replaces only files edgecnn made, and no command writes over one of its own inputs.

edgecnn recognises its files by their bytes (edgecnn's ONNX metadata, the .ecnn header) or, for
files whose bytes cannot say so (an engine, a checkpoint, a foreign ONNX unpacked), by a sidecar
record ``.<name>.edgecnn.json`` that holds the file's SHA-256. Everything else is the user's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn import outputs
from edgecnn.cli import main


def run(argv, capfd):
    """(exit code, stdout, stderr) of ``edgecnn ARGV``."""
    try:
        code = main(list(map(str, argv))) or 0
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *words):
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecnn: error:"), err
    for word in words:
        assert word in err, (word, err)


def _onnx(path: Path, edgecnn_metadata: bool = True) -> Path:
    """Conv + GlobalAveragePool on 8x8 images; with or without edgecnn's metadata."""
    w = numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(4, 3, 2, 2) / 48, "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if edgecnn_metadata:
        from edgecnn.export.metadata import set_metadata

        set_metadata(model, {"edgecnn.version": "0.1.0", "edgecnn.model": "tiny"})
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def mine(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    return path


# --- an input is never an output --------------------------------------------------------------


def test_pack_onto_its_own_input_is_refused_even_with_force(tmp_path, capfd):
    src = _onnx(tmp_path / "x.onnx")
    before = src.read_bytes()
    for extra in ([], ["--force"]):
        code, out, err = run(["pack", src, "-o", src, *extra], capfd)
        assert_one_line_error(code, out, err, "is the input", "x.onnx")
    assert src.read_bytes() == before


def test_unpack_onto_its_own_input_is_refused_even_with_force(tmp_path, capfd):
    src = _onnx(tmp_path / "x.onnx")
    packed = tmp_path / "a.ecnn"
    assert run(["pack", src, "-o", packed], capfd)[0] == 0
    before = packed.read_bytes()
    code, out, err = run(["unpack", packed, "-o", packed, "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    assert packed.read_bytes() == before
    # the same file under another spelling (.. and a symlink) is still the input
    (tmp_path / "sub").mkdir()
    code, out, err = run(["unpack", packed, "-o", tmp_path / "sub" / ".." / "a.ecnn", "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    (tmp_path / "link.ecnn").symlink_to(packed)
    code, out, err = run(["unpack", packed, "-o", tmp_path / "link.ecnn", "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    assert packed.read_bytes() == before


def test_compile_onto_its_input_is_refused(tmp_path, capfd):
    src = _onnx(tmp_path / "x.onnx")
    before = src.read_bytes()
    code, out, err = run(["compile", src, "--backend", "ort", "-o", src, "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    code, out, err = run(["compile", src, "--backend", "trt", "--print-trtexec", "-o", src, "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    assert src.read_bytes() == before


def test_export_onto_its_model_file_or_weights_is_refused(tmp_path, capfd):
    model_file = tmp_path / "models.py"
    model_file.write_text("import torch.nn as nn\n\ndef good():\n    return nn.Conv2d(3, 4, 1)\n")
    code, out, err = run(["export", f"{model_file}:good", "-o", model_file, "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    code, out, err = run(["export", "squeezenet", "--weights", weights, "-o", weights, "--force"], capfd)
    assert_one_line_error(code, out, err, "is the input")
    assert weights.read_bytes() == b"weights" and "def good" in model_file.read_text()


def test_compress_output_folder_holding_its_weights_is_refused(tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    outputs.write_manifest(out, "compress")  # an earlier edgecnn run: --force may replace it, but not its inputs
    weights = out / "w.pth"
    weights.write_bytes(b"weights")
    code, o, err = run(["compress", "squeezenet", "--weights", weights, "-o", out, "--force"], capfd)
    assert_one_line_error(code, o, err, "holds the input")
    assert weights.read_bytes() == b"weights"


def test_ship_into_the_folder_holding_its_source_is_refused(tmp_path, capfd):
    folder = tmp_path / "b"
    folder.mkdir()
    src = _onnx(folder / "model.onnx")
    code, out, err = run(["ship", src, "-o", folder, "--force"], capfd)
    assert_one_line_error(code, out, err, "holds the input")
    assert src.is_file()


# --- --force replaces only what edgecnn made ---------------------------------------------------


@pytest.mark.parametrize("command", [["pack"], ["unpack"], ["compile", "--backend", "ort"]])
def test_force_never_replaces_a_users_text_file(tmp_path, capfd, mine, command):
    src = _onnx(tmp_path / "x.onnx")
    if command == ["unpack"]:
        assert run(["pack", src, "-o", tmp_path / "x.ecnn"], capfd)[0] == 0
        src = tmp_path / "x.ecnn"
    code, out, err = run([command[0], src, *command[1:], "-o", mine, "--force"], capfd)
    assert_one_line_error(code, out, err, "notes.txt", "not written by edgecnn")
    assert mine.read_text() == "my notes\n"


def test_force_never_replaces_a_foreign_onnx(tmp_path, capfd):
    src = _onnx(tmp_path / "x.onnx")
    foreign = _onnx(tmp_path / "theirs.onnx", edgecnn_metadata=False)
    before = foreign.read_bytes()
    code, out, err = run(["compile", src, "--backend", "ort", "-o", foreign, "--force"], capfd)
    assert_one_line_error(code, out, err, "theirs.onnx", "not written by edgecnn")
    assert foreign.read_bytes() == before


def test_force_replaces_edgecnn_files_by_header_metadata_and_record(tmp_path, capfd):
    src = _onnx(tmp_path / "x.onnx")
    packed = tmp_path / "x.ecnn"
    assert run(["pack", src, "-o", packed], capfd)[0] == 0
    assert run(["pack", src, "-o", packed, "--force"], capfd)[0] == 0  # its .ecnn header
    compiled = tmp_path / "x.ort.onnx"
    assert run(["compile", src, "--backend", "ort"], capfd)[0] == 0
    assert run(["compile", src, "--backend", "ort", "--force"], capfd)[0] == 0  # its ONNX metadata
    assert not outputs.record_path(compiled).exists()  # the bytes say it: no record needed
    # a foreign ONNX packed and unpacked carries no edgecnn metadata: the record marks it
    foreign = _onnx(tmp_path / "theirs.onnx", edgecnn_metadata=False)
    theirs_packed = tmp_path / "theirs.ecnn"
    assert run(["pack", foreign, "-o", theirs_packed], capfd)[0] == 0
    back = tmp_path / "back.onnx"
    assert run(["unpack", theirs_packed, "-o", back], capfd)[0] == 0
    record = json.loads(outputs.record_path(back).read_text())
    assert record["tool"] == "edgecnn" and record["command"] == "unpack"
    assert run(["unpack", theirs_packed, "-o", back, "--force"], capfd)[0] == 0
    # the user puts their own file there: the record no longer matches, so it is theirs
    mutated = onnx.load(str(foreign))
    mutated.doc_string = "edited by hand"
    onnx.save(mutated, str(back))
    code, out, err = run(["unpack", theirs_packed, "-o", back, "--force"], capfd)
    assert_one_line_error(code, out, err, "not written by edgecnn")
    assert onnx.load(str(back)).doc_string == "edited by hand"


def test_record_marks_only_the_bytes_it_was_written_for(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00serialized engine")
    assert not outputs.is_edgecnn_file(engine)
    outputs.record_output(engine, "compile")
    assert outputs.is_edgecnn_file(engine)
    engine.write_bytes(b"\x00another engine")
    assert not outputs.is_edgecnn_file(engine)


def test_ecnn_magic_is_the_decoders():
    from edgecnn.pack.decoder import MAGIC

    assert outputs.ECNN_MAGIC == MAGIC

