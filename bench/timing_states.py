"""Does a speed ratio measured in one timing hold in the next? The same files (FP32, uniform W8A8
and W7A8 of one model, built as the search builds them) timed in several separate interleaved
timings of one run, a pause apart, each through edgecnn's one timer (edgecnn.measure.interleave,
fresh worker processes every time): each timing's ratio to FP32 with its one-sided 95 % bounds
from per-round paired ratios (edgecnn.stats), and whether the timings agree within those bounds.

Two timings of one file that disagree beyond their bounds mean the machine changes state for
longer than one timing lasts (the rounds of one timing then share that state, and its bounds are
too narrow for a claim about the next one). Each timing is taken under every protocol of
``--spreads`` in turn (the same rounds, back to back or spread over that many seconds), so the
protocols are compared on the same machine states.

    python bench/timing_states.py                    # writes bench/results/timing_states.md / .json
    python bench/timing_states.py --models squeezenet1_1 --timings 4 --pause 10 --spreads 0,30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from _stats import markdown_table, write_results  # noqa: E402
from latency_check import search_builder  # noqa: E402

SETTINGS = ("fp32", "w8a8", "w7a8")


def build_files(name: str, args, work: Path) -> dict[str, str]:
    """FP32 and the uniform int8 settings of ``name``, exported for ``args.target`` as the search does."""
    space, builder = search_builder(name, args, work)
    try:
        return {s: str(builder.fp32_path if s == "fp32" else builder.build(space.uniform(s), f"uniform-{s}"))
                for s in SETTINGS}
    finally:
        builder.timer.close()


def time_repeatedly(paths: dict[str, str], args) -> dict[str, list[dict]]:
    """{protocol: timings}: ``args.timings`` rounds of separate interleaved timings, ``args.pause``
    seconds apart, each under every spread of ``args.spreads`` in turn (``args.rounds`` rounds each)."""
    from edgecnn.measure.interleave import Timer
    from edgecnn.stats import ratio_bound

    out: dict[str, list[dict]] = {protocol_name(spread): [] for spread in args.spreads}
    for k in range(args.timings):
        for spread in args.spreads:
            if k or spread != args.spreads[0]:
                time.sleep(args.pause)
            with Timer(args.threads, rounds=args.rounds) as timer:  # new workers: a new session of every file each time
                times = timer.time(paths, spread_s=spread)
            fp32 = times["fp32"].round_medians_ms
            out[protocol_name(spread)].append({
                "median_ms": {s: times[s].median_ms for s in SETTINGS},
                "round_medians_ms": {s: times[s].round_medians_ms for s in SETTINGS},
                "window_s": times["fp32"].window_s,
                "vs_fp32": {s: ratio_bound(fp32, times[s].round_medians_ms).to_dict() for s in SETTINGS if s != "fp32"},
            })
            ratio = out[protocol_name(spread)][-1]["vs_fp32"]["w7a8"]
            print(f"  timing {k + 1}/{args.timings} ({protocol_name(spread)}): FP32 {times['fp32'].median_ms:.2f} ms, "
                  f"W7A8 x FP32 {ratio['estimate']:.2f} ({ratio['lower']:.2f}-{ratio['upper']:.2f})", flush=True)
    return out


def protocol_name(spread: float) -> str:
    return f"rounds spread over {spread:g} s" if spread else "rounds back to back"


def disagreements(timings: list[dict], setting: str) -> list[tuple[int, int]]:
    """Pairs of timings (1-based) whose two-sided intervals (the one-sided 95 % bounds) of the
    ratio ``setting`` x FP32 do not overlap: they disagree beyond what each one's rounds allow."""
    pairs = []
    for i, a in enumerate(timings):
        for j in range(i + 1, len(timings)):
            b = timings[j]["vs_fp32"][setting]
            if a["vs_fp32"][setting]["upper"] < b["lower"] or b["upper"] < a["vs_fp32"][setting]["lower"]:
                pairs.append((i + 1, j + 1))
    return pairs


def mean_log_t_bound(reference_ms, candidate_ms, confidence: float = 0.95) -> dict:
    """The statistic edgecnn used before the sign test: the geometric mean of the per-round ratios
    and a t bound on the mean log ratio (kept here only to compare the two on the same rounds)."""
    import math

    import numpy as np
    from scipy.stats import t

    logs = np.log(np.asarray(reference_ms, dtype=float) / np.asarray(candidate_ms, dtype=float))
    half = float(t.ppf(confidence, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size))
    return {"estimate": math.exp(logs.mean()), "lower": math.exp(logs.mean() - half), "upper": math.exp(logs.mean() + half)}


STATISTICS = {  # name -> the ratio bound computed from one timing's per-round medians
    "sign test on the median ratio (edgecnn.stats)": lambda ref, cand: __import__("edgecnn.stats").stats.ratio_bound(ref, cand).to_dict(),
    "t bound on the mean log ratio (before)": mean_log_t_bound,
}


def with_bounds(timings: list[dict], statistic) -> list[dict]:
    """``timings`` with ``vs_fp32`` recomputed from their per-round medians by ``statistic``."""
    return [{**t, "vs_fp32": {x: statistic(t["round_medians_ms"]["fp32"], t["round_medians_ms"][x]) for x in SETTINGS[1:]}}
            for t in timings]


def _ratio_cell(bound: dict) -> str:
    return f"{bound['estimate']:.2f} ({bound['lower']:.2f}-{bound['upper']:.2f})"


def _mean_width(timings: list[dict], setting: str) -> str:
    """Mean upper / lower bound over the timings; "unbounded" when too few rounds bound a ratio."""
    import math

    widths = [t["vs_fp32"][setting]["upper"] / t["vs_fp32"][setting]["lower"] for t in timings
              if t["vs_fp32"][setting]["lower"] > 0 and math.isfinite(t["vs_fp32"][setting]["upper"])]
    return f"{sum(widths) / len(widths):.2f}" if len(widths) == len(timings) else "unbounded"


def render(results: dict) -> str:
    from edgecnn.measure.sysinfo import environment_markdown

    s = results["settings"]
    rounds = s.get("rounds", 5)
    lines = ["# Do speed ratios hold from one timing to the next?", "",
             f"Generated by `bench/timing_states.py`; settings `{json.dumps(s)}`. Each timing: edgecnn's one timer, "
             f"fresh worker processes, {rounds} interleaved rounds; ratio and bounds: the median per-round paired ratio "
             "to FP32 and its one-sided 95 % bounds (edgecnn.stats.ratio_bound: sign test), recomputed from the stored "
             "per-round medians when rendered.", "",
             environment_markdown(results["environment"])]
    if results.get("load_average"):
        load = ", ".join(f"{k} {v:.1f}" for k, v in results["load_average"].items())
        lines += [f"Load average (1 min) of the machine, this run's own workers included: {load} (on "
                  f"{results['environment'].get('usable_cpus')} cores).", ""]
    summary = []
    library, *others = STATISTICS
    for model, protocols in results["models"].items():
        if isinstance(protocols, list):  # a run with one protocol: back-to-back rounds
            protocols = {protocol_name(0): protocols}
        for protocol, timings in protocols.items():
            timings = with_bounds(timings, STATISTICS[library])
            lines += [f"## {model}, {protocol}", ""]
            rows = []
            for k, t in enumerate(timings, 1):
                window = "-" if t.get("window_s") is None else f"{t['window_s']:.0f}"
                rows.append([k, window, *[t["median_ms"][x] for x in SETTINGS], *[_ratio_cell(t["vs_fp32"][x]) for x in SETTINGS[1:]]])
            lines += [markdown_table(["timing", "took s", *[f"{x.upper()} ms" for x in SETTINGS],
                                      *[f"{x.upper()} x FP32 (95 % bounds)" for x in SETTINGS[1:]]], rows), ""]
            for x in SETTINGS:
                values = [t["median_ms"][x] for t in timings]
                lines.append(f"- {x.upper()}: medians {min(values):.2f}-{max(values):.2f} ms across timings "
                             f"({100 * (max(values) / min(values) - 1):.0f} % apart)")
            pairs_total = len(timings) * (len(timings) - 1) // 2
            for x in SETTINGS[1:]:
                pairs = disagreements(timings, x)
                verdict = (f"{len(pairs)} of {pairs_total} pairs of timings disagree beyond "
                           f"their bounds ({', '.join(f'{a} vs {b}' for a, b in pairs)})" if pairs else
                           "every pair of timings agrees within its bounds")
                lines.append(f"- {x.upper()} x FP32: {verdict}")
                row = [model, protocol, x.upper()]
                for name in STATISTICS:
                    bounded = with_bounds(timings, STATISTICS[name])
                    row += [f"{len(disagreements(bounded, x))} of {pairs_total}", _mean_width(bounded, x)]
                summary.append(row)
            lines.append("")
    lines += ["## Protocols and statistics side by side", "",
              "Pairs of timings of the same files whose bounds do not overlap, and how wide the bounds are "
              "(upper over lower, mean over timings), for each statistic computed on the same rounds.", "",
              markdown_table(["model", "protocol", "ratio", *[f"{head} ({name})" for name in STATISTICS
                                                              for head in ("pairs disagreeing", "upper / lower")]], summary), ""]
    if results.get("findings"):
        lines += ["## Findings", "", results["findings"].strip(), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,squeezenet1_1")
    parser.add_argument("--timings", type=int, default=8)
    parser.add_argument("--pause", type=float, default=10.0, help="seconds between two timings")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of each timing")
    parser.add_argument("--spreads", default="0,30",
                        help="comma list: the protocols compared, seconds each timing's rounds are spread over (0: back to back)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="x86", help="ONNX Runtime target of the files (default: x86, this CPU's)")
    parser.add_argument("--images", type=int, default=64, help="search-part images the int8 files calibrate on")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "timing_states"))
    parser.add_argument("--render", type=Path, default=None, help="only re-render the .md of an earlier run's .json")
    parser.add_argument("--findings", type=Path, default=None, help="with --render: a findings section (markdown)")
    args = parser.parse_args(argv)
    from edgecnn.fileio import write_text_atomic
    from edgecnn.measure.sysinfo import environment
    from engines import host_ort_target

    out = Path(args.out)
    if args.render:
        results = json.loads(args.render.read_text())
        if args.findings:
            results["findings"] = args.findings.read_text()
            write_results(out, results, render)
        else:
            write_text_atomic(out.with_suffix(".md"), render(results))
        return 0
    try:
        args.spreads = [float(v) for v in args.spreads.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--spreads: '{args.spreads}' is not a comma list of seconds; e.g. 0,30")
    if args.timings < 2 or args.pause < 0 or args.rounds < 2 or not args.spreads or min(args.spreads) < 0:
        parser.error("--timings and --rounds must be at least 2, --pause at least 0, --spreads non-empty and >= 0")
    args.target, unfit = host_ort_target(args.target)
    if unfit:
        parser.error(f"--target: {unfit}")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "render", "findings")}
    results = {"settings": settings, "environment": environment(args.threads), "models": {},
               "load_average": {"start": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory(prefix="edgecnn-timing-states-") as tmp:
        for model in args.models.split(","):
            print(f"== {model}", flush=True)
            results["models"][model] = time_repeatedly(build_files(model, args, Path(tmp)), args)
            results["load_average"][f"after {model}"] = os.getloadavg()[0]
    print(write_results(out, results, render))
    return 0


if __name__ == "__main__":
    sys.exit(main())
