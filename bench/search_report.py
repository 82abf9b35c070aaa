"""bench/search.py's results as markdown and one SVG front per model, with verdicts from
one-sided 95 % bounds (edgecnn.stats): a goal is met only when the bound says so."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _stats import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.stats import MET, NOT_MET, NOT_RESOLVED, Bound, ratio_bound, verdict_at_least, verdict_at_most  # noqa: E402

# x ORT FP32 within 1.0 point, by the CPU class the run was on (its generated environment block)
GOALS = {"x86-vnni": {"mobilenet_v2": 1.8, "squeezenet1_1": 2.2}, "x86-avx2": {"mobilenet_v2": 1.5, "squeezenet1_1": 1.6}}
MAX_DROP = 1.0


def drop_of(row: dict) -> Bound:
    """The row's paired drop bound; rebuilt from its stored drop and 95 % half-width (1.96 standard
    errors) in files written before the bound was stored."""
    if row.get("drop_bound"):
        b = row["drop_bound"]
        return Bound(b["estimate"], b["lower"], b["upper"], b["confidence"], b["n"])
    return Bound.normal(row["drop"], row.get("ci95", 0.0) / 1.96, row.get("n", 0))


def speed_of(row: dict, reference: dict) -> Bound:
    """Speed ratio reference / row from the per-round paired medians of one interleaved run."""
    return ratio_bound(reference["latency"]["round_medians_ms"], row["latency"]["round_medians_ms"])


def both(*verdicts: str) -> str:
    if all(v == MET for v in verdicts):
        return MET
    return NOT_MET if NOT_MET in verdicts else NOT_RESOLVED


def goal_lines(model: str, found: dict, cpu_class: str = "") -> list[str]:
    engines = found["engines"]
    chosen, fp32 = engines["edgecnn searched"], engines["ORT FP32"]
    drop, speed = drop_of(chosen), speed_of(chosen, fp32)
    lines = []
    goal = GOALS.get(cpu_class, {}).get(model)
    if not goal:
        lines.append(f"- speed goal: none set for CPU class {cpu_class or 'not recorded'} (goals exist for "
                     f"{', '.join(GOALS)})")
    else:
        verdict = both(verdict_at_most(drop, MAX_DROP), verdict_at_least(speed, goal))
        lines.append(f"- within {MAX_DROP} point, >= {goal}x ORT FP32 ({cpu_class} goal): searched artifact {chosen['speedup']:.2f}x (ratio of "
                     f"medians; per-round paired {speed.estimate:.2f}x, 95 % lower bound {speed.lower:.2f}x) at {drop.estimate:+.2f} points (95 % upper bound "
                     f"{drop.upper:+.2f}) -> **{verdict}**")
    ov = engines.get("OpenVINO INT8 (NNCF PTQ)")
    if ov:
        versus = speed_of(chosen, ov)
        ov_drop = drop_of(ov)
        lines.append(f"- faster than OpenVINO INT8: {chosen['latency']['median_ms']:.2f} vs {ov['latency']['median_ms']:.2f} ms, "
                     f"ratio {versus.estimate:.2f} (95 % bounds {versus.lower:.2f}-{versus.upper:.2f}) -> "
                     f"**{verdict_at_least(versus, 1.0)}**; accuracy from FP32: edgecnn {drop.estimate:+.2f} (upper "
                     f"{drop.upper:+.2f}), OpenVINO {ov_drop.estimate:+.2f} (upper {ov_drop.upper:+.2f}) points on "
                     f"{drop.n} images, where one image is {100 / max(drop.n, 1):.2f} points: equal accuracy within "
                     "0.3 point is not resolved by this sample")
    else:
        lines.append("- OpenVINO INT8: not run (openvino/nncf not importable in the bench's interpreter)")
    return lines


def _points(engines: dict) -> list[dict]:
    kinds = {"ORT FP32": "fp32", "edgecnn searched": "chosen"}
    return [{"label": label, "ms": row["latency"]["median_ms"], "top1": row["top1"],
             "kind": kinds.get(label, "uniform" if label.startswith("edgecnn uniform") else "candidate")}
            for label, row in engines.items() if not row.get("same_file_as")]


def environment_section(results: dict) -> list[str]:
    from edgecnn.measure.sysinfo import environment_lines

    if results.get("environment"):
        return ["Environment (generated):", ""] + environment_lines(results["environment"]) + [""]
    return ["Environment: not recorded by this run (it predates the generated block); the CPU is named in the "
            "findings below.", ""]


def model_section(model: str, found: dict, out: Path, cpu_class: str = "") -> list[str]:
    from edgecnn.search.pareto import svg

    s = found["summary"]
    fp32 = found["engines"]["ORT FP32"]
    lines = [f"## {model}", "",
             f"Search part {found['search_images']} images, evaluation part {found['evaluation_images']} "
             f"({found['split_rule']}). Search + recovery wall time {found['wall_s'] / 60:.1f} min, peak memory "
             f"{found['peak_rss_mb']:.0f} MB (search process); stages {s['seconds']}.", ""]
    headers = ["artifact", "b1 median ms", "b1 p90 ms", "x ORT FP32", "x 95 % lower", "top-1 %", "drop (points)",
               "drop 95 % upper", "FP32 agree %"]
    rows = []
    for label, r in found["engines"].items():
        drop, speed = drop_of(r), speed_of(r, fp32)
        rows.append([label + (f" (same file as {r['same_file_as']})" if r.get("same_file_as") else ""), r["latency"]["median_ms"],
                     r["latency"]["p90_ms"], r["speedup"], speed.lower, r["top1"], drop.estimate,
                     drop.upper if label != "ORT FP32" else None, r["agreement"]])
    lines += [markdown_table(headers, rows), ""]
    lines += goal_lines(model, found, cpu_class) + [""]
    plot = out.with_name(f"{out.name}-{model}.svg")
    plot.write_text(svg(_points(found["engines"]), f"{model}: top-1 (evaluation part) vs batch-1 latency"))
    lines += [f"![{model} front]({plot.name})", ""]
    if s.get("note"):
        lines += [s["note"], ""]
    lines += choice_section(found)
    lines += ["Configurations the search built and measured (search part):", ""]
    vrows = [[i, v["predicted_ms"], v["measured_ms"], v["proxy"], v["drop"], "yes" if v["feasible"] else "rejected"]
             for i, v in enumerate(s["verified"])]
    lines += [markdown_table(["#", "predicted ms", "measured ms", "proxy KL", "drop (search part)", "feasible"], vrows), ""]
    if s["latency_table_check"]:
        errs = [abs(r["error_pct"]) for r in s["latency_table_check"]]
        lines += [f"Latency table vs whole-model timing of those configurations: mean |error| {sum(errs) / len(errs):.1f} %.", ""]
    lines += ["Chosen configuration, per layer:", ""]
    lrows = [[r["layer"], r["kind"], r["precision"], r["in_kept"], r["out_kept"], "yes" if r["shift"] else ""] for r in s["chosen_layers"]]
    return lines + [markdown_table(["layer", "kind", "precision", "in kept", "out kept", "shift"], lrows), ""]


def _rank_line(what: str, rank) -> str:
    if not rank or rank.get("spearman") is None:
        return f"- proxy vs {what}: not computed ({(rank or {}).get('why', 'no candidates with both')})"
    verdict = ("resolved: the proxy ranks them as top-1 does" if rank["resolved"] else
               f"not resolved with {rank['candidates']} candidates")
    return (f"- proxy vs {what}: Spearman {rank['spearman']:+.2f} over {rank['candidates']} candidates, one-sided "
            f"permutation p = {rank['p_one_sided']:.3f} -> {verdict}")


def choice_section(found: dict) -> list[str]:
    """Which images chose what, per candidate: the proxy on the reserved photos, top-1 on the search
    part (the gate), top-1 on the evaluation part (reported, never chosen on)."""
    s, ev = found["summary"], found.get("candidates_evaluation")
    choose = s.get("choose") or {}
    lines = ["Which images chose what: the feasibility gate used the top-1 drop on the search part; ties within the "
             f"timing noise were decided on {choose.get('tie_break_on', 'the search part (agreement with FP32 on the search images)')}"
             + (f" ({found['choose_rule']}; " + (f"left out of the {found['recovery_photos']} recovery photos)" if found.get("recovery_photos")
                                                 else "no recovery training in this run)") if found.get("choose_rule") else "")
             + "; the evaluation part below was used for nothing but this report.", ""]
    if not ev:
        return lines
    rows = [[name + (" (chosen)" if r["chosen"] else ""), (r["choose"] or {}).get("agree"), None if not r["choose"] else f"{r['choose']['kl']:.4f}",
             r["top1_search"], r["top1_evaluation"], "yes" if r["feasible"] else "no"] for name, r in ev["rows"].items()]
    lines += [markdown_table(["configuration", "agree % (reserved photos)", "KL (nats)", "top-1 % search part",
                              "top-1 % evaluation part", "feasible"], rows), ""]
    lines += [_rank_line("top-1 on the search part", choose.get("rank_vs_search_top1")),
              _rank_line("top-1 on the evaluation part", ev.get("rank_vs_evaluation_top1")), ""]
    return lines


def _run_target(settings: dict) -> str:
    """The run's target: in the settings, or (merged files) in each model's settings."""
    return str(settings.get("target") or next((v.get("target") for v in settings.values() if isinstance(v, dict)), ""))


def _target_runtime(settings: dict) -> str:
    """The runtime of the run's target ("ort" for older files and unknown names)."""
    from edgecnn.targets import TARGETS

    target = TARGETS.get(_run_target(settings))
    return target.backend if target is not None else "ort"


def render(results: dict, out: Path) -> None:
    from edgecnn.fileio import write_text_atomic

    settings = results["settings"]
    lines = ["# Latency-measured per-layer search (issue 16)", "",
             "Generated by `bench/search.py`; settings: `" + json.dumps(settings, default=str) + "`.", "",
             "Verdicts: **met** when the one-sided 95 % bound is on the goal's side (drop upper bound <= budget; "
             "speed-up lower bound, from per-round paired ratios, >= goal), **not met** when the other bound is on the "
             "other side, **not resolved** otherwise (edgecnn.stats).", ""]
    runtime = _target_runtime(settings)
    if runtime and runtime != "ort":
        lines += [f"edgecnn's files (uniform settings, candidates, the searched artifact) were searched, evaluated and "
                  f"timed in {runtime} (target {_run_target(settings)}); ORT FP32 is ONNX Runtime's, the baseline of "
                  "every ratio.", ""]
    lines += environment_section(results)
    if results.get("load_average"):
        lines += ["Load average (1 min) of the machine, other work included: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in results["load_average"].items())
                  + " (on 2 cores; above 2, other work competed with the timed rounds).", ""]
    for model, found in results["models"].items():
        lines += model_section(model, found, out, (results.get("environment") or {}).get("cpu_class", ""))
    if results.get("findings"):
        lines += ["## Findings", "", results["findings"].strip(), ""]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
