"""The compression report: report.json (stable schema), report.md (the same as tables) and a plot.

``report.json`` follows docs/report-schema.md; ``SCHEMA_VERSION`` changes whenever a field
is renamed or removed (adding a field does not change it). One *result row* per measured
checkpoint and target carries the numbers people compare: params, non-zeros, MACs, ONNX
bytes, shipped bytes, latency median/p90, top-1, top-5 and top-1 agreement with the FP32
baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from edgecnn.fileio import save_atomic, write_text_atomic
from edgecnn.records import RESULT_FIELDS, ResultRow
from edgecnn.recipe.stage_kinds import kinds_where

SEARCHING_KINDS = kinds_where(lambda kind: kind.searches)  # their summary gets a report.md section

SCHEMA_VERSION = 1

def new_result(stage: str, target: str, **values: Any) -> dict:
    """A result row as report.json holds it, every field present (None where not measured)."""
    unknown = set(values) - set(RESULT_FIELDS)
    if unknown:
        raise KeyError(f"unknown result fields: {sorted(unknown)}")
    return ResultRow(stage, target, **values).to_dict()


# ---------------------------------------------------------------------------------------
# Formatting


def fmt_int(v: Optional[float]) -> str:
    return "-" if v is None else f"{int(v):,}"


def fmt_bytes(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f} MB"
    if v >= 1e3:
        return f"{v / 1e3:.1f} kB"
    return f"{int(v)} B"


def fmt_macs(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.1f} M" if v >= 1e5 else f"{int(v):,}"


def fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


COLUMNS = (
    ("stage", "stage", str),
    ("target", "target", str),
    ("params", "params", fmt_int),
    ("nonzeros", "non-zeros", fmt_int),
    ("macs", "MACs", fmt_macs),
    ("onnx_bytes", "ONNX", fmt_bytes),
    ("shipped_bytes", "shipped", fmt_bytes),
    ("latency_ms_median", "latency ms", fmt_ms),
    ("latency_ms_p90", "p90", fmt_ms),
    ("top1", "top-1 %", fmt_pct),
    ("drop_upper95", "drop ≤ (95 %)", lambda v: f"{v:.2f}"),
    ("top5", "top-5 %", fmt_pct),
    ("agreement", "agree %", fmt_pct),
)


def table_rows(report: dict, keys: Optional[tuple] = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the results table (shared by report.md and the console)."""
    columns = [c for c in COLUMNS if keys is None or c[0] in keys]
    header = [agreement_title(report) if key == "agreement" else title for key, title, _ in columns]
    rows = [[fmt(r.get(key)) if r.get(key) is not None else "-" for key, _, fmt in columns] for r in report["results"]]
    return header, rows


def time_budget_lines(search: dict) -> list[str]:
    """What ``--search-time`` left out, when it did."""
    budget = search.get("time_budget") or {}
    if not budget.get("skipped"):
        return []
    return [f"Time budget of {budget['minutes']:g} min spent (during {budget.get('spent_in')}); not done: "
            + "; ".join(budget["skipped"]) + ".", ""]


def size_search_section(search: dict) -> list[str]:
    """report.md lines for a search with the size objective: bits per layer, and what it measured."""
    chosen = search.get("chosen") or {}
    lines = ["", "## Search (size)", "", f"Smallest shipped .ecnn within {search.get('max_drop')} points on the search part: "
             + (f"{chosen['shipped_bytes']:,} B ({chosen['label']}), drop {chosen['drop']:.2f} points" if chosen
                else "none (float model kept)"), ""]
    lines += time_budget_lines(search)
    lines += ["| layer | kind | bits | kept weights | estimated bytes |", "| --- | --- | ---: | ---: | ---: |"]
    for r in search.get("chosen_layers") or []:
        lines.append(f"| {r['layer']} | {r['kind']} | {r['bits']} | {r['density']:g} | {r['estimated_bytes']:,} |")
    lines += ["", "| configuration | estimated bytes | .ecnn bytes | drop (search part) | kept |", "| --- | ---: | ---: | ---: | --- |"]
    for c in (search.get("uniform") or []) + (search.get("verified") or []):
        shipped = "-" if c.get("shipped_bytes") is None else f"{c['shipped_bytes']:,}"
        lines.append(f"| {c['label']} | {c['estimated_bytes']:,} | {shipped} | {c['drop']:.2f} | {'yes' if c['feasible'] else 'rejected'} |")
    return lines


def search_section(search: dict) -> list[str]:
    """report.md lines for a search stage: what it chose per layer, and the configurations it measured."""
    if search.get("objective") == "size":
        return size_search_section(search)
    chosen = search.get("chosen") or {}
    bound = chosen.get("drop_bound") or {}
    verdict = (f" (95 % upper bound {bound['upper']:.2f}: {bound['verdict']}; the choice gated on "
               f"{'this bound' if search.get('confidence') else 'the measured drop'})" if bound else "")
    lines = ["", "## Search", "", f"Fastest configuration within {search.get('max_drop')} points on the search part: "
             + (f"{chosen.get('pooled_ms') or chosen.get('measured_ms') or 0:.2f} ms, drop {chosen.get('drop') or 0:.2f} points{verdict}"
                if chosen else "none (float model kept)")
             + (f" ([front]({search['plot']}))" if search.get("plot") else ""), ""]
    lines += time_budget_lines(search)
    timing = search.get("final_timing") or {}
    if timing.get("rounds"):
        window = f" (took {timing['window_s']:.0f} s)" if timing.get("window_s") is not None else ""
        lines += [f"Measured ms: the final timing, FP32 and every kept configuration interleaved, {timing['rounds']} rounds "
                  f"spread over {timing['spread_s']:g} s{window}; speed ratios are paired per round.", ""]
    if search.get("note"):
        lines += [search["note"], ""]
    lines += ["| layer | kind | precision | in kept | out kept | shift |", "| --- | --- | --- | ---: | ---: | --- |"]
    for r in search.get("chosen_layers") or []:
        lines.append(f"| {r['layer']} | {r['kind']} | {r['precision']} | {r['in_kept']:g} | {r['out_kept']:g} | {'yes' if r['shift'] else ''} |")
    base = search.get("fp32_top1_search_part")
    lines += ["", "| configuration | predicted ms | measured ms | drop (search part) | 95 % upper | kept | agree % (choice photos) "
              "| top-1 search part | top-1 evaluation part |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, c in [(f"uniform {k}", v) for k, v in (search.get("uniform") or {}).items()] + [
            (f"candidate {i}", v) for i, v in enumerate(search.get("verified") or [])]:
        kept = ("not verified (time budget)" if c.get("not_verified") else
                "" if c.get("feasible") is None else ("yes" if c["feasible"] else "rejected"))
        drop = "-" if c.get("drop") is None else f"{c['drop']:.2f}"
        upper = "-" if not c.get("drop_bound") else f"{c['drop_bound']['upper']:.2f}"
        agree = "-" if not c.get("choose") else f"{c['choose']['agree']:.2f}"
        top1 = "-" if c.get("drop") is None or base is None or c["drop"] == float("inf") else f"{base - c['drop']:.2f}"
        evaluated = "-" if c.get("top1_evaluation") is None else f"{c['top1_evaluation']:.2f}"
        lines.append(f"| {name} | {fmt_ms(c.get('predicted_ms'))} | {fmt_ms(c.get('measured_ms'))} | {drop} | {upper} | {kept} "
                     f"| {agree} | {top1} | {evaluated} |")
    return lines + choice_lines(search.get("choose") or {})


def choice_lines(choose: dict) -> list[str]:
    """Which images chose what, and whether the proxy ranks the candidates as top-1 does."""
    if not choose:
        return []
    lines = ["", f"The feasibility gate used the top-1 drop on the search part; ties within the timing noise were decided on "
             f"{choose['tie_break_on']}; the evaluation part was used only for the column above, after the choice."]
    for key, what in (("rank_vs_search_top1", "top-1 on the search part"), ("rank_vs_evaluation_top1", "top-1 on the evaluation part")):
        rank = choose.get(key)
        if rank and rank.get("spearman") is not None:
            verdict = "resolved" if rank["resolved"] else f"not resolved with {rank['candidates']} candidates"
            lines.append(f"Proxy (agreement on the choice photos) vs {what}: Spearman {rank['spearman']:+.2f} over "
                         f"{rank['candidates']} candidates, one-sided permutation p = {rank['p_one_sided']:.3f} ({verdict}).")
    return lines


def to_markdown(report: dict) -> str:
    """report.md: what was run, on what data, then the results table and the stage log."""
    model = report["model"]
    data = report["data"]
    lines = [f"# edgecnn report: {model['name']}", ""]
    lines.append(f"- model: `{model['name']}` {json.dumps(model.get('options') or {})}, weights: {model.get('weights')}")
    labels = f" ({data['label_source']})" if data.get("label_source") else ""
    lines.append(f"- input: {'x'.join(str(d) for d in model.get('input_shape') or [])}, classes: {model.get('num_classes')}{labels}")
    if data.get("note"):
        lines.append(f"- **data: {data['note']}**")
    lines.append(
        f"- calibration: {data.get('calib') or '-'} ({data.get('calib_images') or 0} images); "
        f"evaluation: {data.get('eval') or '-'} ({data.get('eval_images') or 0} images)"
    )
    lines.append(f"- targets: {', '.join(report['targets'])}; latency: {report.get('latency_note') or '-'}")
    lines.append(f"- edgecnn {report['tool']['version']}, {report['created_utc']}, total {report['total_seconds']:.1f} s")
    if report.get("environment"):
        from edgecnn.measure.sysinfo import environment_lines

        lines += ["", "## Environment", ""] + environment_lines(report["environment"])
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in report["warnings"]]
    lines += ["", "## Results", ""]
    header, rows = table_rows(report)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(header))) + "|")
    for cells in rows:
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "non-zeros: parameters not exactly zero; MACs: conv + linear at batch 1; shipped: the packed .ecnn file; "
        "latency: batch 1, median and p90 in ms; drop ≤ (95 %): one-sided 95 % upper bound of the top-1 drop from "
        "the FP32 baseline, paired per image (edgecnn.stats); "
        + (
            "agree % (calib): calibration images (no evaluation set was given) with the same top-1 class as the FP32 "
            "baseline, not an accuracy figure."
            if agreement_title(report).endswith("(calib)")
            else "agree %: evaluation images with the same top-1 class as the FP32 baseline."
        ),
    ]
    lines += ["", "## Stages", "", "| # | stage | seconds | what it did |", "| ---: | --- | ---: | --- |"]
    for i, stage in enumerate(report["stages"]):
        lines.append(f"| {i} | {stage['name']} | {stage['seconds']:.1f} | {stage.get('text') or ''} |")
    for stage in report["stages"]:
        if stage["name"] in SEARCHING_KINDS:
            lines += search_section(stage.get("summary") or {})
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report.get("plot"):
        lines += ["", f"![accuracy vs latency and size]({report['plot']})"]
    lines.append("")
    return "\n".join(lines)


def accuracy_metric(report: dict) -> tuple[str, str]:
    """(result key, label) of the accuracy figure: top-1 when measured, else agreement with FP32."""
    if any(r.get("top1") is not None for r in report["results"]):
        return "top1", "top-1 %"
    return "agreement", agreement_title(report)


def agreement_title(report: dict) -> str:
    """Agreement measured on calibration images (no --data) is labelled so, never as the evaluation figure."""
    return "agree % (calib)" if (report.get("data") or {}).get("agreement_on") == "calibration images" else "agree %"


def stage_changes(results: list[dict], metric: str) -> list[Optional[float]]:
    """For each result row, ``metric`` minus the same figure of the checkpoint before it.

    FP32 rows are shared by every target; a target's first quantized row compares with the
    last FP32 row. None for the first row and where either figure is missing.
    """
    last: dict[str, Optional[float]] = {}
    out: list[Optional[float]] = []
    for row in results:
        target = row["target"]
        before = last.get(target, last.get("fp32")) if target != "fp32" else last.get("fp32")
        value = row.get(metric)
        out.append(value - before if value is not None and before is not None else None)
        if target == "fp32":
            last = {k: value for k in [*last, "fp32"]}
        else:
            last[target] = value
    return out


def accuracy_drops(results: list[dict], threshold: float, metric: str = "top1") -> list[str]:
    """One warning per stage that lost more than ``threshold`` points of ``metric``."""
    name = "top-1" if metric == "top1" else "agreement"
    warnings = []
    for row, change in zip(results, stage_changes(results, metric)):
        if change is not None and -change > threshold:
            target = "" if row["target"] == "fp32" else f" ({row['target']})"
            warnings.append(
                f"stage {row['stage']}{target} lost {-change:.1f} {name} points "
                f"({row[metric] - change:.1f} -> {row[metric]:.1f} %), more than the {threshold:g} allowed by measure.warn_drop"
            )
    return warnings


def skipped_text(where: str, entries: list[dict]) -> str:
    """``entries`` are ``{"layer", "kind"}``: layers a pass left alone or the profiler did not count."""
    shown = ", ".join(f"{e.get('layer')} ({e.get('kind', '?')})" for e in entries[:5])
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    return f"{where} {len(entries)} layer{'s' if len(entries) != 1 else ''} of a kind it does not handle: {shown}{more}"


def plot(report: dict, path: Path) -> Optional[Path]:
    """Write :func:`accuracy_figure` to ``path`` (PNG); None when no row has an accuracy."""
    fig = accuracy_figure(report)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


FP32_GREY = "0.45"


def accuracy_figure(report: dict):
    """What each stage cost and gained: accuracy, shipped size and latency, one column per result row.

    FP32 checkpoints (shared by every target) are grey; each target's rows have their colour.
    The accuracy axis spans at least 10 points, so a 0.3-point change looks like one and a
    collapse like a collapse; size and latency bars start at zero.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    metric, ylabel = accuracy_metric(report)
    rows = report["results"]
    if not any(r.get(metric) is not None for r in rows):
        return None
    threshold = 5.0 if report.get("warn_drop") is None else report["warn_drop"]
    changes = stage_changes(rows, metric)
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    colours = {t: palette[i % len(palette)] for i, t in enumerate(report["targets"])}
    colour = [FP32_GREY if r["target"] == "fp32" else colours.get(r["target"], FP32_GREY) for r in rows]

    fig, axes = plt.subplots(3, 1, figsize=(max(6.5, 1.25 * len(rows) + 2.5), 7.8), sharex=True,
                             gridspec_kw={"height_ratios": [1.5, 1, 1]})
    _accuracy_panel(axes[0], rows, [r.get(metric) for r in rows], changes, threshold, colours, colour)
    axes[0].set_ylabel(ylabel)
    _bars(axes[1], [(r.get("shipped_bytes") or r.get("onnx_bytes") or 0) / 1e6 or None for r in rows], colour,
          "shipped MB", lambda v: f"{v:.2f}")
    _bars(axes[2], [r.get("latency_ms_median") for r in rows], colour, "latency ms", lambda v: f"{v:.3f}")
    axes[2].set_xticks(range(len(rows)))
    axes[2].set_xticklabels([r["stage"] if r["target"] == "fp32" else f"{r['stage']}\n{r['target']}" for r in rows], fontsize=8)
    handles = [Line2D([], [], color=FP32_GREY, marker="o", label="FP32 checkpoints (every target)")]
    handles += [Line2D([], [], color=c, marker="o", label=t) for t, c in colours.items() if any(r["target"] == t for r in rows)]
    if any(c is not None and -c > threshold for c in changes):
        handles.append(Line2D([], [], color="tab:red", marker="o", linestyle="", label=f"lost > {threshold:g} points"))
    axes[0].legend(handles=handles, fontsize=8, loc="best")
    digits = " (digits)" if report["data"].get("source") == "embedded-digits" else ""
    fig.suptitle(f"{report['model']['name']}{digits}: what each stage cost and gained")
    fig.tight_layout()
    return fig


def _accuracy_panel(ax, rows, values, changes, threshold, colours, colour) -> None:
    """Accuracy per row with its change from the checkpoint before; drops beyond ``threshold`` in red."""
    known = [v for v in values if v is not None]
    low, high = min(known), max(known)
    span = max(10.0, (high - low) * 1.25)
    top = min(100.0 + span * 0.08, max(high + span * 0.15, low + span))
    ax.set_ylim(max(0.0, top - span * 1.15), top)
    for i, (v, change) in enumerate(zip(values, changes)):
        if v is None:
            continue
        dropped = change is not None and -change > threshold
        ax.plot([i], [v], marker="o", markersize=8, color="tab:red" if dropped else colour[i], zorder=3)
        text = f"{v:.1f}" + (f"\n{change:+.1f}" if change is not None else "")
        if dropped:
            text = f"{v:.1f} ({change:+.1f})"
        # A drop's label sits left of its point, off the lines that meet there.
        ax.annotate(text, (i, v), textcoords="offset points", xytext=(-10, -2) if dropped else (0, 8),
                    ha="right" if dropped else "center", va="top" if dropped else "bottom", fontsize=8,
                    color="tab:red" if dropped else "black", fontweight="bold" if dropped else "normal")
    fp32 = [i for i, r in enumerate(rows) if r["target"] == "fp32" and values[i] is not None]
    ax.plot(fp32, [values[i] for i in fp32], color=FP32_GREY, linewidth=1.5, zorder=2)
    for target, c in colours.items():  # each target's rows branch off the last FP32 checkpoint
        chain = [i for i, r in enumerate(rows) if r["target"] == target and values[i] is not None]
        if chain:
            start = [i for i in fp32 if i < chain[0]][-1:]
            ax.plot(start + chain, [values[i] for i in start + chain], color=c, linewidth=1.2, linestyle="--", zorder=2)
    ax.grid(True, axis="y", alpha=0.3)


def _bars(axis, heights, colour, label: str, fmt) -> None:
    """One bar per row from zero, its value written on it ("not timed" where there is none)."""
    axis.bar(range(len(heights)), [h or 0 for h in heights], color=colour, width=0.6)
    for i, h in enumerate(heights):
        axis.annotate("not timed" if h is None else fmt(h), (i, h or 0), textcoords="offset points", xytext=(0, 2),
                      ha="center", va="bottom", fontsize=8)
    axis.set_ylabel(label)
    axis.set_ylim(0, max([h for h in heights if h] or [1]) * 1.25)
    axis.grid(True, axis="y", alpha=0.3)


def write_report(report: dict, out_dir: Path, make_plot: bool = True) -> dict:
    """Write report.json, report.md and (optionally) accuracy.png into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    paths = {}
    if make_plot:
        png = plot(report, out_dir / "accuracy.png")
        if png is not None:
            report["plot"] = png.name
            paths["plot"] = png
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=_json_default) + "\n")
    write_text_atomic(out_dir / "report.md", to_markdown(report))
    paths.update(json=out_dir / "report.json", md=out_dir / "report.md")
    return paths


def _json_default(obj):
    """numpy scalars, paths and tuples in pass summaries become plain JSON values."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, set)):
        return str(obj) if isinstance(obj, Path) else sorted(obj)
    return str(obj)
