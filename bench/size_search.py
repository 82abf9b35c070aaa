"""The size objective against uniform bits: SqueezeNet 1.1 and MobileNetV2, real weights.

For each model (BN folded, as the pipeline's fold_bn stage leaves it), the labelled sample
is split by edgecnn's search/evaluation rule (``edgecnn.data.split``). On the search part only,
:func:`edgecnn.search.size.size_search` measures uniform weight sharing (8 bit down to the
first width over the budget) and bisects the Fisher per-layer allocation's byte budget. Two
artifacts are chosen there: the smallest uniform-bits one within the budget and the
smallest overall. Both are packed as .ecnn, decoded, and evaluated in ONNX Runtime on the
evaluation part, which no choice saw.

Goal (issue 23): the smallest artifact within 1.0 point is >= 30 % smaller than the best
uniform-bits artifact within the same budget. Verdict from a one-sided 95 % bound on the
chosen artifact's drop on the evaluation part (paired per image against FP32):
met = size goal reached and upper bound <= budget; not met = size goal missed (sizes are
exact) or lower bound > budget; otherwise not resolved.

Run: python bench/size_search.py [--images N] [--models squeezenet1_1 mobilenet_v2]
         [--prune 0.75 0.5 --train ../shared/data/distill] --output bench/results/size_search.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
from _models import WITH_WEIGHTS, load

ROOT = Path(__file__).resolve().parent.parent
GOAL_SMALLER = 0.30
BUDGET = 1.0
CONFIDENCE = 0.95


def environment(threads: int) -> dict:
    """Generated environment block: the library's (CPU model, flags and class, versions, commit)
    plus the machine's load at the time (edgecnn.measure.sysinfo)."""
    from edgecnn.measure.sysinfo import environment as library_environment
    from edgecnn.measure.sysinfo import system_info

    return {**system_info(threads), **library_environment(threads)}


def split_arrays(data: Path, preprocess, limit: int | None, work: Path, salt: str):
    """(search images, labels), (evaluation images, labels): edgecnn's split rule, ``limit`` per part."""
    from edgecnn.data.images import ImageFolder
    from edgecnn.data.split import split_items
    from edgecnn.search.prepare import arrays

    root = data / "imagenet-sample"
    split = split_items(list(ImageFolder(root).items), root, salt=salt)
    return arrays(split.search, preprocess, limit), arrays(split.evaluation, preprocess, limit), split.rule


def decoded_predictions(model, path: Path, size: int, images: np.ndarray, threads: int) -> tuple[np.ndarray, int]:
    """(top-1 class per image from the decoded .ecnn in ONNX Runtime, .ecnn bytes)."""
    import onnx
    import onnxruntime as ort

    from edgecnn.pack import decode_model, pack_model
    from edgecnn.search.run import export

    data, _ = pack_model(onnx.load(str(export(model, path, size, "ort-x86"))))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(decode_model(data).SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pred = np.concatenate([session.run(None, {name: images[i:i + 32]})[0].argmax(1) for i in range(0, len(images), 32)])
    return pred, len(data)


def bound(base_correct: np.ndarray, correct: np.ndarray) -> dict:
    diff = (base_correct.astype(np.float64) - correct.astype(np.float64)) * 100
    se = float(diff.std(ddof=1) / math.sqrt(diff.size))
    z = NormalDist().inv_cdf(CONFIDENCE)
    return {"drop": float(diff.mean()), "upper": float(diff.mean() + z * se), "lower": float(diff.mean() - z * se),
            "images": int(diff.size)}


def verdict(smaller: float, drop: dict) -> str:
    if smaller < GOAL_SMALLER or drop["lower"] > BUDGET:
        return "not met"
    if drop["upper"] <= BUDGET:
        return "met"
    return "not resolved"


def run_model(name: str, data: Path, limit: int | None, threads: int, max_verify: int, prune: list[float], salt: str,
              train: Path | None = None, recovery_steps: int = 200, recovery_images: int = 4000) -> dict:
    import torch

    from edgecnn.search.run import SearchConfig
    from edgecnn.search.size import size_search

    torch.set_num_threads(threads)
    started = time.perf_counter()
    loaded = load(name, data, fold_bn=True)
    loaded.module.eval()
    with tempfile.TemporaryDirectory(prefix="edgecnn-size-") as tmp:
        work = Path(tmp)
        (xs, ys), (xe, ye), rule = split_arrays(data, loaded.preprocess, limit, work, salt)
        config = SearchConfig(max_drop=BUDGET, prune_densities=prune, sensitivity_images=64, max_verify=max_verify,
                              recovery_steps=recovery_steps)
        log = lambda m: print(f"[{name}] {m}", flush=True)  # noqa: E731
        recovery, training = None, None
        if train is not None:
            from edgecnn.search.prepare import make_recovery
            from edgecnn.search.prepare import recovery_images as photos

            paths = photos(train, recovery_images)
            recovery = make_recovery(loaded.module, paths, loaded.preprocess, config, work / "teacher-cache", work, log)
            training = {"photos": len(paths), "folder": train.name, "steps": config.recovery_steps, "size": config.recovery_size,
                        "lr": config.recovery_lr, "batch": 32}
        outcome = size_search(loaded.module, xs, ys, config, work / "search", recovery, log=log)
        size = xs.shape[-1]
        fp32_pred, fp32_bytes = decoded_predictions(loaded.module, work / "fp32.onnx", size, xe, threads)
        base_correct = fp32_pred == ye
        rows = {"fp32": {"bytes": fp32_bytes, "top1": float(base_correct.mean() * 100)}}
        feasible_uniform = [c for c in outcome.uniform if c.feasible and c.shipped_bytes is not None]
        best_uniform = min(feasible_uniform, key=lambda c: c.shipped_bytes) if feasible_uniform else None
        picks = {"best uniform": best_uniform, "smallest (chosen)": outcome.chosen}
        for key, cand in picks.items():
            if cand is None:
                continue
            pred, nbytes = decoded_predictions(cand.model, work / f"{key.split()[0]}.onnx", size, xe, threads)
            rows[key] = {"label": cand.label, "bytes": nbytes, "top1": float((pred == ye).mean() * 100),
                         "search_drop": cand.drop, **bound(base_correct, pred == ye)}
    result = {"model": name, "split": rule, "search_images": int(len(xs)), "evaluation_images": int(len(xe)),
              "fp32_top1_search": outcome.fp32_top1, "uniform": [c.to_dict() for c in outcome.uniform],
              "searched": [c.to_dict() for c in outcome.searched], "rows": rows, "chosen_layers": outcome.layers, "notes": outcome.notes,
              "seconds": round(time.perf_counter() - started, 1), "search_seconds": {k: round(v, 1) for k, v in outcome.seconds.items()},
              "prune_densities": list(prune), "recovery": training, "max_verify": max_verify}
    if best_uniform is not None and outcome.chosen is not None:
        smaller = 1 - rows["smallest (chosen)"]["bytes"] / rows["best uniform"]["bytes"]
        result["smaller"] = smaller
        result["verdict"] = verdict(smaller, rows["smallest (chosen)"])
    else:
        result["verdict"] = "not resolved"
    return result


def training_line(result: dict) -> str:
    """What the candidates were allowed beyond weight sharing: pruning densities and recovery training."""
    prune = result.get("prune_densities") or []
    pruning = (f"layers may also be magnitude-pruned to {', '.join(f'{d:g}' for d in prune)} of their weights (the kept "
               "weights refit to the layer's unpruned output on other search images before the layer is scored)"
               if prune else "no pruning")
    rec = result.get("recovery")
    if not rec:
        return f"Candidates: weight sharing, {pruning}, no training (`--train` not given)."
    return (f"Candidates: weight sharing, {pruning}; **every candidate** (uniform widths too) trained back by "
            f"distillation from FP32 before its drop is measured: {rec['steps']} steps of batch {rec['batch']} at "
            f"{rec['size']} px, lr {rec['lr']:g}, on {rec['photos']:,} unlabelled photos of {rec['folder']}/ (none in the "
            f"labelled sample), weights kept tied to their centroids and pruned weights at zero.")


def markdown(results: list[dict], env: dict, limit: int | None, total: float) -> str:
    lines = ["# Size objective: smallest shipped .ecnn within 1.0 point vs uniform bits", "",
             "Generated by `python bench/size_search.py`. Weight sharing per layer (2-8 bit codebooks, entropy-coded "
             "indices) chosen by the knapsack on each layer's measured sensitivity (output KL from FP32 with that layer "
             "alone shared, at each width; a pruned layer's kept weights refit to its old output first, "
             "`edgecnn/passes/reconstruct.py`), its byte budget bisected on the measured top-1 drop (`edgecnn/search/size.py`); pruning and training as each model's section says. Real weights from the shared data "
             "(SqueezeNet 1.1 from fp16, MobileNetV2 from 8-bit TFLite; BN folded).", "",
             "Protocol: the labelled sample is split by edgecnn's rule; every choice (uniform widths, budgets, the "
             "final artifact) is made on the **search part**; the table reports the **evaluation part**, which no choice "
             "saw, through the decoded .ecnn in ONNX Runtime. Drop bounds: one-sided 95 %, paired per image against FP32 "
             "(normal approximation)." + (f" Images limited to {limit} per part (spread evenly) to keep the run short." if limit else ""),
             "", "## Environment", "", "```", json.dumps(env, indent=1, sort_keys=True), "```", ""]
    for r in results:
        lines += [f"## {r['model']}", "",
                  f"Split: {r['split']}; {r['search_images']} search images, {r['evaluation_images']} evaluation images. "
                  f"FP32 top-1 on the search part {r['fp32_top1_search']:.1f} %. Run time {r['seconds'] / 60:.1f} min."
                  + (f" At most {r['max_verify']} per-layer candidates." if r.get("max_verify") else ""), "",
                  training_line(r), "",
                  "| artifact (chosen on the search part) | .ecnn bytes | top-1 % (eval part) | drop (eval) | 95 % upper bound | drop (search part) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, row in r["rows"].items():
            if key == "fp32":
                lines.append(f"| FP32 | {row['bytes']:,} | {row['top1']:.1f} | | | |")
            else:
                lines.append(f"| {key}: {row['label']} | {row['bytes']:,} | {row['top1']:.1f} | {row['drop']:+.2f} | "
                             f"{row['upper']:+.2f} | {row['search_drop']:+.2f} |")
        lines += ["", "Everything measured on the search part:", "", "| configuration | estimated bytes | .ecnn bytes | drop (search part) | bits (layers) | pruned layers | within budget |",
                  "| --- | ---: | ---: | ---: | --- | ---: | --- |"]
        for c in r["uniform"] + r["searched"]:
            bits = ", ".join(f"{b}: {n}" for b, n in c["bits"].items())
            lines.append(f"| {c['label']} | {c['estimated_bytes']:,} | {c['shipped_bytes'] if c['shipped_bytes'] is not None else '-'} | "
                         f"{c['drop']:+.2f} | {bits} | {c.get('pruned_layers', 0)} | {'yes' if c['feasible'] else 'no'} |")
        lines += [""] + [f"- {note}" for note in r.get("notes", [])] if r.get("notes") else []
        if "smaller" in r:
            lines += ["", f"Size goal (>= {GOAL_SMALLER:.0%} smaller than the best uniform artifact within {BUDGET} point): "
                      f"{r['smaller']:.1%} smaller; **{r['verdict']}**."]
        else:
            lines += ["", f"Size goal: **{r['verdict']}** (no artifact within the budget on the search part)."]
        lines.append("")
    lines.append(f"Total bench time {total / 60:.1f} min (the per-model run times above add up to it; load average at the start in the "
                 f"environment block).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", default=list(WITH_WEIGHTS), choices=list(WITH_WEIGHTS))
    parser.add_argument("--images", type=int, default=None, help="images per split part (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-verify", type=int, default=6)
    parser.add_argument("--prune", type=float, nargs="*", default=[],
                        help="kept-weight densities a layer may also be magnitude-pruned to")
    parser.add_argument("--train", type=Path, default=None,
                        help="unlabelled photos every candidate is trained back on by distillation (e.g. ../shared/data/distill)")
    parser.add_argument("--recovery-steps", type=int, default=200)
    parser.add_argument("--recovery-images", type=int, default=4000, help="photos of --train used (every k-th)")
    parser.add_argument("--salt", default="edgecnn-split-3",
                        help="split salt: a fresh one whenever the method changed after a reported result (docs/search.md)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="*", default=None,
                        help="write --output from the .json files of earlier runs (e.g. one per model) instead of running")
    args = parser.parse_args()
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        results = [r for run in runs for r in run["results"]]
        total = sum(run["total_seconds"] for run in runs)
        env = runs[0].get("environment") or environment(args.threads)  # the machine the runs measured on
        _write(args.output, markdown(results, env, args.images, total), results, total, env)
        return
    if not (args.data / "weights").is_dir():
        sys.exit(f"no shared data at {args.data}; pass --data DIR (weights/ and imagenet-sample/)")
    if args.train is not None and not args.train.is_dir():
        sys.exit(f"--train {args.train} is not a folder; give a folder of photos (e.g. ../shared/data/distill)")
    env = environment(args.threads)  # the commit and machine the run starts on, not what was edited during it
    started = time.perf_counter()
    results = [run_model(m, args.data, args.images, args.threads, args.max_verify, args.prune, args.salt, args.train,
                         args.recovery_steps, args.recovery_images) for m in args.models]
    total = time.perf_counter() - started
    _write(args.output, markdown(results, env, args.images, total), results, total, env)


def _write(output: Path | None, text: str, results: list, total: float, env: dict) -> None:
    print(text)
    if output:
        from edgecnn.fileio import write_text_atomic

        write_text_atomic(output, text)
        write_text_atomic(output.with_suffix(".json"), json.dumps({"environment": env, "results": results, "total_seconds": total},
                                                                    indent=1, default=float))


if __name__ == "__main__":
    main()
