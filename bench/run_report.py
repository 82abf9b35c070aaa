"""bench/run.py's report: derived columns, the markdown tables, goal verdicts (edgecnn.stats),
op-profile and Q/DQ graph-difference sections. Pure functions of the run's JSON, so a committed
run re-renders (``python bench/run.py --from-json FILE``) without measuring."""

from __future__ import annotations

import math

from _stats import markdown_table, ratio
from engines import ENGINES


def say(message: str) -> None:
    print(message, flush=True)


def derived_columns(model: dict, peaks: dict) -> None:
    """Speed-up vs ORT FP32 and the fraction of the measured peak MAC rate, per engine."""
    base = model["engines"].get("ort_fp32", {}).get("latency_b1", {}).get("median_ms")
    for entry in model["engines"].values():
        if "latency_b1" not in entry:
            continue
        median_s = entry["latency_b1"]["median_ms"] / 1e3
        peak = peaks.get(entry["precision"]) if peaks else None
        entry["speedup_vs_ort_fp32"] = ratio(base, entry["latency_b1"]["median_ms"])
        entry["macs_per_s_b1"] = model["macs"] / median_s if median_s > 0 else math.nan
        entry["macs_per_s_b8"] = model["macs"] * entry["throughput_b8"]
        entry["peak_fraction_b1"] = ratio(entry["macs_per_s_b1"], peak)
        entry["peak_fraction_b8"] = ratio(entry["macs_per_s_b8"], peak)
    if peaks and peaks.get("fp32") and peaks.get("int8"):
        model["peak_ratio_int8_fp32"] = peaks["int8"] / peaks["fp32"]


HEADERS = [
    "engine", "b1 median ms", "b1 p90 ms", "x ORT FP32", "b8 img/s", "model bytes", "shipped bytes",
    "top-1 %", "top-5 %", "FP32 agree %", "calib s", "calib peak MB", "% peak b1", "% peak b8",
]


def table_rows(model: dict) -> list[list]:
    rows = []
    for engine_name, entry in model["engines"].items():
        if "latency_b1" not in entry:
            continue
        art = entry.get("artifact", {})
        acc = entry.get("accuracy", {})
        shipped = art.get("shipped_bytes")
        percent = lambda v: v * 100 if isinstance(v, float) and not math.isnan(v) else None  # noqa: E731
        rows.append([
            entry["label"],
            entry["latency_b1"]["median_ms"], entry["latency_b1"]["p90_ms"], entry.get("speedup_vs_ort_fp32"),
            entry["throughput_b8"], art.get("onnx_bytes"), shipped if isinstance(shipped, int) else None,
            acc.get("top1"), acc.get("top5"), acc.get("agreement"),
            art.get("calib_seconds"), art.get("calib_peak_rss_mb"),
            percent(entry.get("peak_fraction_b1")), percent(entry.get("peak_fraction_b8")),
        ])
    return rows


def goal_lines(model: dict) -> list[str]:
    """The goal: edgecnn INT8 at least as accurate as quantize_static and NNCF, >= 2.5x ORT FP32
    (MobileNetV2), no slower than OpenVINO INT8."""
    engines = model["engines"]
    ours = engines.get("edgecnn_int8", {})
    if "latency_b1" not in ours:
        return ["- edgecnn INT8 not measured in this run: goal not checked."]
    from edgecnn.stats import verdict_at_least

    lines = []
    accuracy_of = ours.get("accuracy", {})
    for peer in ("ort_qstatic", "ov_int8"):
        other = engines.get(peer, {}).get("accuracy", {})
        if accuracy_of.get("top1") is not None and other.get("top1") is not None:
            bound = top1_difference(accuracy_of, other)
            lines.append(f"- top-1 at least {engines[peer]['label']}'s: {accuracy_of['top1']:.1f} vs {other['top1']:.1f} "
                         f"(difference {bound.estimate:+.2f}, 95 % bounds {bound.lower:+.2f} / {bound.upper:+.2f}) -> "
                         f"{verdict_at_least(bound, 0.0)}")
    speedup = ours.get("speedup_vs_ort_fp32")
    fp32_rounds = engines.get("ort_fp32", {}).get("latency_b1", {}).get("round_medians_ms")
    if speedup is not None and not math.isnan(speedup) and fp32_rounds:
        from edgecnn.stats import ratio_bound

        bound = ratio_bound(fp32_rounds, ours["latency_b1"]["round_medians_ms"])
        lines.append(f"- speed-up vs ORT FP32 (b1): {speedup:.2f}x (per-round paired {bound.estimate:.2f}x, 95 % lower bound "
                     f"{bound.lower:.2f}x; goal 2.5x) -> {verdict_at_least(bound, 2.5)}")
    on_ort = [k for k in engines if k.startswith("edgecnn_") and ENGINES.get(k) and ENGINES[k].open.startswith("engines.ort:")]
    fastest = min((engines[k] for k in on_ort if "latency_b1" in engines[k]), key=lambda e: e["latency_b1"]["median_ms"], default=None)
    if fastest is not None and fastest is not ours and fastest.get("speedup_vs_ort_fp32"):
        lines.append(f"- fastest edgecnn artifact in ONNX Runtime: {fastest['label']} at {fastest['speedup_vs_ort_fp32']:.2f}x ORT FP32")
    in_openvino = engines.get("edgecnn_int8_ov", {})
    if in_openvino.get("speedup_vs_ort_fp32") and fp32_rounds:
        from edgecnn.stats import ratio_bound

        bound = ratio_bound(fp32_rounds, in_openvino["latency_b1"]["round_medians_ms"])
        lines.append(f"- edgecnn's INT8 file in OpenVINO (the encoding and runtime of the ov-x86 targets): {bound.estimate:.2f}x ORT FP32 "
                     f"per round (95 % lower bound {bound.lower:.2f}x)")
    peak_ratio = model.get("peak_ratio_int8_fp32")
    fp32_fraction = engines.get("ort_fp32", {}).get("peak_fraction_b1")
    if peak_ratio and fp32_fraction and not math.isnan(fp32_fraction):
        # speed-up = (int8 peak x int8 fraction) / (fp32 peak x fp32 fraction): what 2.5x asks of the int8 kernels
        needed = 2.5 * fp32_fraction / peak_ratio
        lines.append(
            f"- ceiling on this CPU: int8 peak MAC rate is {peak_ratio:.2f}x the fp32 peak; ORT FP32 runs at "
            f"{fp32_fraction * 100:.0f} % of fp32 peak, so 2.5x needs the int8 graph at {needed * 100:.0f} % of int8 peak "
            f"(edgecnn INT8: {ours.get('peak_fraction_b1', math.nan) * 100:.0f} %)")
    ov = engines.get("ov_int8", {}).get("latency_b1", {})
    if ov.get("round_medians_ms"):
        from edgecnn.stats import ratio_bound

        mine = ours["latency_b1"]
        bound = ratio_bound(ov["round_medians_ms"], mine["round_medians_ms"])
        lines.append(f"- no slower than OpenVINO INT8 (b1): {mine['median_ms']:.2f} ms vs {ov['median_ms']:.2f} ms (ratio "
                     f"{bound.estimate:.2f}, 95 % bounds {bound.lower:.2f} / {bound.upper:.2f}) -> {verdict_at_least(bound, 1.0)}")
    return lines


def top1_difference(ours: dict, other: dict):
    """Our top-1 minus a peer's on the same images, with one-sided bounds. Per-image results are
    not stored, so the bound is unpaired (conservative: paired predictions vary less)."""
    from edgecnn.stats import Bound

    n = int(ours.get("n") or other.get("n") or 0)
    p, q = ours["top1"] / 100, other["top1"] / 100
    se = 100 * math.sqrt((p * (1 - p) + q * (1 - q)) / n) if n else math.inf
    return Bound.normal(ours["top1"] - other["top1"], se, n)


def op_profile_section(model: dict) -> list[str]:
    lines = []
    for entry in model["engines"].values():
        profile = entry.get("op_profile")
        if not profile:
            continue
        total = sum(v["ms"] for v in profile["ops"].values()) or math.nan
        rows = [[op, v["nodes"], v["ms"], v["ms"] / total * 100] for op, v in list(profile["ops"].items())[:10]]
        lines += [f"**{entry['label']}** (ORT profiler, batch 1: {total:.2f} ms in kernels, {profile['wall_ms']:.2f} ms per run with profiling on)", ""]
        lines += [markdown_table(["op type (after ORT fusion)", "nodes", "ms", "% of kernel time"], rows), ""]
    return lines


def graph_diff_section(model: dict) -> list[str]:
    """Node types of the int8 ONNX files as written (before ORT fusion): where ours differs from quantize_static."""
    ours = model["engines"].get("edgecnn_int8", {}).get("artifact", {}).get("graph_ops")
    theirs = model["engines"].get("ort_qstatic", {}).get("artifact", {}).get("graph_ops")
    if not ours or not theirs:
        return []
    ops = sorted(set(ours) | set(theirs))
    rows = [[op, ours.get(op, 0), theirs.get(op, 0)] for op in ops if ours.get(op, 0) != theirs.get(op, 0)]
    if not rows:
        return ["Node types of the two Q/DQ files are identical in count.", ""]
    return [markdown_table(["op type (ONNX file)", "edgecnn INT8", "quantize_static"], rows), ""]


def render_markdown(report: dict) -> str:
    from edgecnn.measure.sysinfo import environment_lines

    env, config = report["environment"], report["config"]
    peaks = report.get("peaks") or {}
    lines = [
        f"# edgecnn vs peers: {config['date']} on {env['machine']}",
        "",
        *(environment_lines(env) if "edgecnn_commit" in env else [
            f"- CPU: {env['cpu']} ({env['cpu_count']} logical CPUs; flags {', '.join(env['cpu_flags'])})",
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)]),
        f"- All engines at {config['threads']} threads, 1 stream.",
        f"- Load average at start / end: {env['load_start']} / {env.get('load_end')}"
        + (" — above 0.75 x threads at start or end (this run's own engine processes count too): other work may have added noise." if env.get("shared") else ""),
        f"- Run: {'--quick' if config['quick'] else 'full'}, {config['rounds']} interleaved rounds"
        + (f" spread over {config['spread_s']:g} s" if config.get("spread_s") else "") + " x "
        f"({config['iters_b1']} batch-1 + {config['iters_b8']} batch-8 iterations, warm-up {config['warmup']} "
        + ("calls per round); each engine in its own process (edgecnn.measure.interleave); latency = median over "
           "rounds of each round's median, p90 over all samples" if "edgecnn_commit" in env else
           "(x3 in round 1)); each engine in its own process; latency = median over rounds of each round's median "
           "(p90 likewise)") + f"; took {report.get('elapsed_s', 0) / 60:.1f} min.",
        f"- Data: {config['data_note']}",
        f"- Peak MAC rate measured in this run ({config['threads']} threads, best of large GEMMs): "
        + (f"fp32 {peaks['fp32'] / 1e9:.1f} GMAC/s, int8 {peaks['int8'] / 1e9:.1f} GMAC/s "
           f"({', '.join(f'{k} {v / 1e9:.1f}' for k, v in peaks['kernels'].items())}); "
           "% peak = model MACs x inferences/s / peak of the engine's precision." if peaks else "not measured."),
        "- model bytes: the ONNX file (OpenVINO INT8: IR xml+bin; PyTorch: n/a); shipped bytes: "
        "`edgecnn.pack.shipped_size` of that ONNX. calib peak MB: peak RSS of the process that calibrated "
        "(imports and model included).",
        "",
    ]
    for skipped in report.get("skipped", []):
        lines.append(f"- skipped: {skipped}")
    if report.get("skipped"):
        lines.append("")
    for model in report["models"]:
        lines += [
            f"## {model['model']}",
            "",
            f"{model['macs'] / 1e6:.1f} M MACs, {model['params'] / 1e6:.2f} M params, input {model['input_size']}, "
            f"preprocess `{model['preprocess']['name']}`, options {model['options']}, weights: {model['weights']}.",
            "",
            markdown_table(HEADERS, table_rows(model)),
            "",
        ]
        notes = [f"- {e['label']}: {e['skipped']}" for e in model["engines"].values() if e.get("skipped")]
        if not model.get("real_weights"):
            notes.append("- no real weights for this model here: accuracy columns are n/a.")
        if model.get("agreement_reference"):
            notes.append(f"- FP32 agreement = same top-1 as {ENGINES[model['agreement_reference']].label}.")
        for e in model["engines"].values():
            if e.get("info", {}).get("runtime_precision"):
                notes.append(f"- {e['label']}: runtime inference precision {e['info']['runtime_precision']}.")
            if e.get("artifact", {}).get("config"):
                notes.append(f"- {e['label']}: {e['artifact']['config']}.")
        lines += notes + [""]
        goals = goal_lines(model)
        lines += ["Goal check (edgecnn INT8):", ""] + goals + [""]
        diff = graph_diff_section(model)
        if diff:
            lines += ["Q/DQ graph difference (node counts that differ):", ""] + diff
        profile = op_profile_section(model)
        if profile:
            lines += ["<details><summary>ORT per-op-type profile</summary>", ""] + profile + ["</details>", ""]
    if report.get("findings"):
        lines += ["## Findings", "", report["findings"], ""]
    return "\n".join(lines)


def print_tables(report: dict) -> None:
    for model in report["models"]:
        say(f"\n{model['model']} ({model['macs'] / 1e6:.1f} M MACs)")
        say(markdown_table(HEADERS, table_rows(model)))
        for line in goal_lines(model):
            say(line)
