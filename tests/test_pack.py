"""The .ecnn shipped format: bit-exact round trip, entropy coders, corruption, CLI, no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.errors import UserError
from edgecnn.pack import decode_model, pack_file, pack_model, read_ecnn, shipped_size, unpack_file
from edgecnn.pack import decoder, entropy


def _tiny_model(seed: int = 0) -> onnx.ModelProto:
    """Conv (shared, 80 % zeros) -> Relu -> Conv (pruned float) -> Conv (int8 Q/DQ weights)."""
    rng = np.random.default_rng(seed)
    codebook = np.sort(rng.normal(0, 0.2, 16)).astype(np.float32)
    w1 = codebook[rng.integers(0, 16, (32, 3, 3, 3))]
    w1[rng.random(w1.shape) < 0.5] = 0
    w1[8:28] = 0  # whole filters pruned: long zero runs
    w1[0, 0, 0, 0] = -0.0  # bit patterns, not values, must survive
    b1 = rng.normal(0, 0.1, 32).astype(np.float32)
    w2 = rng.normal(0, 0.1, (16, 32, 1, 1)).astype(np.float32)
    w2[np.abs(w2) < 0.1] = 0  # pruned (68 % zeros) but not shared
    w3 = np.clip(np.round(rng.laplace(0, 6, (64, 16, 1, 1))), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(w3, "w3_q"),
        numpy_helper.from_array(np.float32(0.01), "w3_scale"),
        numpy_helper.from_array(np.int8(0), "w3_zp"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("DequantizeLinear", ["w3_q", "w3_scale", "w3_zp"], ["w3"]),
        helper.make_node("Conv", ["c2", "w3"], ["c3"]),
        helper.make_node("Reshape", ["c3", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _same_initializers(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    for ta, tb in zip(a.graph.initializer, b.graph.initializer):
        xa, xb = numpy_helper.to_array(ta), numpy_helper.to_array(tb)
        assert xa.dtype == xb.dtype and xa.shape == xb.shape, ta.name
        assert xa.tobytes() == xb.tobytes(), ta.name


@pytest.mark.parametrize("codec", ["rans", "huffman"])
def test_round_trip_is_bit_exact_and_ort_output_identical(codec):
    model = _tiny_model()
    data, stats = pack_model(model, codec=codec)
    decoded = decode_model(data)
    _same_initializers(model, decoded)
    assert {t.name: t.encoding for t in stats.tensors}["w1"] == "sparse"
    assert {t.name: t.encoding for t in stats.tensors}["w3_q"] == "dense"
    assert {t.name: t.encoding for t in stats.tensors}["w2"] == "sparse_raw"
    x = np.random.default_rng(1).normal(size=(1, 3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x), _run(decoded, x))
    # The graph minus weights survives too (names, attributes, opset).
    assert [n.op_type for n in decoded.graph.node] == [n.op_type for n in model.graph.node]
    assert decoded.opset_import[0].version == 17


def test_codebook_tensors_are_smaller_than_lzma():
    model = _tiny_model()
    data, stats = pack_model(model)
    sizes = {t.name: t for t in stats.tensors}
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    # 16 centroids, 30 % non-zero: far below 1 byte per element.
    assert sizes["w1"].bytes < 0.5 * w1.size
    assert len(data) < model.ByteSize()


def _random_streams(rng, skewed: bool):
    streams = []
    for alphabet in (1, 2, 17, 64, 256):
        n = int(rng.integers(0, 3000))
        if skewed:
            p = rng.dirichlet(np.full(alphabet, 0.05))
        else:
            p = np.full(alphabet, 1 / alphabet)
        symbols = rng.choice(alphabet, size=n, p=p)
        streams.append((symbols.astype(np.int64), alphabet))
    return streams


@pytest.mark.parametrize("skewed", [False, True])
def test_entropy_coders_round_trip(skewed):
    rng = np.random.default_rng(7 if skewed else 3)
    streams = _random_streams(rng, skewed)
    symbols = np.concatenate([s for s, _ in streams])
    ids = np.concatenate([np.full(len(s), i) for i, (s, _) in enumerate(streams)]).astype(np.int64)
    total_entropy = sum(entropy.entropy_bits(np.bincount(s, minlength=a)) for s, a in streams) / 8
    for lanes in (1, 5, 64):
        models = [entropy.rans_model(np.bincount(s, minlength=a) + (len(s) == 0))[0] for s, a in streams]
        body = entropy.rans_encode(symbols, ids, models, lanes)
        out = decoder.rans_decode(decoder.Reader(body, "test"), models, ids)
        np.testing.assert_array_equal(out, symbols)
    # rANS lands within 1 % + lane overhead of the empirical entropy.
    assert len(body) <= 1.01 * total_entropy + 6 * 64 + 16
    models = [entropy.huffman_table(np.bincount(s, minlength=a) + (len(s) == 0))[0] for s, a in streams]
    body = entropy.huffman_encode(symbols, ids, models)
    out = decoder.huffman_decode(decoder.Reader(body, "test"), models, ids)
    np.testing.assert_array_equal(out, symbols)


def test_huffman_lengths_are_limited_and_prefix_free():
    counts = (2.0 ** np.arange(40)).astype(np.int64)  # would need 39-bit codes unrestricted
    lengths = entropy.huffman_lengths(counts)
    assert lengths.max() <= decoder.HUFFMAN_MAX_LEN
    assert np.sum(2.0 ** -lengths) <= 1.0


def test_zero_runs_round_trip():
    from edgecnn.pack.format import _zero_runs

    rng = np.random.default_rng(5)
    for density in (0.0, 0.01, 0.3, 1.0):
        mask = rng.random(5000) < density
        for escape in (7, 255):
            runs = _zero_runs(mask, escape)
            np.testing.assert_array_equal(decoder.runs_to_mask(runs, escape, mask.size), mask)


def test_corrupted_or_truncated_file_is_rejected(tmp_path):
    data, _ = pack_model(_tiny_model())
    positions = [0, 5, 20, decoder.HEADER.size + 3, len(data) // 2, len(data) - 1]
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(UserError) as err:
            decode_model(bytes(bad))
        assert "\n" not in str(err.value)
    for cut in (10, decoder.HEADER.size, len(data) - 1):
        with pytest.raises(UserError, match="truncated|magic"):
            decode_model(data[:cut])
    with pytest.raises(UserError, match="truncated"):
        decode_model(data + b"\0")
    path = tmp_path / "bad.ecnn"
    path.write_bytes(data[:-3])
    with pytest.raises(UserError):
        read_ecnn(path)


@pytest.mark.slow
def test_cli_pack_unpack_and_force(tmp_path, capsys):
    from edgecnn.cli import main

    src = tmp_path / "tiny.onnx"
    onnx.save(_tiny_model(), src)
    packed, restored = tmp_path / "tiny.ecnn", tmp_path / "back.onnx"
    main(["pack", str(src), "-o", str(packed)])
    assert packed.stat().st_size == shipped_size(src)
    main(["unpack", str(packed), "-o", str(restored)])
    _same_initializers(onnx.load(src), onnx.load(restored))
    for argv in (["pack", str(src), "-o", str(packed)], ["unpack", str(packed), "-o", str(restored)]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "already exists; pass --force" in capsys.readouterr().err
    main(["pack", str(src), "-o", str(packed), "--force", "--codec", "huffman"])
    main(["unpack", str(packed), "-o", str(restored), "--force"])
    _same_initializers(onnx.load(src), onnx.load(restored))
    with pytest.raises(SystemExit):
        main(["unpack", str(src), "-o", str(tmp_path / "x.onnx")])  # an ONNX file is no .ecnn
    assert "bad magic" in capsys.readouterr().err


def test_pack_file_api(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_tiny_model(), src)
    stats = pack_file(src, tmp_path / "m.ecnn")
    assert stats.total == (tmp_path / "m.ecnn").stat().st_size
    path = unpack_file(tmp_path / "m.ecnn", tmp_path / "m2.onnx")
    _same_initializers(onnx.load(src), onnx.load(path))
    with pytest.raises(UserError, match="not found"):
        pack_file(tmp_path / "missing.onnx", tmp_path / "o.ecnn")


@pytest.mark.slow
def test_vendored_decoder_needs_no_torch_and_no_edgecnn(tmp_path):
    data, _ = pack_model(_tiny_model())
    (tmp_path / "m.ecnn").write_bytes(data)
    shutil.copy(decoder.__file__, tmp_path / "ecnn_decoder.py")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["edgecnn"] = None  # an app without edgecnn installed
        sys.path.insert(0, {str(tmp_path)!r})
        import ecnn_decoder
        model = ecnn_decoder.load_ecnn({str(tmp_path / "m.ecnn")!r})
        assert len(model.graph.initializer) == 7
        try:
            ecnn_decoder.decode_model(b"ECNN" + bytes(60))
        except ValueError as exc:
            print("rejected:", exc)
        assert "torch" not in sys.modules
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "rejected:" in out.stdout
    # The pack/unpack commands do not import torch either.
    script = "import sys; import edgecnn.commands.pack, edgecnn.pack; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- large raw tensors


def _dense_float_model(shape=(512, 256, 3, 3), seed: int = 3) -> onnx.ModelProto:
    """One dense float weight (4.7 MB of noise-like mantissas): the case LZMA cannot help."""
    w = np.random.default_rng(seed).normal(0, 0.05, shape).astype(np.float32)
    w[0, 0, 0, :] = [np.nan, -0.0, 1e-42]  # bit patterns must survive the stored path
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[1], 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[0], 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_stored_xz_stream_is_read_by_lzma():
    import lzma

    from edgecnn.pack.xz import stored_stream

    rng = np.random.default_rng(0)
    for n in (0, 1, 65535, 65536, 65537, 200_000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert lzma.decompress(stored_stream(data)) == data
    a, b = b"x" * 70_000, rng.integers(0, 256, 999, dtype=np.uint8).tobytes()
    assert lzma.decompress(stored_stream(a) + lzma.compress(b, format=lzma.FORMAT_XZ)) == a + b


def test_large_float_tensor_round_trips_through_stored_planes(monkeypatch):
    import lzma

    from edgecnn.pack import format as fmt

    model = _dense_float_model()
    calls = []
    real = lzma.compress
    monkeypatch.setattr(fmt.xz.lzma, "compress", lambda data, *a, **k: calls.append(len(data)) or real(data, *a, **k))
    data, stats = pack_model(model)
    decoded = decode_model(data)
    assert numpy_helper.to_array(decoded.graph.initializer[0]).tobytes() == numpy_helper.to_array(model.graph.initializer[0]).tobytes()
    weight_bytes = 512 * 256 * 9 * 4
    # Only the compressible (sign/exponent) planes went through LZMA; the noise planes were stored.
    assert sum(calls) <= weight_bytes // 2 + 4096, calls
    assert stats.sections["R"] < weight_bytes * 0.97


def test_pack_refuses_existing_output_before_encoding(tmp_path, monkeypatch):
    from edgecnn.pack import format as fmt

    src = tmp_path / "m.onnx"
    onnx.save(_tiny_model(), str(src))
    out = tmp_path / "m.ecnn"
    out.write_bytes(b"mine")
    monkeypatch.setattr(fmt, "encode_model", lambda *a, **k: pytest.fail("encoded before checking the output"))
    with pytest.raises(UserError, match="already exists"):
        pack_file(src, out)
    assert out.read_bytes() == b"mine"


@pytest.mark.slow
def test_deep_compression_recipe_writes_every_shipped_file_it_reports(tmp_path):
    """The recipe whose point is the shipped file (its last stage keeps float weights) writes the
    .ecnn of every row that reports a shipped size, byte for byte the size it reports."""
    import json

    from edgecnn.cli import main

    recipe = tmp_path / "dc-small.yaml"
    shipped_recipe = Path(__file__).resolve().parents[1] / "edgecnn" / "recipes" / "squeezenet-deep-compression.yaml"
    recipe.write_text(f"include: {shipped_recipe}\n"
                      "data:\n  embedded: {input_size: 48, epochs: 1, max_train_images: 200, max_test_images: 40}\n"
                      "  calib_images: 16\n")
    out = tmp_path / "out"
    main(["compress", "squeezenet1_0", "--recipe", str(recipe), "-o", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    rows = [r for r in report["results"] if r["shipped_bytes"] is not None]
    assert rows and rows[-1]["stage"] == "weight_share" and rows[-1]["target"] == "fp32"
    for row in rows:
        assert row["ecnn"] is not None, row
        assert (out / row["ecnn"]).stat().st_size == row["shipped_bytes"], row
    assert any((out / r["ecnn"]).parent.name != "fp32" for r in rows)  # the final model's own .ecnn, not only fp32's
