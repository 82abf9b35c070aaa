"""End to end: ``edgecnn compress`` on small inputs for every family and both targets.

Small on purpose: 32 px digits, a 2-epoch baseline on 300 images (cached for the whole
session through $EDGECNN_CACHE), 16 calibration and 60 evaluation images. Latency is
measured in the squeezenet run only; the other families check export for both targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml

from edgecnn.cli import main

SMALL = """
data:
  embedded: {input_size: 32, epochs: 2, max_train_images: 300, max_test_images: 60}
  calib_images: 16
  batch_size: 16
stages:
  - fold_bn
  - quantize: {bits: 8, calibrator: max}
  - export
"""
MEASURE = "  - measure: {checkpoints: final, latency_runs: 10, warmup: 1, warmup_seconds: 0.0}\n"


def _recipe(tmp: Path, measure: bool) -> Path:
    path = tmp / ("small-measure.yaml" if measure else "small.yaml")
    path.write_text(SMALL + (MEASURE if measure else ""))
    return path


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def squeezenet_run(tmp_path_factory):
    """The main job, small: ``compress squeezenet --bits 6`` for ort-x86 and trt, measured."""
    tmp = tmp_path_factory.mktemp("squeezenet")
    out = tmp / "out"
    main(["compress", "squeezenet", "--bits", "6", "--recipe", str(_recipe(tmp, True)), "--target", "ort-x86", "--target", "trt", "-o", str(out), "--quiet"])
    return out


@pytest.mark.slow
def test_main_job_writes_every_output(squeezenet_run, capsys):
    out = squeezenet_run
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "accuracy.png", "recipe.resolved.yaml", "log.txt", "fp32", "ort-x86", "trt"} <= names
    assert not [n for n in names if n.startswith(".")]
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["data"]["source"] == "embedded-digits"
    assert "accuracy is on digits, not ImageNet" in report["data"]["note"]
    rows = {(r["stage"], r["target"]): r for r in report["results"]}
    assert set(rows) == {("baseline", "fp32"), ("quantize", "ort-x86"), ("quantize", "trt")}
    base, x86 = rows["baseline", "fp32"], rows["quantize", "ort-x86"]
    for row in rows.values():
        if row["target"] == "trt":  # a TensorRT artifact's ORT CPU time means nothing: not shown
            assert row["latency_ms_median"] is None and row["latency_ms_p90"] is None
        else:
            assert row["latency_ms_median"] > 0 and row["latency_ms_p90"] >= row["latency_ms_median"]
        assert 0 <= row["top1"] <= row["top5"] <= 100 and 0 <= row["agreement"] <= 100
        assert row["params"] == base["params"] and row["macs"] == base["macs"] > 0
    assert base["agreement"] == 100.0
    bound = x86["drop_bound"]  # paired on the baseline's images: the drop and its one-sided bounds
    assert bound["lower"] <= bound["estimate"] <= bound["upper"]
    assert bound["estimate"] == pytest.approx(base["top1"] - x86["top1"], abs=1e-3)
    assert bound["upper"] == pytest.approx(x86["drop_upper95"], abs=1e-3)
    env = report["environment"]
    assert env["cpu"] and env["usable_cpus"] >= 1 and "onnxruntime" in env["versions"] and isinstance(env["cpu_flags"], list)
    assert x86["onnx_bytes"] < base["onnx_bytes"] / 2  # int8 initializers
    assert x86["shipped_bytes"] < x86["onnx_bytes"]
    assert [s["name"] for s in report["stages"]] == ["baseline", "fold_bn", "quantize", "export", "measure"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out / "ort-x86" / "model.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out / "trt" / "model.onnx")
    assert "lint" in report["artifacts"]["trt"]
    assert report["cpu_accuracy"] == {"ort-x86": "optimized", "trt": "reference"}
    meta = {p.key: p.value for p in onnx.load(str(out / "ort-x86" / "model.onnx")).metadata_props}
    assert meta["edgecnn.precision"] == "w6a8" and meta["edgecnn.quant_target"] == "ort-x86"
    md = (out / "report.md").read_text()
    assert "| quantize | trt |" in md and "accuracy is on digits, not ImageNet" in md
    assert "## Environment" in md and "- CPU: " in md and "drop ≤ (95 %)" in md
    assert "✓ quantize" in (out / "log.txt").read_text()


def _initializers(path: Path) -> dict:
    return {t.name: t.raw_data or onnx.numpy_helper.to_array(t).tobytes() for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.slow
def test_resolved_recipe_reproduces_the_run(squeezenet_run, tmp_path):
    """Same baseline, same calibration, same configs: bit-identical Q/DQ weights and scales."""
    import onnx.numpy_helper  # noqa: F401

    recipe = yaml.safe_load((squeezenet_run / "recipe.resolved.yaml").read_text())
    assert recipe["targets"] == ["ort-x86", "trt"]
    recipe["stages"] = [s for s in recipe["stages"] if "measure" not in s]  # timing is not what is reproduced
    path = tmp_path / "resolved-no-measure.yaml"
    path.write_text(yaml.safe_dump(recipe))
    again = tmp_path / "again"
    main(["compress", "--recipe", str(path), "-o", str(again), "--quiet"])
    for target in ("ort-x86", "trt"):
        assert _initializers(again / target / "model.onnx") == _initializers(squeezenet_run / target / "model.onnx")
    first = json.loads((squeezenet_run / "report.json").read_text())["results"]
    second = json.loads((again / "report.json").read_text())["results"]
    counts = lambda rows: {r["stage"]: (r["params"], r["nonzeros"], r["macs"]) for r in rows}  # noqa: E731
    assert counts(first) == {k: v for k, v in counts(second).items() if k in counts(first)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,options",
    [("mobilenet_v2", ["--width-mult", "0.5"]), ("mobilenet_v3_small", []), ("shufflenet_v2_x0_5", [])],
)
def test_family_exports_for_both_targets(model, options, tmp_path):
    out = tmp_path / "out"
    main(["compress", model, *options, "--recipe", str(_recipe(tmp_path, False)), "--target", "ort-x86", "--target", "trt", "-o", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == model
    for target in ("ort-x86", "trt"):
        path = out / target / "model.onnx"
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(path)
        assert "parity" in report["artifacts"][target]
    assert "lint" in report["artifacts"]["trt"]


def test_print_recipe_and_dry_run_do_no_work(tmp_path, capsys):
    main(["compress", "squeezenet", "--bits", "6", "--target", "trt", "--print-recipe"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "squeezenet" and printed["model"]["weights"] is None
    assert printed["targets"] == ["trt"]
    assert {"quantize": {**printed["stages"][1]["quantize"], "bits": 6}} == printed["stages"][1]
    main(["compress", "squeezenet", "--bits", "6", "--dry-run", "-o", str(tmp_path / "never")])
    plan = capsys.readouterr().out
    assert "embedded digits baseline" in plan and "stage 2: quantize" in plan
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_prune_with_reconstruction_runs_from_a_recipe(tmp_path):
    """`prune: {reconstruct: true}` takes the run's calibration images and reports, per layer, the
    output error left after the refit."""
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(SMALL.replace("  - quantize: {bits: 8, calibrator: max}\n", "  - prune: {density: 0.5, reconstruct: true}\n"))
    out = tmp_path / "out"
    main(["compress", "squeezenet", "--recipe", str(recipe), "--target", "ort-x86", "-o", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert '"reconstructed": true' in text
    left = [float(part.split(",")[0].split("}")[0]) for part in text.split('"output_error_left": ')[1:]]
    assert len(left) >= 20 and all(0 <= value < 1 for value in left)
