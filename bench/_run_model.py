"""bench/run.py's work per model: the shared image cache, the FP32 export, the engines' builds,
accuracy and op profiles in their worker processes, and the interleaved timing.

Apart from run.py so that the driver (arguments, result files) reads on its own.
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from _models import WITH_WEIGHTS, weights_path
from _stats import accuracy, split_calibration
from engines import ENGINES

BENCH_DIR = Path(__file__).resolve().parent


def shown_path(path) -> str:
    """A path as results files show it: relative to the repository when it lies beside or in it
    (``../shared/data/...``), so no machine's folder layout is written into committed results."""
    path = Path(path)
    repo = BENCH_DIR.parent
    if path.is_absolute() and path.resolve().is_relative_to(repo.parent):
        return os.path.relpath(path.resolve(), repo)
    return str(path)

# Model -> how it is built and fed (bench/_models.py for the ones with published weights).
MODELS = {
    "mobilenet_v2": WITH_WEIGHTS["mobilenet_v2"],
    "squeezenet1_1": WITH_WEIGHTS["squeezenet1_1"],
    # No real ShuffleNet weights exist here: seeded random init, speed and size only.
    "shufflenet_v2_x1_0": {"options": {}, "preprocess": "torchvision", "weights": None},
}

# Full run vs --quick (development).
PROFILES = {
    # spread_s: seconds the timing rounds are spread over (edgecnn.measure.interleave.CLAIM_SPREAD_S for the tables)
    "full": {"calib": 128, "eval_limit": None, "rounds": 10, "spread_s": 30.0, "iters_b1": 30, "iters_b8": 6, "warmup": 5,
             "op_iters": 20},
    "quick": {"calib": 32, "eval_limit": 96, "rounds": 3, "spread_s": 0.0, "iters_b1": 10, "iters_b8": 3, "warmup": 2,
              "op_iters": 10},
}
FP32_REFERENCE_ORDER = ("torch", "ort_fp32", "ov_fp32")  # FP32 agreement is measured against the first present


def say(message: str) -> None:
    print(message, flush=True)


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

    weights = str(weights_path(name, data_dir)) if spec["weights"] else None
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
        "weights": shown_path(weights) if weights else "random init (seed 0)",
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
        "work_dir": str(work), "threads": args.threads, "target": args.target, "cache": str(cache) if cache else None,
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
            artifacts[engine_name] = run_build(engine.build, {**job, "target": engine.target or job["target"], "engine": engine_name},
                                               timeout=args.build_timeout)
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
                result["engines"][engine_name]["op_profile"] = worker.call("op_profile", iters=settings["op_iters"])
    finally:
        for worker in workers.values():
            worker.close()
    progress(f"{name}: timing {len(artifacts)} engines interleaved ({settings['rounds']} rounds spread over "
             f"{settings.get('spread_s', 0.0):g} s, batch 1 then batch 8)")
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
            timings = timer.time(specs, spread_s=settings.get("spread_s", 0.0))
        for engine_name, timing in timings.items():
            entry = result["engines"][engine_name]
            entry[f"latency_b{batch}"] = {**timing.to_dict(), "p90_ms": timing.p90_ms}
            if batch == 8:
                entry["throughput_b8"] = 8 * 1000.0 / timing.median_ms
    say(f"  timing rounds in {time.perf_counter() - began:.0f} s")


def prepare_data(args, settings: dict, work: Path, progress):
    """(data for the engines or None, the method note, calibration rows, evaluation rows): the
    calibration / evaluation split of the shared sample, decoded once per preprocessing."""
    calib = evaluation = []
    data = None
    data_ok = (args.data / "imagenet-sample-manifest.csv").exists() and (args.data / "imagenet-sample").is_dir()
    if not data_ok:
        data_note = f"shared data absent at {shown_path(args.data)}: accuracy columns skipped, calibration on seeded random inputs"
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
            f"{shown_path(args.data / 'imagenet-sample')} ({len(manifest)} labelled images). Calibration: {len(calib)} images, "
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
    return data, data_note, calib, evaluation
