"""Does the search's latency table predict what it measures? Predicted vs whole-model timing of
uniform and mixed-precision configurations of MobileNetV2 and SqueezeNet 1.1 (real weights).

The table is built exactly as the search builds it (edgecnn.search.run.measure_table: probes,
session-call and quantize costs, calibration on the uniform settings); then every configuration
below is built, exported and timed in one interleaved run through edgecnn's one timer
(edgecnn.measure.interleave) with the uniform settings, and its prediction compared:

* uniform FP32 / W8A8 / W7A8 / W6A8 (the table is calibrated on these from an earlier timing
  run: their error here is the timing noise between two runs);
* mixed: the first conv at FP32 (a Quantize moves onto its output), the last third at FP32,
  every other layer W8A8 / W7A8, the 25 % most MAC-heavy layers at FP32.

Goals: uniform within 10 %, mixed within 15 %. ORT's own profiler then shows, per op type and
input type, where the time of uniform FP32, uniform W7A8 and the worst-predicted mixed
configuration goes (what the per-layer probes cannot see: the layouts ORT picks around a change
of precision). Judged on the time relative to FP32 (predicted
ratio against the ratio measured in the checking run): absolute times drift between two runs on
a shared machine by as much as the goals, so the absolute error is shown but not judged.

    python bench/latency_check.py                       # writes bench/results/latency_check.md / .json
    python bench/latency_check.py --models squeezenet1_1 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from _models import load  # noqa: E402
from _stats import markdown_table, write_results  # noqa: E402

DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", BENCH_DIR.parent.parent / "shared" / "data"))
GOALS = {"uniform": 10.0, "mixed": 15.0}  # largest |error| in %


def mixed_configs(space) -> dict[str, dict]:
    """Mixed-precision configurations that change the precision at different places."""
    base = space.uniform("w7a8")
    layers = space.layers
    q = lambda layer: f"q:{layer}"  # noqa: E731
    heavy = sorted(layers, key=lambda n: -space.layer_macs.get(n, 0))[: max(1, len(layers) // 4)]
    return {
        "first conv FP32, rest W7A8": {**base, q(layers[0]): "fp32"},
        "last third FP32, rest W7A8": {**base, **{q(n): "fp32" for n in layers[2 * len(layers) // 3:]}},
        "alternating W8A8 / W7A8": {**base, **{q(n): "w8a8" for n in layers[::2]}},
        "heaviest quarter FP32, rest W7A8": {**base, **{q(n): "fp32" for n in heavy}},
    }


def search_builder(name: str, args, work: Path):
    """(space, builder) of model ``name`` as the search makes them: real weights, ``args.images``
    search-part images, precision only, ``args.target``, no time limit. The caller closes
    ``builder.timer``."""
    import torch

    from edgecnn.data.split import split_folder
    from edgecnn.search.budget import Budget
    from edgecnn.search.prepare import search_data
    from edgecnn.search.run import SearchConfig, _Builder
    from edgecnn.search.space import build_space

    torch.set_num_threads(args.threads)
    loaded = load(name, DATA)
    model = loaded.module.eval()
    data = search_data(split_folder(DATA / "imagenet-sample").search, loaded.preprocess, 32, limit=args.images)
    config = SearchConfig(threads=args.threads, prune_densities=[], target=args.target)
    space = build_space(model, torch.from_numpy(data.images[:1]), tuple(config.precisions))
    return space, _Builder(model, space, data, config, work / name, print, Budget(None))


def check_model(name: str, args, work: Path) -> dict:
    from edgecnn.measure.interleave import Timer
    from edgecnn.search.run import measure_table

    space, builder = search_builder(name, args, work)
    try:
        table = measure_table(builder, space, print)
        configs = {f"uniform {p.upper()}": space.uniform(p) for p in builder.config.precisions}
        configs.update(mixed_configs(space))
        paths = {label: (builder.fp32_path if label == "uniform FP32" else builder.build(cfg, f"check-{i}"))
                 for i, (label, cfg) in enumerate(configs.items())}
        with Timer(args.threads) as timer:  # the measured side of every check is a claim: its rounds spread
            times = timer.time_claim(paths, spread_s=args.spread)
    finally:
        builder.timer.close()
    rows = []
    fp32_predicted, fp32_measured = table.predict(space, configs["uniform FP32"]), times["uniform FP32"].median_ms
    for label, cfg in configs.items():
        predicted, measured = table.predict(space, cfg), times[label].median_ms
        kind = "uniform" if label.startswith("uniform") else "mixed"
        predicted_ratio, measured_ratio = predicted / fp32_predicted, measured / fp32_measured
        rows.append({"config": label, "kind": kind, "predicted_ms": predicted, "measured_ms": measured,
                     "round_medians_ms": times[label].round_medians_ms, "error_pct": 100 * (predicted - measured) / measured,
                     "predicted_vs_fp32": predicted_ratio, "measured_vs_fp32": measured_ratio,
                     "ratio_error_pct": 100 * (predicted_ratio - measured_ratio) / measured_ratio})
    worst = max((r for r in rows if r["kind"] == "mixed"), key=lambda r: abs(r["ratio_error_pct"]))["config"]
    profiles = {label: op_shares(paths[label], args.threads) for label in ("uniform FP32", "uniform W7A8", worst)}
    return {"rows": rows, "profiles": profiles, "table": {"scale": table.scale, "other_ms": table.other_ms,
                                    "boundary_ms_total": sum(table.boundary_ms.values())},
            "full_table": table.to_dict(), "configs": configs}


PROFILE_RUNS = 30


def op_shares(path, threads: int, top: int = 8) -> list[dict]:
    """The ``top`` op types (by input type) of one model file in ORT's profiler: ms per run
    (inflated by the profiler alike for every node) and share of node time."""
    from edgecnn.backends.ort import profile_ops

    table = profile_ops(path, runs=PROFILE_RUNS, threads=threads, by_input_type=True)
    return [{"op": row.op_type, "nodes": row.calls // (PROFILE_RUNS - 1), "ms_per_run": row.total_us / 1e3 / (PROFILE_RUNS - 1),
             "share": row.share} for row in table[:top]]


def ratio_error_bounds(row: dict, fp32: dict) -> tuple[float, float]:
    """One-sided 95 % bounds (%) of the predicted-vs-measured error of the time relative to FP32:
    the measured ratio's bounds come from the per-round paired ratios (edgecnn.stats.ratio_bound)."""
    from edgecnn.stats import ratio_bound

    measured = ratio_bound(row["round_medians_ms"], fp32["round_medians_ms"])  # candidate / FP32, per round
    predicted = row["predicted_vs_fp32"]
    return 100 * (predicted / measured.upper - 1), 100 * (predicted / measured.lower - 1)


def error_verdict(low: float, high: float, goal: float) -> str:
    """|error| <= goal: met when both bounds are inside, not met when both are outside on one side."""
    from edgecnn.stats import MET, NOT_MET, NOT_RESOLVED

    if -goal <= low and high <= goal:
        return MET
    if low > goal or high < -goal:
        return NOT_MET
    return NOT_RESOLVED


def kind_verdict(verdicts: list[str]) -> str:
    from edgecnn.stats import MET, NOT_MET, NOT_RESOLVED

    return NOT_MET if NOT_MET in verdicts else (MET if all(v == MET for v in verdicts) else NOT_RESOLVED)


def render(results: dict) -> str:
    from edgecnn.measure.sysinfo import environment_markdown

    lines = ["# Latency table: predicted vs measured", "",
             f"Generated by `bench/latency_check.py`; settings `{json.dumps(results['settings'])}`. Goals: uniform "
             f"within {GOALS['uniform']:g} %, mixed within {GOALS['mixed']:g} % of whole-model timing (one interleaved "
             "run through edgecnn.measure.interleave; the table was calibrated on an earlier run of the uniform settings).", "",
             environment_markdown(results["environment"])]
    lines += ["Judged on time relative to FP32 (predicted ratio vs the ratio measured in this run): absolute "
              "times drift between two runs on a shared machine by as much as the goals (the `error %` column). "
              "A configuration meets its goal only when both one-sided 95 % bounds of its ratio error (from the "
              "per-round paired ratios to FP32) lie within it, misses it when both lie outside on one side, and "
              "is not resolved otherwise; a kind of configuration meets its goal when every one of them does.", ""]
    for model, found in results["models"].items():
        fp32 = next(r for r in found["rows"] if r["config"] == "uniform FP32")
        rows, verdicts = [], {kind: [] for kind in GOALS}
        for r in found["rows"]:
            row = [r["config"], r["predicted_ms"], r["measured_ms"], r["error_pct"], r["predicted_vs_fp32"],
                   r["measured_vs_fp32"], r["ratio_error_pct"]]
            if r is fp32:  # its own reference: no error to judge
                rows.append(row + ["", ""])
                continue
            low, high = ratio_error_bounds(r, fp32)
            verdict = error_verdict(low, high, GOALS[r["kind"]])
            verdicts[r["kind"]].append(verdict)
            rows.append(row + [f"{low:+.1f} / {high:+.1f}", verdict])
        head = ["configuration", "predicted ms", "measured ms", "error %", "predicted x FP32", "measured x FP32",
                "ratio error %", "95 % bounds", "verdict"]
        lines += [f"## {model}", "", markdown_table(head, rows), ""]
        for kind, goal in GOALS.items():
            judged = [(r["config"], abs(r["ratio_error_pct"])) for r in found["rows"] if r["kind"] == kind and r is not fp32]
            if judged:
                worst = max(judged, key=lambda item: item[1])
                lines.append(f"- {kind}: largest |ratio error| {worst[1]:.1f} % ({worst[0]}; goal {goal:g} %) -> "
                             f"{kind_verdict(verdicts[kind])}")
        lines.append("")
        for label, ops in found.get("profiles", {}).items():
            lines += [f"Where the time of *{label}* goes (ORT profiler, {PROFILE_RUNS - 1} runs after one; the profiler "
                      "slows every node, so compare shares):", "",
                      markdown_table(["op (first input type)", "nodes", "ms per run", "share %"],
                                     [[o["op"], o["nodes"], o["ms_per_run"], 100 * o["share"]] for o in ops]), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,squeezenet1_1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="x86", help="ONNX Runtime target of the table (default: x86, this CPU's)")
    parser.add_argument("--images", type=int, default=128, help="search-part images (calibration of the configurations)")
    parser.add_argument("--spread", type=float, default=30.0,
                        help="seconds the whole-model timing's rounds are spread over (edgecnn.measure.interleave.CLAIM_SPREAD_S)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "latency_check"))
    parser.add_argument("--render", type=Path, default=None, help="only re-render the .md of an earlier run's .json")
    args = parser.parse_args(argv)
    from edgecnn.fileio import write_text_atomic
    from edgecnn.measure.sysinfo import environment
    from engines import host_ort_target

    args.target, unfit = host_ort_target(args.target)  # the results name the target that ran, not "x86"
    if unfit and not args.render:
        parser.error(f"--target: {unfit}")
    if args.render:
        write_text_atomic(Path(args.out).with_suffix(".md"), render(json.loads(args.render.read_text())))
        return 0

    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "environment": environment(args.threads), "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgecnn-latency-check-") as tmp:
        for model in args.models.split(","):
            print(f"== {model}", flush=True)
            results["models"][model] = check_model(model, args, Path(tmp))
    print(write_results(args.out, results, render))
    return 0


if __name__ == "__main__":
    sys.exit(main())
