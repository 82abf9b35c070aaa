"""The latency-measured per-layer search (edgecnn.search) on real weights, against ORT FP32,
edgecnn's uniform settings and OpenVINO INT8, side by side in one run.

Per model: the search (and, for configurations that prune, recovery by cached-teacher
distillation on ../shared/data/distill) runs in a fresh process (wall time, peak memory);
it sees only the *search* part of imagenet-sample (edgecnn.data.split, salt ``--salt``, by
default ``edgecnn-split-2``: the committed results before it used ``edgecnn-split-1``, whose
evaluation part was looked at) and, with ``--choose-on`` (default ../shared/data/distill), a
reserved, fixed subset of unlabelled photos that decides ties between candidates by agreement
with FP32 and is left out of the recovery training. Then every artifact and every candidate the
search built is evaluated on the *evaluation* part (paired top-1 drop vs ORT FP32 with its
one-sided 95 % bounds, FP32 agreement), never chosen on, and timed at batch 1 with 2 threads
through edgecnn's one timer (edgecnn.measure.interleave: a process per model, interleaved
rounds), the timer the search itself uses.

    python bench/search.py                       # writes bench/results/search.md / .json / *.svg
    python bench/search.py --models squeezenet1_1 --max-verify 3 --recovery-steps 60
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
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

import numpy as np  # noqa: E402
from _models import load  # noqa: E402


DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", BENCH_DIR.parent.parent / "shared" / "data"))


def say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- the search (own process)


def search_job(job: dict) -> dict:
    """Split, search (+ recovery), in this fresh process; returns paths and the search summary."""
    import torch

    from edgecnn.data.split import split_folder
    from edgecnn.search.prepare import choose_set, make_recovery, recovery_images, search_data
    from edgecnn.search.run import SearchConfig, search, summary
    from engines.common import peak_rss_mb

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    loaded = load(job["model"], DATA)
    work = Path(job["work"]) / job["model"]
    split = split_folder(DATA / "imagenet-sample", salt=job["salt"])
    data = search_data(split.search, loaded.preprocess, 32)
    (work / "data").mkdir(parents=True, exist_ok=True)
    np.save(work / "data" / "calib.npy", torch.cat(data.calib).numpy())
    config = SearchConfig(**job["search"])
    lines = []
    log = lambda s: (lines.append(s), say(f"  [{job['model']}] {s}"))  # noqa: E731
    data.choose = choose_set(config, loaded.preprocess, work)
    reserved = data.choose.reserved if data.choose else None
    if config.prune_densities or config.shift:
        paths = recovery_images(DATA / "distill", job["recovery_images"], reserved, log)
        data.recovery = make_recovery(loaded.module, paths, loaded.preprocess, config, Path(job["cache"]), work, log)
    outcome = search(loaded.module, data, config, work, log)
    return {"summary": summary(outcome), "log": lines, "fp32": str(outcome.fp32_path), "chosen": str(outcome.chosen_path),
            "uniform": {p: str(outcome.artifacts[id(c)]) for p, c in outcome.uniform.items()},
            "wall_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "split_rule": split.rule,
            "search_images": len(split.search), "evaluation_images": len(split.evaluation),
            "choose_rule": reserved.rule if reserved else None, "recovery_photos": len(paths) if config.prune_densities or config.shift else 0,
            "evaluation": [[str(p), int(label)] for p, label in split.evaluation], "preprocess": loaded.preprocess.to_dict()}


# ----------------------------------------------------------------------------- evaluation and timing


def evaluate_and_time(model: str, found: dict, args, work: Path) -> dict:
    """Eval-part cache, engine workers (ORT for every artifact, OpenVINO INT8 when installed), accuracy, timing."""
    from _workers import EngineError, EngineWorker, run_build

    from edgecnn.measure.interleave import Engine, time_interleaved
    from edgecnn.preprocess import Preprocess
    from edgecnn.search.prepare import arrays

    pre = Preprocess(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in found["preprocess"].items()})
    items = [(Path(p), label) for p, label in found["evaluation"]]
    if args.eval_limit:
        items = items[: args.eval_limit]
    images, labels = arrays(items, pre)
    cache = work / f"{model}.eval.npy"
    np.save(cache, images)
    job = {"model": model, "threads": args.threads, "cache": str(cache), "work_dir": str(work), "fp32_onnx": found["fp32"],
           "calib_indices": [], "eval_indices": list(range(len(images))), "input_shape": [1, *images.shape[1:]]}
    artifacts = {"ORT FP32": found["fp32"], **{f"edgecnn uniform {p.upper()}": path for p, path in found["uniform"].items() if p != "fp32"},
                 "edgecnn searched": found["chosen"]}
    # One file, one worker: the searched artifact is often a uniform one (same path); timing it twice
    # would show one file at two speeds (timing noise), so its row is that file's row.
    same_as = {}
    for label, path in artifacts.items():
        first = next(other for other, p in artifacts.items() if p == path)
        if first != label:
            same_as[label] = first
    from edgecnn.targets import get_target

    runtime = get_target(args.target).backend  # edgecnn's files run in their target's runtime, ORT FP32 in ORT
    opener = {"ort": "engines.ort:open_onnx", "openvino": "engines.openvino_engines:open_edgecnn_runtime"}
    workers = {label: EngineWorker(opener["ort" if label == "ORT FP32" else runtime], job, {"path": path})
               for label, path in artifacts.items() if label not in same_as}
    try:
        calib = np.load(found["calib_cache"]) if found.get("calib_cache") else None
        if calib is not None:
            np.save(work / f"{model}.calib.npy", calib)
            ov_job = {**job, "cache": str(work / f"{model}.calib.npy"), "calib_indices": list(range(len(calib)))}
            ov = run_build("engines.openvino_engines:build_nncf_int8", ov_job, timeout=1800)
            workers["OpenVINO INT8 (NNCF PTQ)"] = EngineWorker("engines.openvino_engines:open_ir", job, ov)
    except (EngineError, ImportError, ModuleNotFoundError) as exc:
        say(f"  OpenVINO INT8 skipped: {str(exc).splitlines()[0]}")
    found["candidates_evaluation"] = candidates_on_evaluation(found, images, labels, args.threads, runtime)
    rows, timed = {}, {label: path for label, path in artifacts.items() if label not in same_as}
    if runtime != "ort":  # the timer runs ONNX files in ORT; edgecnn's go through their runtime's opener
        timed = {label: path if label == "ORT FP32" else
                 Engine("edgecnn.backends.openvino:OvRunner", (("path", str(path)),), tuple(job["input_shape"]))
                 for label, path in timed.items()}
    try:
        for label, worker in workers.items():
            top1 = worker.call("eval", indices=job["eval_indices"], batch=8)[:, 0]
            rows[label] = {"correct": top1 == labels, "top1_pred": top1}
        if "OpenVINO INT8 (NNCF PTQ)" in workers:
            timed["OpenVINO INT8 (NNCF PTQ)"] = Engine("engines.openvino_engines:OpenVinoRunner", (("path", ov["path"]),),
                                                       tuple(job["input_shape"]), (str(BENCH_DIR),))
    finally:
        for worker in workers.values():
            worker.close()
    from edgecnn.measure import interleave

    spread = interleave.CLAIM_SPREAD_S if args.spread is None else args.spread
    say(f"  timing {len(timed)} engines interleaved, {interleave.CLAIM_ROUNDS} rounds spread over {spread:g} s")
    timings = time_interleaved(timed, args.threads, spread_s=spread, rounds=interleave.CLAIM_ROUNDS)  # engines never compute at the same time
    for label, first in same_as.items():
        rows[label], timings[label] = {**rows[first], "same_file_as": first}, timings[first]
    return finish_rows(rows, timings)


def candidates_on_evaluation(found: dict, images, labels, threads: int, runtime: str = "ort") -> dict:
    """Top-1 on the evaluation part of every configuration the search measured (reported, never
    chosen on), and whether the proxy it chose with ranks them as that top-1 does."""
    from edgecnn.search.proxy import rank_agreement
    from edgecnn.search.run import top1_of

    s = found["summary"]
    named = {f"uniform {p.upper()}": (v, found["uniform"][p]) for p, v in s["uniform"].items() if p != "fp32"}
    named.update({f"candidate {i}": (v, v.get("artifact")) for i, v in enumerate(s["verified"]) if v.get("artifact")})
    rows = {}
    for name, (cand, path) in named.items():
        if cand.get("drop") is None or not Path(path).is_file():
            continue
        rows[name] = {"top1_search": s["fp32_top1_search_part"] - cand["drop"], "choose": cand.get("choose"),
                      "top1_evaluation": float((top1_of(Path(path), images, threads, backend=runtime) == labels).mean() * 100),
                      "feasible": cand.get("feasible"), "chosen": path == found["chosen"]}
    ranked = [r for r in rows.values() if r["choose"]]
    rank = rank_agreement([r["choose"]["agree"] for r in ranked], [r["top1_evaluation"] for r in ranked]) if ranked else None
    return {"rows": rows, "rank_vs_evaluation_top1": rank}


def finish_rows(rows: dict, timings: dict) -> dict:
    """Accuracy, paired drop bounds (edgecnn.stats), latency and per-round paired speed-up bounds."""
    from edgecnn.stats import drop_bound, ratio_bound

    base, fp32 = rows["ORT FP32"], timings["ORT FP32"]
    for label, row in rows.items():
        row["latency"] = timings[label].to_dict()
        row["top1"] = float(row["correct"].mean() * 100)
        row["agreement"] = float((row["top1_pred"] == base["top1_pred"]).mean() * 100)
        bound = drop_bound(base["correct"], row["correct"]) if label != "ORT FP32" else None
        row.update(drop=bound.estimate if bound else 0.0, drop_bound=bound.to_dict() if bound else None, n=len(row["correct"]))
        row["speedup"] = fp32.median_ms / timings[label].median_ms
        row["speedup_bound"] = ratio_bound(fp32.round_medians_ms, timings[label].round_medians_ms).to_dict()
    for row in rows.values():  # after the loop: every row is compared with FP32's predictions
        row.pop("correct", None), row.pop("top1_pred", None)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,squeezenet1_1")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--max-verify", type=int, default=5)
    parser.add_argument("--prune", default="0.75", help="kept channel fractions a group may take ('' = precision only)")
    parser.add_argument("--recovery-steps", type=int, default=100)
    parser.add_argument("--recovery-images", type=int, default=3200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="x86", help="CPU target searched and timed, ONNX Runtime or OpenVINO "
                        "(default: x86, this CPU's ONNX Runtime target; openvino: its OpenVINO one)")
    parser.add_argument("--spread", type=float, default=None,
                        help="seconds the rounds of the search's final timing and of the table's timing are spread over "
                             "(default: edgecnn.measure.interleave.CLAIM_SPREAD_S)")
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--salt", default="edgecnn-split-2", help="split salt (a fresh one for a rerun: docs/search.md)")
    parser.add_argument("--choose-on", default=str(DATA / "distill"), help="unlabelled photos the ties are chosen on ('' = the search part)")
    parser.add_argument("--choose-images", type=int, default=2000)
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "search"))
    parser.add_argument("--render", nargs="+", metavar="JSON", help="only merge these results files (models of one run each) and render --out")
    parser.add_argument("--findings", metavar="MD", help="with --render: a findings section (markdown) to append")
    args = parser.parse_args(argv)
    from engines import host_ort_target

    args.target, unfit = host_ort_target(args.target, ("ort", "openvino"))  # the settings name the target that ran, not "x86"
    if unfit and not args.render:
        parser.error(f"--target: {unfit}")
    if args.render:
        merged = {"settings": {}, "models": {}}
        for path in args.render:
            part = json.loads(Path(path).read_text())
            merged["models"].update(part["models"])
            merged.setdefault("environment", part.get("environment"))
            merged.setdefault("load_average", part.get("load_average"))
            merged["findings"] = part.get("findings") or merged.get("findings")
            per_model = all(isinstance(v, dict) for v in part["settings"].values())  # an already merged file
            for model in part["models"]:
                settings = part["settings"][model] if per_model else part["settings"]
                merged["settings"][model] = {k: v for k, v in settings.items() if k not in ("work", "out", "render", "findings")}
        if args.findings:
            merged["findings"] = Path(args.findings).read_text()
        merged = {k: v for k, v in merged.items() if v is not None}
        write(merged, Path(args.out))
        return 0
    from _workers import run_build

    work = Path(args.work or tempfile.mkdtemp(prefix="edgecnn-search-bench-"))
    cache = Path(os.environ.get("EDGECNN_CACHE", Path.home() / ".cache" / "edgecnn")) / "teacher-logits"
    from edgecnn.measure.sysinfo import environment

    settings = {k: v for k, v in vars(args).items() if k not in ("work", "out", "render", "findings")}  # no machine paths
    settings["choose_on"] = Path(args.choose_on).name if args.choose_on else None
    results = {"settings": settings, "environment": environment(args.threads), "models": {},
               "load_average": {"start": os.getloadavg()[0]}}  # other work on the machine slows a niced run
    for model in args.models.split(","):
        say(f"== {model}: search")
        search = {"max_drop": args.max_drop, "max_verify": args.max_verify, "threads": args.threads,
                  "prune_densities": [float(v) for v in args.prune.split(",") if v], "recovery_steps": args.recovery_steps,
                  "sensitivity_images": 32, "target": args.target, "choose_on": args.choose_on or None, "choose_images": args.choose_images,
                  "final_spread_s": args.spread}
        job = {"model": model, "threads": args.threads, "work": str(work), "cache": str(cache), "search": search,
               "recovery_images": args.recovery_images, "salt": args.salt}
        found = run_build("search:search_job", job, timeout=4 * 3600)
        found["calib_cache"] = str(work / model / "data" / "calib.npy")
        say(f"== {model}: evaluation and timing ({found['evaluation_images']} evaluation images)")
        found["engines"] = evaluate_and_time(model, found, args, work)
        found.pop("evaluation")
        found = json.loads(json.dumps(found, default=str).replace(str(work) + os.sep, ""))  # no machine paths in results
        results["models"][model] = found
        results["load_average"][f"after {model}"] = os.getloadavg()[0]
        write(results, Path(args.out))
    return 0


def write(results: dict, out: Path) -> None:
    from search_report import render

    from edgecnn.fileio import write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(results, indent=1, default=str))
    render(results, out)


if __name__ == "__main__":
    sys.exit(main())
