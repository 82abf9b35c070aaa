# long: the driver of a multi-engine, multi-process run (data, builds, workers, timing, writing); its report is in run_report.py
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
import csv
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import numpy as np  # noqa: E402

from _stats import accuracy, markdown_table, ratio, split_calibration  # noqa: E402
from engines import ENGINES, missing_requirement  # noqa: E402
from run_report import derived_columns, goal_lines, print_tables, render_markdown, table_rows  # noqa: E402,F401

DEFAULT_DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", BENCH_DIR.parent.parent / "shared" / "data"))

# Model -> how it is built and fed. Weights paths are relative to the shared data folder.
MODELS = {
    "mobilenet_v2": {"options": {"tf_padding": True}, "preprocess": "tf", "weights": "weights/mobilenet_v2.pth"},
    "squeezenet1_1": {"options": {}, "preprocess": "torchvision", "weights": "weights/squeezenet1_1.pth"},
    # No real ShuffleNet weights exist here: seeded random init, speed and size only.
    "shufflenet_v2_x1_0": {"options": {}, "preprocess": "torchvision", "weights": None},
}

# Full run vs --quick (development).
PROFILES = {
    "full": {"calib": 128, "eval_limit": None, "rounds": 5, "iters_b1": 30, "iters_b8": 6, "warmup": 5, "op_iters": 20},
    "quick": {"calib": 32, "eval_limit": 96, "rounds": 3, "iters_b1": 10, "iters_b8": 3, "warmup": 2, "op_iters": 10},
}
FP32_REFERENCE_ORDER = ("torch", "ort_fp32", "ov_fp32")  # FP32 agreement is measured against the first present


def say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- environment


def machine_name() -> str:
    from edgecnn.measure.sysinfo import cpu_model

    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    return f"{slug}-{os.cpu_count()}cpu"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------- data


def read_manifest(data_dir: Path) -> list[tuple[str, int]]:
    with open(data_dir / "imagenet-sample-manifest.csv", newline="") as handle:
        return [(row["relpath"], int(row["class_index"])) for row in csv.DictReader(handle)]


def build_image_cache(data_dir: Path, manifest, rows: list[int], preprocess, path: Path) -> None:
    """Decode and preprocess the selected manifest rows once into a .npy every engine memory-maps."""
    from edgecnn.data.images import ImageFolder, iter_batches

    list_file = path.with_suffix(".txt")
    list_file.write_text("".join(f"{data_dir / 'imagenet-sample' / manifest[i][0]} {manifest[i][1]}\n" for i in rows))
    dataset = ImageFolder(list_file)
    size = preprocess.input_size
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(len(rows), 3, size, size))
    position = 0
    for images, _ in iter_batches(dataset, preprocess, batch_size=32, workers=2):
        out[position:position + len(images)] = images
        position += len(images)
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)


# ----------------------------------------------------------------------------- per model


def onnx_op_counts(path: str) -> dict:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node).items()))


def shipped_bytes(path: str):
    try:
        from edgecnn.pack import shipped_size

        return int(shipped_size(path))
    except Exception as exc:  # the column becomes n/a; the reason goes into the JSON
        return f"error: {type(exc).__name__}: {exc}"


def prepare_model(name: str, spec: dict, data_dir: Path, work: Path, size_hint: int):
    """Load the model in this (coordinating) process, save its weights, export the FP32 ONNX, count MACs."""
    import torch

    from edgecnn.export.onnx_export import export_onnx
    from edgecnn.measure.profile import profile_model
    from edgecnn.models import load_model

    weights = str(data_dir / spec["weights"]) if spec["weights"] else None
    if weights and not Path(weights).exists():
        say(f"  {name}: weights {weights} absent: random init, accuracy n/a")
        weights = None
    torch.manual_seed(0)
    loaded = load_model(name, weights=weights, preprocess=spec["preprocess"], **spec["options"])
    weights_path = work / f"{name}.pth"
    torch.save(loaded.module.state_dict(), weights_path)
    size = loaded.preprocess.input_size
    fp32_onnx = work / f"{name}.fp32.onnx"
    export_onnx(loaded, fp32_onnx, input_shape=(1, 3, size, size), batch="dynamic")
    profile = profile_model(loaded.module, size)
    return loaded, {
        "weights": weights or "random init (seed 0)",
        "weights_path": str(weights_path),
        "fp32_onnx": str(fp32_onnx),
        "input_size": size,
        "macs": int(profile.macs),
        "params": int(profile.params),
        "real_weights": weights is not None,
    }


def run_model(name: str, args, settings: dict, engines: list[str], data, work: Path, peaks_box: dict, progress) -> dict:
    from _workers import EngineError, EngineWorker, run_build

    spec = MODELS[name]
    say(f"\n== {name}")
    loaded, info = prepare_model(name, spec, args.data, work, 224)
    result = {"model": name, **info, "preprocess": loaded.preprocess.to_dict(), "options": spec["options"], "engines": {}}
    evaluate = data is not None and info["real_weights"]
    if data is not None and not info["real_weights"]:
        say(f"  {name}: no real weights here: accuracy columns are n/a (speed and size only)")
    cache = data["caches"][loaded.preprocess.name] if data else None
    job = {
        "model": name, "options": spec["options"], "weights_path": info["weights_path"], "fp32_onnx": info["fp32_onnx"],
        "work_dir": str(work), "threads": args.threads, "cache": str(cache) if cache else None,
        "calib_indices": data["calib_positions"] if data else [], "eval_indices": data["eval_positions"] if data else [],
        "input_shape": [1, 3, info["input_size"], info["input_size"]],
    }
    if data is None:
        # No shared images: calibrate on seeded random inputs so the quantizers still run.
        random_cache = work / f"{name}.random.npy"
        rng = np.random.default_rng(0)
        np.save(random_cache, rng.standard_normal((settings["calib"], *job["input_shape"][1:])).astype(np.float32))
        job.update(cache=str(random_cache), calib_indices=list(range(settings["calib"])), eval_indices=[])

    artifacts = {}
    for engine_name in engines:
        engine = ENGINES[engine_name]
        entry = result["engines"].setdefault(engine_name, {"label": engine.label, "precision": engine.precision})
        if engine.build is None:
            artifacts[engine_name] = {"path": info["fp32_onnx"], "onnx_bytes": Path(info["fp32_onnx"]).stat().st_size}
            if engine.artifact_kind == "module":
                artifacts[engine_name] = {"path": info["weights_path"], "onnx_bytes": None}
            continue
        progress(f"{name}: building {engine.label} (calibration on {len(job['calib_indices'])} images)")
        try:
            began = time.perf_counter()
            artifacts[engine_name] = run_build(engine.build, job, timeout=args.build_timeout)
            say(f"  built {engine_name} in {time.perf_counter() - began:.0f} s")
        except EngineError as exc:
            first = str(exc).splitlines()[0]
            say(f"  skip {engine_name}: build failed: {first}")
            entry["skipped"] = f"build failed: {first}"
            entry["error"] = str(exc)[-3000:]
    for engine_name, artifact in artifacts.items():
        entry = result["engines"][engine_name]
        entry["artifact"] = {k: v for k, v in artifact.items()}
        if artifact.get("path", "").endswith(".onnx"):
            entry["artifact"]["shipped_bytes"] = shipped_bytes(artifact["path"])
            entry["artifact"]["graph_ops"] = onnx_op_counts(artifact["path"])

    workers = {}
    for engine_name in list(artifacts):
        try:
            workers[engine_name] = EngineWorker(ENGINES[engine_name].open, job, artifacts[engine_name])
        except EngineError as exc:
            first = str(exc).splitlines()[0]
            say(f"  skip {engine_name}: cannot open: {first}")
            result["engines"][engine_name]["skipped"] = f"cannot open: {first}"
    try:
        if evaluate:
            labels = data["labels"]
            predictions = {}
            for engine_name, worker in workers.items():
                progress(f"{name}: accuracy of {ENGINES[engine_name].label} on {len(job['eval_indices'])} images")
                began = time.perf_counter()
                predictions[engine_name] = worker.call("eval", indices=job["eval_indices"], batch=8)
                say(f"  accuracy of {engine_name} in {time.perf_counter() - began:.0f} s")
            reference = next((e for e in FP32_REFERENCE_ORDER if e in predictions), None)
            for engine_name, top5 in predictions.items():
                reference_top1 = predictions[reference][:, 0] if reference else None
                result["engines"][engine_name]["accuracy"] = accuracy(top5, labels, reference_top1)
            result["agreement_reference"] = reference
        for engine_name, worker in workers.items():
            result["engines"][engine_name]["info"] = worker.call("info")
            if ENGINES[engine_name].open.startswith("engines.ort:") and not args.no_op_profile:
                progress(f"{name}: ORT op profile of {ENGINES[engine_name].label}")
                entry["op_profile"] = worker.call("op_profile", iters=settings["op_iters"])
    finally:
        for worker in workers.values():
            worker.close()
    progress(f"{name}: timing {len(artifacts)} engines interleaved ({settings['rounds']} rounds, batch 1 then batch 8)")
    time_engines(result, {e: artifacts[e] for e in workers}, job, settings)
    return result


def time_engines(result: dict, artifacts: dict, job: dict, settings: dict) -> None:
    """Batch-1 latency and batch-8 throughput of every engine through edgecnn's one timer
    (edgecnn.measure.interleave: a process per engine, interleaved rounds, the library's statistics)."""
    from edgecnn.measure.interleave import Engine as Timed
    from edgecnn.measure.interleave import Timer

    specs = {e: Timed("engines:timed_runner", (("open_target", ENGINES[e].open), ("job", job), ("artifact", artifact)),
                      tuple(job["input_shape"]), (str(BENCH_DIR),)) for e, artifact in artifacts.items()}
    began = time.perf_counter()
    for batch, iters in ((1, settings["iters_b1"]), (8, settings["iters_b8"])):
        with Timer(job["threads"], batch=batch, rounds=settings["rounds"], iterations=iters, warmup_runs=settings["warmup"]) as timer:
            timings = timer.time(specs)
        for engine_name, timing in timings.items():
            entry = result["engines"][engine_name]
            entry[f"latency_b{batch}"] = {**timing.to_dict(), "p90_ms": timing.p90_ms}
            if batch == 8:
                entry["throughput_b8"] = 8 * 1000.0 / timing.median_ms
    say(f"  timing rounds in {time.perf_counter() - began:.0f} s")


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
    parser.add_argument("--from-json", type=Path, help="only re-render the .md of an existing results .json")
    args = parser.parse_args(argv)
    for flag, known in (("models", MODELS), ("engines", ENGINES)):
        chosen = [x.strip() for x in getattr(args, flag).split(",") if x.strip()]
        unknown = [x for x in chosen if x not in known]
        if unknown or not chosen:
            parser.error(f"--{flag}: unknown {', '.join(unknown) or '(empty)'}; valid: {', '.join(known)}")
        setattr(args, flag, chosen)
    return args


def select_engines(requested: list[str]) -> tuple[list[str], list[str]]:
    """(engines that can run here, 'name: reason' lines for those skipped)."""
    ready, skipped = [], []
    for name in requested:
        missing = missing_requirement(ENGINES[name])
        if missing:
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

    engines, skipped = select_engines(args.engines)
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
        data = None
        data_ok = (args.data / "imagenet-sample-manifest.csv").exists() and (args.data / "imagenet-sample").is_dir()
        if not data_ok:
            data_note = f"shared data absent at {args.data}: accuracy columns skipped, calibration on seeded random inputs"
            say(f"skip accuracy: {data_note}")
        else:
            manifest = read_manifest(args.data)
            calib, evaluation = split_calibration(len(manifest), settings["calib"])
            if settings["eval_limit"]:
                evaluation = evaluation[:: max(1, len(evaluation) // settings["eval_limit"])][: settings["eval_limit"]]
            rows = sorted(set(calib) | set(evaluation))
            position = {row: i for i, row in enumerate(rows)}
            data = {
                "calib_positions": [position[i] for i in calib],
                "eval_positions": [position[i] for i in evaluation],
                "labels": np.asarray([manifest[i][1] for i in evaluation], dtype=np.int64),
                "caches": {},
            }
            data_note = (
                f"{args.data / 'imagenet-sample'} ({len(manifest)} labelled images). Calibration: {len(calib)} images, "
                f"every {len(manifest) // max(1, len(calib))}th row of imagenet-sample-manifest.csv from row 0 (spans all "
                f"classes); evaluation: {len(evaluation)} other images, none used for calibration; "
                f"the same calibration images for every quantizer."
            )
            from edgecnn.models import default_preprocess  # noqa: F401  (zoo import check)
            from edgecnn.preprocess import get_preset

            for preset in sorted({MODELS[m]["preprocess"] for m in args.models}):
                progress(f"decoding {len(rows)} images with the '{preset}' preprocessing")
                cache = work / f"images-{preset}.npy"
                build_image_cache(args.data, manifest, rows, get_preset(preset), cache)
                data["caches"][preset] = cache
        report["config"] = {
            "date": date, "quick": args.quick, "threads": args.threads, "models": args.models, "engines": engines,
            "data_note": data_note, **settings,
            "calib_manifest_rows": calib if data else [], "eval_manifest_rows": evaluation if data else [],
        }

        from _workers import EngineError, run_build

        progress("measuring this CPU's peak fp32 / int8 MAC rate")
        try:
            peaks = run_build("peak_macs:measure_peaks_job", {"threads": args.threads}, timeout=300)
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
                again = run_build("peak_macs:measure_peaks_job", {"threads": args.threads}, timeout=300)
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
