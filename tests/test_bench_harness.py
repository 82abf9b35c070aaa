"""The comparison bench's harness logic: data split, statistics, accuracy, tables, skipping.

No engine is run here (that is what bench/run.py is for); only the logic that turns raw
samples into the published table.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _stats  # noqa: E402
import engines  # noqa: E402
import run  # noqa: E402


def test_calibration_split_is_disjoint_spread_and_complete():
    calib, evaluation = _stats.split_calibration(1150, 128)
    assert len(calib) == 128 and len(evaluation) == 1150 - 128
    assert not set(calib) & set(evaluation)
    assert sorted(calib + evaluation) == list(range(1150))
    assert calib[0] == 0 and calib[-1] > 1000  # spans the whole (synset-sorted) manifest


def test_calibration_split_edge_cases():
    assert _stats.split_calibration(0, 10) == ([], [])
    calib, evaluation = _stats.split_calibration(5, 10)
    assert len(calib) == 4 and evaluation  # always leaves something to evaluate
    assert _stats.split_calibration(5, 0) == ([], [0, 1, 2, 3, 4])


def test_round_statistics_take_the_median_over_rounds():
    from edgecnn.measure.interleave import summarize_rounds

    # Round 2 is disturbed (a neighbour's burst): the median over rounds ignores it.
    timing = summarize_rounds([[0.010, 0.011, 0.012], [0.050, 0.060, 0.070], [0.011, 0.012, 0.013]])
    assert timing.median_ms == pytest.approx(12.0)
    assert timing.round_medians_ms == pytest.approx([11.0, 60.0, 12.0])
    assert timing.stats.samples == 9


def test_top5_and_accuracy():
    logits = np.array([[0.1, 0.9, 0.3, 0.2, 0.0, 0.5, 0.4], [5, 4, 3, 2, 1, 0, -1]], dtype=np.float32)
    top5 = _stats.top5_of(logits)
    assert top5.tolist() == [[1, 5, 6, 2, 3], [0, 1, 2, 3, 4]]
    labels = np.array([5, 0])
    result = _stats.accuracy(top5, labels, reference_top1=np.array([1, 3]))
    assert result == {"top1": 50.0, "top5": 100.0, "agreement": 50.0, "n": 2}
    with pytest.raises(ValueError):
        _stats.accuracy(top5, np.array([1]))
    assert math.isnan(_stats.accuracy(top5, labels)["agreement"])


def test_padded_batches_cover_every_index_once():
    chunks = list(_stats.padded_batches(list(range(10)), 4))
    assert [real for _, real in chunks] == [4, 4, 2]
    assert chunks[-1][0] == [8, 9, 9, 9]
    assert [i for chunk, real in chunks for i in chunk[:real]] == list(range(10))


def test_table_formatting_marks_missing_values():
    table = _stats.markdown_table(["engine", "ms", "top-1"], [["a", 1.234, None], ["b", 12, float("nan")]])
    lines = table.splitlines()
    assert lines[1] == "| --- | ---: | ---: |"
    assert lines[2] == "| a | 1.23 | n/a |"
    assert lines[3] == "| b | 12 | n/a |"
    assert _stats.fmt(14009447) == "14,009,447"
    assert math.isnan(_stats.ratio(1, 0)) and math.isnan(_stats.ratio(None, 2)) and _stats.ratio(3, 2) == 1.5


def test_missing_peer_is_skipped_with_a_reason(monkeypatch):
    absent = engines.Engine("ghost", "Ghost INT8", "int8", "engines.ort:open_onnx", requires=("no_such_module_xyz",))
    monkeypatch.setitem(engines.ENGINES, "ghost", absent)
    ready, skipped = run.select_engines(["ort_fp32", "ghost"], "ort-x86")
    assert ready == ["ort_fp32"]
    assert len(skipped) == 1 and "no_such_module_xyz" in skipped[0] and "bench/requirements.txt" in skipped[0]


def test_unknown_engine_or_model_is_rejected():
    with pytest.raises(SystemExit):
        run.parse_args(["--engines", "ort_fp32,tensorflow"])
    with pytest.raises(SystemExit):
        run.parse_args(["--models", "alexnet"])
    args = run.parse_args(["--quick", "--models", "squeezenet1_1", "--engines", "ort_fp32, ov_int8"])
    assert args.models == ["squeezenet1_1"] and args.engines == ["ort_fp32", "ov_int8"]


def _model_entry():
    def engine(label, precision, ms, top1=None):
        return {
            "label": label, "precision": precision,
            "latency_b1": {"median_ms": ms, "p90_ms": ms * 1.1, "round_medians_ms": [ms * f for f in (1.0, 1.1, 0.95, 1.02, 0.99)]},
            "throughput_b8": 8000 / (ms * 6),
            "artifact": {"onnx_bytes": 1000, "shipped_bytes": 800},
            "accuracy": {"top1": top1, "top5": 90.0, "agreement": 99.0, "n": 1000} if top1 is not None else {},
        }

    return {
        "model": "mobilenet_v2", "macs": 300_000_000, "params": 3_500_000, "input_size": 224,
        "preprocess": {"name": "tf"}, "options": {}, "weights": "w", "real_weights": True,
        "engines": {
            "ort_fp32": engine("ORT FP32", "fp32", 3.0, 80.0),
            "edgecnn_int8": engine("edgecnn INT8 (ORT)", "int8", 1.0, 79.5),
            "edgecnn_w7a8": engine("edgecnn W7A8 (ORT, reduce-range)", "int8", 0.8, 79.4),
            "ort_qstatic": engine("ORT quantize_static INT8", "int8", 1.5, 79.0),
            "ov_int8": engine("OpenVINO INT8 (NNCF PTQ)", "int8", 0.9, 79.8),
            "edgecnn_int8_ov": engine("edgecnn INT8 file in OpenVINO", "int8", 0.6, 79.5),
            "broken": {"label": "Broken", "precision": "int8", "skipped": "build failed: X"},
        },
    }


def test_results_file_names_tell_core_designs_apart(monkeypatch):
    # Two AMD EPYC generations (AVX2 only, and AVX-512 VNNI) share one marketing name.
    import edgecnn.cpu
    import edgecnn.measure.sysinfo

    monkeypatch.setattr(edgecnn.measure.sysinfo, "cpu_model", lambda: "AMD EPYC")
    names = set()
    for design in ("family 23 model 49 stepping 0", "family 25 model 17 stepping 1"):
        monkeypatch.setattr(edgecnn.cpu, "host_identity", lambda design=design: design)
        names.add(run.machine_name())
    assert len(names) == 2
    assert all(n.startswith("amd-epyc-family-") and "stepping" not in n for n in names)


def test_derived_columns_and_goal_check():
    model = _model_entry()
    run.derived_columns(model, {"fp32": 20e9, "int8": 40e9})
    ours = model["engines"]["edgecnn_int8"]
    assert ours["speedup_vs_ort_fp32"] == pytest.approx(3.0)
    assert ours["peak_fraction_b1"] == pytest.approx(300e6 / 1e-3 / 40e9)
    assert model["engines"]["ort_fp32"]["peak_fraction_b1"] == pytest.approx(300e6 / 3e-3 / 20e9)
    goals = "\n".join(run.goal_lines(model))
    # Verdicts from one-sided bounds: half a point on 1000 images is not resolved either way.
    assert "ORT quantize_static INT8's: 79.5 vs 79.0" in goals and goals.count("-> not resolved") == 2
    assert "lower bound 3.00x; goal 2.5x) -> met" in goals  # every round 3x: the ratio is exact
    assert "1.00 ms vs 0.90 ms (ratio 0.90, 95 % bounds 0.90 / 0.90) -> not met" in goals
    # the OpenVINO row (faster still) is edgecnn's file in another runtime: never "the fastest edgecnn artifact"
    assert "fastest edgecnn artifact in ONNX Runtime: edgecnn W7A8 (ORT, reduce-range) at 3.75x ORT FP32" in goals
    assert "edgecnn's INT8 file in OpenVINO (the encoding and runtime of the ov-x86 targets): 5.00x ORT FP32" in goals
    # (toy numbers) fp32 at 300e6/3e-3/20e9 = 5x its peak, int8 peak 2x fp32: 2.5x needs 2.5 * 5 / 2 = 6.25x int8 peak
    assert "int8 peak MAC rate is 2.00x the fp32 peak" in goals and "at 625 % of int8 peak (edgecnn INT8: 750 %)" in goals
    rows = run.table_rows(model)
    assert [r[0] for r in rows] == ["ORT FP32", "edgecnn INT8 (ORT)", "edgecnn W7A8 (ORT, reduce-range)",
                                    "ORT quantize_static INT8", "OpenVINO INT8 (NNCF PTQ)", "edgecnn INT8 file in OpenVINO"]


def test_render_markdown_names_skips_and_shared_machine():
    model = _model_entry()
    run.derived_columns(model, None)
    report = {
        "environment": {"machine": "m", "cpu": "cpu", "cpu_count": 2, "cpu_flags": ["avx2"], "versions": {"numpy": "2"},
                        "load_start": [5.0], "load_end": [6.0], "shared": True},
        "config": {"date": "2026-01-01", "threads": 2, "quick": True, "rounds": 3, "iters_b1": 10, "iters_b8": 3,
                   "warmup": 2, "data_note": "sample"},
        "skipped": ["ov_int8 (OpenVINO INT8): needs 'nncf'"],
        "models": [model],
        "peaks": None,
        "elapsed_s": 60,
    }
    text = run.render_markdown(report)
    assert "other work may have added noise" in text
    assert "skipped: ov_int8 (OpenVINO INT8): needs 'nncf'" in text
    assert "- Broken: build failed: X" in text
    assert "## mobilenet_v2" in text and "| ORT FP32 |" in text


def test_search_results_render_verdicts_from_stored_bounds(tmp_path):
    """A committed results file re-renders with verdicts from its stored drops and round medians."""
    import json

    import search_report

    results = json.loads((BENCH / "results" / "search.json").read_text())
    out = tmp_path / "search"
    search_report.render(results, out)
    text = out.with_suffix(".md").read_text()
    assert "**not resolved**" in text and "95 % lower bound" in text
    assert "Environment" in text and "/tmp/" not in text
    assert (tmp_path / "search-mobilenet_v2.svg").is_file()
