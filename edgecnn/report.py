"""The compression report: report.json (stable schema), report.md (the same as tables) and a plot.

``report.json`` follows docs/report-schema.md; ``SCHEMA_VERSION`` changes whenever a field
is renamed or removed (adding a field does not change it). One *result row* per measured
checkpoint and target carries the numbers people compare: params, non-zeros, MACs, ONNX
bytes, shipped bytes, latency median/p90, top-1, top-5 and top-1 agreement with the FP32
baseline.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1

RESULT_FIELDS = (
    "stage",
    "target",
    "runtime",
    "params",
    "nonzeros",
    "macs",
    "onnx_bytes",
    "shipped_bytes",
    "latency_ms_median",
    "latency_ms_p90",
    "top1",
    "top5",
    "agreement",
    "onnx",
)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_result(stage: str, target: str, **values: Any) -> dict:
    """A result row with every field present (None where not measured)."""
    row = {k: None for k in RESULT_FIELDS}
    row.update(stage=stage, target=target)
    unknown = set(values) - set(RESULT_FIELDS)
    if unknown:
        raise KeyError(f"unknown result fields: {sorted(unknown)}")
    row.update(values)
    return row


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
    ("top5", "top-5 %", fmt_pct),
    ("agreement", "agree %", fmt_pct),
)


def table_rows(report: dict, keys: Optional[tuple] = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the results table (shared by report.md and the console)."""
    columns = [c for c in COLUMNS if keys is None or c[0] in keys]
    header = [title for _, title, _ in columns]
    rows = [[fmt(r.get(key)) if r.get(key) is not None else "-" for key, _, fmt in columns] for r in report["results"]]
    return header, rows


def search_section(search: dict) -> list[str]:
    """report.md lines for a search stage: what it chose per layer, and the configurations it measured."""
    chosen = search.get("chosen") or {}
    lines = ["", "## Search", "", f"Fastest configuration within {search.get('max_drop')} points on the search part: "
             + (f"{chosen.get('measured_ms') or 0:.2f} ms, drop {chosen.get('drop') or 0:.2f} points" if chosen else "none (float model kept)")
             + (f" ([front]({search['plot']}))" if search.get("plot") else ""), "",
             "| layer | kind | precision | in kept | out kept | shift |", "| --- | --- | --- | ---: | ---: | --- |"]
    for r in search.get("chosen_layers") or []:
        lines.append(f"| {r['layer']} | {r['kind']} | {r['precision']} | {r['in_kept']:g} | {r['out_kept']:g} | {'yes' if r['shift'] else ''} |")
    lines += ["", "| configuration | predicted ms | measured ms | drop (search part) | kept |", "| --- | ---: | ---: | ---: | --- |"]
    for name, c in [(f"uniform {k}", v) for k, v in (search.get("uniform") or {}).items()] + [
            (f"candidate {i}", v) for i, v in enumerate(search.get("verified") or [])]:
        kept = "" if c.get("feasible") is None else ("yes" if c["feasible"] else "rejected")
        drop = "-" if c.get("drop") is None else f"{c['drop']:.2f}"
        lines.append(f"| {name} | {fmt_ms(c.get('predicted_ms'))} | {fmt_ms(c.get('measured_ms'))} | {drop} | {kept} |")
    return lines


def to_markdown(report: dict) -> str:
    """report.md: what was run, on what data, then the results table and the stage log."""
    model = report["model"]
    data = report["data"]
    lines = [f"# edgecnn report: {model['name']}", ""]
    lines.append(f"- model: `{model['name']}` {json.dumps(model.get('options') or {})}, weights: {model.get('weights')}")
    lines.append(f"- input: {'x'.join(str(d) for d in model.get('input_shape') or [])}, classes: {model.get('num_classes')}")
    if data.get("note"):
        lines.append(f"- **data: {data['note']}**")
    lines.append(
        f"- calibration: {data.get('calib') or '-'} ({data.get('calib_images') or 0} images); "
        f"evaluation: {data.get('eval') or '-'} ({data.get('eval_images') or 0} images)"
    )
    lines.append(f"- targets: {', '.join(report['targets'])}; latency: {report.get('latency_note') or '-'}")
    lines.append(f"- edgecnn {report['tool']['version']}, {report['created_utc']}, total {report['total_seconds']:.1f} s")
    lines += ["", "## Results", ""]
    header, rows = table_rows(report)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(header))) + "|")
    for cells in rows:
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "non-zeros: parameters not exactly zero; MACs: conv + linear at batch 1; shipped: the packed .ecnn file; "
        "latency: batch 1, median and p90 in ms; agree %: evaluation images with the same top-1 class as the FP32 baseline.",
    ]
    lines += ["", "## Stages", "", "| # | stage | seconds | what it did |", "| ---: | --- | ---: | --- |"]
    for i, stage in enumerate(report["stages"]):
        lines.append(f"| {i} | {stage['name']} | {stage['seconds']:.1f} | {stage.get('text') or ''} |")
    for stage in report["stages"]:
        if stage["name"] == "search":
            lines += search_section(stage.get("summary") or {})
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report.get("plot"):
        lines += ["", f"![accuracy vs latency and size]({report['plot']})"]
    lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Optional[Path]:
    """Accuracy (top-1, else agreement with FP32) against latency and against shipped size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "top1" if any(r.get("top1") is not None for r in report["results"]) else "agreement"
    ylabel = "top-1 %" if metric == "top1" else "top-1 agreement with FP32 %"
    points = [r for r in report["results"] if r.get(metric) is not None]
    if not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, xkey, xlabel in (
        (axes[0], "latency_ms_median", "latency, median (ms)"),
        (axes[1], "size", "size (bytes): shipped, else ONNX"),
    ):
        for target in report["targets"]:
            # FP32 checkpoints are shared by every target: each target's line starts there.
            pts = [r for r in points if r["target"] in (target, "fp32")]
            xs, ys, labels = [], [], []
            for r in pts:
                x = r.get(xkey) if xkey != "size" else (r.get("shipped_bytes") or r.get("onnx_bytes"))
                if x is None:
                    continue
                xs.append(x)
                ys.append(r[metric])
                labels.append(r["stage"])
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", label=target)
            for x, y, label in zip(xs, ys, labels):
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if xkey == "size":
            ax.set_xscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['model']['name']}: accuracy across stages" + (" (digits)" if report["data"].get("source") == "embedded-digits" else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
