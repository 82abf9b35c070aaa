"""How measure treats a target on a CPU comes from the target table: trt (``cpu_accuracy:
reference``) is evaluated with ONNX Runtime's graph optimizations off and gets no CPU latency."""

from __future__ import annotations

import csv

import pytest
from rich.console import Console

from edgecnn.pipeline import run_recipe
from edgecnn.recipe import validate

MEASURE = {"measure": {"checkpoints": "final", "latency_runs": 5, "warmup": 0, "warmup_seconds": 0.0, "plot": False}}


def _run(raw: dict, out, monkeypatch) -> dict:
    monkeypatch.setenv("EDGECNN_TORCH_THREADS", "1")
    return run_recipe(validate(raw, "test"), output=out, console=Console(quiet=True), progress=False)


@pytest.mark.slow
def test_trt_rows_use_reference_semantics_and_no_cpu_latency(tmp_path, monkeypatch):
    from test_golden_artifacts import _inputs

    from edgecnn.pipeline.stages import measure

    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    calls = []
    real = measure.run_onnx
    monkeypatch.setattr(measure, "run_onnx", lambda path, *a, **kw: calls.append((path.parent.name, kw["optimize"])) or real(path, *a, **kw))
    raw = {"model": {"name": "net.py:build", "weights": "weights.pth"}, "data": {"calib": "calib", "eval": "calib", "calib_images": 8},
           "stages": ["fold_bn", {"quantize": {"bits": 8}}, "export", MEASURE], "targets": ["ort-x86", "trt"]}
    report = _run(raw, tmp_path / "out", monkeypatch)

    assert sorted(set(calls)) == [("fp32", True), ("ort-x86", True), ("trt", False)]
    assert report["cpu_accuracy"] == {"ort-x86": "optimized", "trt": "reference"}
    rows = {r["target"]: r for r in report["results"]}
    assert rows["trt"]["latency_ms_median"] is None and rows["trt"]["runtime"] is None
    assert rows["ort-x86"]["latency_ms_median"] > 0 and rows["fp32"]["latency_ms_median"] > 0
    assert rows["trt"]["agreement"] is not None
    notes = " ".join(report["notes"])
    assert "trt rows: top-1 and agreement measured in reference Q/DQ semantics" in notes and "trt rows: no latency" in notes
    assert "ort-x86 rows" not in notes
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| quantize | trt |" in md and "reference Q/DQ semantics" in md


@pytest.mark.slow
def test_trt_mobilenet_v2_agrees_with_fp32_on_imagenet(shared_data, tmp_path, monkeypatch):
    """MobileNetV2 (TF padding, shared 8-bit-origin weights), 64 sample images: the trt artifact in
    reference semantics agrees with FP32 on top-1; ORT's fused int8 kernels on a CPU without VNNI did not."""
    rows = list(csv.DictReader(open(shared_data / "imagenet-sample-manifest.csv", newline="")))
    step = len(rows) / 64
    lines = [f"{shared_data / 'imagenet-sample' / rows[int(i * step)]['relpath']} {rows[int(i * step)]['class_index']}" for i in range(64)]
    images = tmp_path / "val64.txt"
    images.write_text("\n".join(lines) + "\n")
    raw = {"model": {"name": "mobilenet_v2", "weights": str(shared_data / "weights" / "mobilenet_v2.pth"), "options": {"tf_padding": True}},
           "data": {"calib": str(images), "eval": str(images), "calib_images": 64},
           "stages": ["fold_bn", "quantize", {"export": {"parity": False}}, MEASURE], "targets": ["trt"]}
    report = _run(raw, tmp_path / "out", monkeypatch)
    trt = next(r for r in report["results"] if r["target"] == "trt")
    assert trt["agreement"] >= 95.0, trt


@pytest.mark.slow
def test_export_fp16_rest_applies_to_the_trt_file_only(tmp_path, monkeypatch):
    """``export.fp16_rest``: the trt file's float layers run in float16 behind explicit casts; ort-x86 is untouched."""
    import onnx

    from test_golden_artifacts import _inputs

    from edgecnn.errors import UserError

    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    raw = {"model": {"name": "net.py:build", "weights": "weights.pth"}, "data": {"calib": "calib", "eval": "calib", "calib_images": 8},
           "stages": ["fold_bn", {"quantize": {"bits": 8}}, {"export": {"fp16_rest": True}}, MEASURE], "targets": ["ort-x86", "trt"]}
    _run(raw, tmp_path / "out", monkeypatch)

    def casts_and_meta(target):
        model = onnx.load(str(tmp_path / "out" / target / "model.onnx"))
        return sum(n.op_type == "Cast" for n in model.graph.node), {p.key: p.value for p in model.metadata_props}.get("edgecnn.float_rest")

    assert casts_and_meta("ort-x86") == (0, None)
    casts, rest = casts_and_meta("trt")
    assert casts > 0 and rest == "float16"

    raw["targets"] = ["ort-x86"]
    with pytest.raises(UserError, match="fp16_rest applies to TensorRT targets only"):
        _run(raw, tmp_path / "out2", monkeypatch)


@pytest.mark.slow
def test_a_vnni_target_is_measured_as_this_cpu_class_allows(tmp_path, monkeypatch, capsys):
    """ort-x86-vnni beside ort-x86: on a VNNI host both run on ORT's kernels and are timed; on any
    other host the VNNI rows are measured in reference semantics with no latency, and eval,
    bench and ship say so in one line (refusing what the saturating AVX2 kernels would get wrong)."""
    from click.testing import CliRunner
    from test_golden_artifacts import _inputs

    from edgecnn import cpu
    from edgecnn.cli import cli
    from edgecnn.errors import UserError
    from edgecnn.targets import TARGETS

    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    raw = {"model": {"name": "net.py:build", "weights": "weights.pth"}, "data": {"calib": "calib", "eval": "calib", "calib_images": 8},
           "stages": ["fold_bn", {"quantize": {"bits": 8}}, "export", MEASURE], "targets": ["ort-x86", "ort-x86-vnni"]}
    report = _run(raw, tmp_path / "out", monkeypatch)
    host = cpu.host_class()
    assert report["cpu_class"] == host and f"CPU class {host}" in report["latency_note"]
    rows = {r["target"]: r for r in report["results"]}
    for name in ("ort-x86", "ort-x86-vnni"):
        fits = TARGETS[name].runs_on(host)
        assert report["cpu_accuracy"][name] == ("optimized" if fits else "reference")
        assert (rows[name]["latency_ms_median"] is not None) == fits and rows[name]["agreement"] is not None
        assert (f"{name} rows: top-1 and agreement in reference Q/DQ semantics, no latency" in " ".join(report["notes"])) != fits

    vnni = tmp_path / "out" / "ort-x86-vnni" / "model.onnx"
    data = ["--data", "calib", "--reference", str(tmp_path / "out" / "fp32" / "model.onnx")]
    monkeypatch.setattr(cpu, "host_class", lambda: "x86-avx2")
    auto = CliRunner().invoke(cli, ["eval", str(vnni), *data, "--json"])
    assert auto.exit_code == 0, auto.output
    assert "warning: ort-x86-vnni is for CPU classes x86-vnni; this CPU is x86-avx2" in auto.stderr
    assert '"semantics": "reference"' in auto.stdout and '"cpu_class": "x86-avx2"' in auto.stdout
    for args in (["eval", str(vnni), *data, "--semantics", "runtime"], ["bench", str(vnni), "--iterations", "3"],
                 ["ship", str(tmp_path / "out"), "--target", "ort-x86-vnni", "-o", str(tmp_path / "bundle")]):
        with pytest.raises(UserError, match="ort-x86-vnni is for CPU classes x86-vnni; this CPU is x86-avx2: its int8 "
                                            "kernels saturate") as refused:
            cli.main(args=args, standalone_mode=False)
        assert "\n" not in str(refused.value)
    assert not (tmp_path / "bundle").exists()
