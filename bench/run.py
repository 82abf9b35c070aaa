"""edgecnn against what users would pick instead, side by side in one run.

For each model: PyTorch eager FP32, ONNX Runtime FP32, edgecnn's INT8 and W6A8 Q/DQ
artifacts (target ort-x86), ONNX Runtime's quantize_static, OpenVINO FP32 and OpenVINO INT8
from NNCF, on the same FP32 ONNX and the same calibration images. Columns: latency
(batch 1), throughput (batch 8), bytes, accuracy on the shared ImageNet sample, calibration
cost, and the fraction of this CPU's measured peak MAC rate.

Method: every engine runs in its own process; timing rounds are interleaved (A, B, C, A, B,
C, ...) with warm-up in each round, and the median over rounds is reported. Engines or data
that are missing are skipped with a line saying so.

    python bench/run.py                      # full run, writes bench/results/<date>-<machine>.md/.json
    python bench/run.py --quick --models mobilenet_v2 --engines ort_fp32,ov_int8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import numpy as np  # noqa: E402

from _run_model import MODELS, PROFILES, prepare_data, run_model, say  # noqa: E402
from engines import ENGINES, host_ort_target, missing_requirement  # noqa: E402
from run_report import derived_columns, goal_lines, print_tables, render_markdown, table_rows  # noqa: E402,F401

DEFAULT_DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", BENCH_DIR.parent.parent / "shared" / "data"))

# ----------------------------------------------------------------------------- environment


def machine_name() -> str:
    """The results file's machine: the CPU's name, its core design and the core count. One
    marketing name ("AMD EPYC") covers core designs with different int8 kernels, whose files
    must not overwrite each other."""
    from edgecnn.cpu import host_identity
    from edgecnn.measure.sysinfo import cpu_model

    design = re.sub(r"\s*stepping \S+", "", host_identity())
    slug = re.sub(r"[^a-z0-9]+", "-", f"{cpu_model()} {design}".lower()).strip("-")
    return f"{slug}-{os.cpu_count()}cpu"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def write_atomic(path: Path, text: str) -> None:
    from edgecnn.fileio import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="edgecnn vs ORT / OpenVINO / NNCF / PyTorch, side by side.")
    parser.add_argument("--quick", action="store_true", help="few images and rounds (development)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of: {', '.join(MODELS)}")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of: {', '.join(ENGINES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="x86", help="edgecnn's ONNX Runtime target (default: x86, this CPU's: ort-x86-vnni on VNNI, else ort-x86)")
    parser.add_argument("--rounds", type=int, help="override the number of interleaved timing rounds")
    parser.add_argument("--calib", type=int, help="override the number of calibration images")
    parser.add_argument("--eval-limit", type=int, help="evaluate on at most this many images (spread over the sample)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (weights + imagenet-sample)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="folder for <date>-<machine>.md/.json")
    parser.add_argument("--machine", default=None, help="machine name in the result file name (default: from the CPU)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep artifacts here (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--force", action="store_true", help="overwrite an existing result file")
    parser.add_argument("--no-op-profile", action="store_true", help="skip the ORT per-op-type profile")
    parser.add_argument("--findings", type=Path, help="markdown file appended to the results as 'Findings'")
    parser.add_argument("--build-timeout", type=float, default=900)
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="time per kernel of the peak MAC rate measurement")
    parser.add_argument("--from-json", type=Path, help="only re-render the .md of an existing results .json")
    args = parser.parse_args(argv)
    for flag, known in (("models", MODELS), ("engines", ENGINES)):
        chosen = [x.strip() for x in getattr(args, flag).split(",") if x.strip()]
        unknown = [x for x in chosen if x not in known]
        if unknown or not chosen:
            parser.error(f"--{flag}: unknown {', '.join(unknown) or '(empty)'}; valid: {', '.join(known)}")
        setattr(args, flag, chosen)
    args.target, unfit = host_ort_target(args.target)
    if unfit:
        parser.error(f"--target: {unfit}")
    return args


def select_engines(requested: list[str], target: str) -> tuple[list[str], list[str]]:
    """(engines that can run here, 'name: reason' lines for those skipped)."""
    ready, skipped = [], []
    for name in requested:
        missing = missing_requirement(ENGINES[name])
        if ENGINES[name].target == target:  # the run's own edgecnn INT8 file already is this one
            skipped.append(f"{name} ({ENGINES[name].label}): the same file as edgecnn_int8 with --target {target}")
        elif missing:
            skipped.append(f"{name} ({ENGINES[name].label}): needs '{missing}', not importable here "
                           f"(pip install -r bench/requirements.txt)")
        else:
            ready.append(name)
    return ready, skipped


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        if args.findings:
            report["findings"] = args.findings.read_text()
            write_atomic(args.from_json, json.dumps(report, indent=1, default=_json_default))
        print_tables(report)
        write_atomic(args.from_json.with_suffix(".md"), render_markdown(report))
        say(f"wrote {args.from_json.with_suffix('.md')}")
        return 0
    started = time.perf_counter()
    settings = dict(PROFILES["quick" if args.quick else "full"])
    if args.rounds:
        settings["rounds"] = args.rounds
    if args.calib:
        settings["calib"] = args.calib
    if args.eval_limit:
        settings["eval_limit"] = args.eval_limit
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    machine = args.machine or machine_name()
    stem = f"{date}-{machine}" + ("-quick" if args.quick else "")
    md_path, json_path = args.out / f"{stem}.md", args.out / f"{stem}.json"
    if not args.no_write and not args.force and (md_path.exists() or json_path.exists()):
        say(f"error: {md_path} already exists; pass --force to overwrite it or --out another folder")
        return 2

    engines, skipped = select_engines(args.engines, args.target)
    for line in skipped:
        say(f"skip {line}")
    from edgecnn.measure.sysinfo import environment

    env = {
        **environment(args.threads), "machine": machine, "cpu_count": os.cpu_count(), "load_start": load_average(),
    }
    say(f"{env['cpu']}, {env['cpu_count']} CPUs, load {env['load_start']}; engines: {', '.join(engines)}")

    work_context = tempfile.TemporaryDirectory(prefix="edgecnn-bench-") if args.work_dir is None else None
    work = Path(work_context.name) if work_context else args.work_dir
    work.mkdir(parents=True, exist_ok=True)

    from rich.console import Console

    console = Console(stderr=True)
    status = console.status("starting")
    status.start()
    progress = lambda text: status.update(text)  # noqa: E731
    report = {"environment": env, "skipped": skipped, "models": []}
    try:
        data, data_note, calib, evaluation = prepare_data(args, settings, work, progress)
        report["config"] = {
            "date": date, "quick": args.quick, "threads": args.threads, "target": args.target, "models": args.models, "engines": engines,
            "data_note": data_note, **settings,
            "calib_manifest_rows": calib if data else [], "eval_manifest_rows": evaluation if data else [],
        }

        from _workers import EngineError, run_build

        progress("measuring this CPU's peak fp32 / int8 MAC rate")
        try:
            peaks = run_build("peak_macs:measure_peaks_job", {"threads": args.threads, "seconds": args.peak_seconds}, timeout=300)
        except EngineError as exc:
            say(f"skip peak MAC rate: {str(exc).splitlines()[0]}")
            peaks = None
        for name in args.models:
            try:
                model = run_model(name, args, settings, engines, data, work, {}, progress)
            except Exception as exc:  # one model failing should not lose the others' numbers
                say(f"skip {name}: {type(exc).__name__}: {exc}")
                report["skipped"].append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            report["models"].append(model)
            if not args.no_write:  # partial results survive an interrupted run
                derived_columns(model, peaks)
                report["peaks"] = peaks
                env["load_end"] = load_average()
                env["shared"] = max(env["load_start"][:1] + env["load_end"][:1] or [0]) > args.threads * 0.75
                report["elapsed_s"] = time.perf_counter() - started
                write_atomic(json_path, json.dumps(report, indent=1, default=_json_default))
                write_atomic(md_path, render_markdown(report))
        if peaks:
            progress("measuring the peak MAC rate again (the max of both is used)")
            try:
                again = run_build("peak_macs:measure_peaks_job", {"threads": args.threads, "seconds": args.peak_seconds}, timeout=300)
                for kind in ("fp32", "int8"):
                    peaks[kind] = max(peaks[kind], again[kind])
                peaks["kernels"] = {k: max(v, again["kernels"][k]) for k, v in peaks["kernels"].items()}
            except EngineError:
                pass
        report["peaks"] = peaks
        for model in report["models"]:
            derived_columns(model, peaks)
    finally:
        status.stop()
        if work_context:
            work_context.cleanup()
    env["load_end"] = load_average()
    env["shared"] = max(env["load_start"][:1] + env["load_end"][:1] or [0]) > args.threads * 0.75
    report["elapsed_s"] = time.perf_counter() - started
    if args.findings:
        report["findings"] = args.findings.read_text()
    print_tables(report)
    if not args.no_write:
        write_atomic(json_path, json.dumps(report, indent=1, default=_json_default))
        write_atomic(md_path, render_markdown(report))
        say(f"\nwrote {md_path} and {json_path} ({report['elapsed_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
