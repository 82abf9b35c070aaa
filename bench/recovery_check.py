"""What the search's recovery can win back: SqueezeNet 1.1 on the search part, before and after
cached-teacher distillation on ../shared/data/distill; writes bench/results/recovery_check.md.

Rows: the unchanged model (does recovery alone move it? with and without dropout), every Fire's
squeeze conv pruned to 75 % of its channels, every Fire's expand3x3 pruned to 75 %. Top-1 on the
575 images of the search part (edgecnn.data.split) only; the evaluation part is never touched.

    python bench/recovery_check.py [--steps 150] [--images 3200] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "recovery_check.md"


def predictions(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(images[i:i + 64])).argmax(1) for i in range(0, len(images), 64)]).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--images", type=int, default=3200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--limit", type=int, default=None, help="a smoke run: this many search-part images (default: all)")
    args = parser.parse_args(argv)
    if not (DATA / "distill").is_dir():
        print(f"shared data not found at {DATA}; nothing to do")
        return 0
    from edgecnn.data.split import split_folder
    from edgecnn.models import load_model
    from edgecnn.search.prepare import make_recovery, recovery_images, search_data
    from edgecnn.search.run import SearchConfig
    from edgecnn.search.space import apply_config, build_space

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model("squeezenet1_1", weights=str(DATA / "weights" / "squeezenet1_1.pth"), preprocess="torchvision")
    teacher = loaded.module.eval()
    work = Path(tempfile.mkdtemp(prefix="edgecnn-recovery-check-"))
    data = search_data(split_folder(DATA / "imagenet-sample").search, loaded.preprocess, 32, limit=args.limit)
    reference = predictions(teacher, data.images)
    base_top1 = float((reference == data.labels).mean() * 100)
    space = build_space(teacher, torch.from_numpy(data.images[:1]), ("fp32",), (0.75,), False)
    prune = [u.name for u in space.units if u.kind == "prune"]

    photos = recovery_images(DATA / "distill", args.images)
    settings = SearchConfig(recovery_size=args.size, recovery_lr=args.lr, prune_densities=[0.75])
    recover = make_recovery(teacher, photos, loaded.preprocess, settings, work / "cache", work, log=print)  # the search's own
    cases = [("unchanged, dropout on", [], True), ("unchanged", [], False),
             ("every squeeze at 75 %", [u for u in prune if u.endswith(".squeeze")], False),
             ("every expand3x3 at 75 %", [u for u in prune if u.endswith(".expand3x3")], False)]
    rows = []
    for label, units, dropout in cases:
        student = apply_config(teacher, space, {**space.base(), **{u: 0.75 for u in units}}, data.calib, quantize=False)
        before = predictions(student, data.images)
        t0 = time.perf_counter()
        summary = recover(student, args.steps, dropout=dropout)
        after = predictions(student, data.images)
        rows.append({"case": label, "before": float((before == data.labels).mean() * 100),
                     "after": float((after == data.labels).mean() * 100), "agree": float((after == reference).mean() * 100),
                     "loss": summary["loss"], "features": summary["feature_layers"], "seconds": time.perf_counter() - t0})
        print(f"  {label}: {rows[-1]}", flush=True)
    n_photos = len(photos)
    text = render(rows, base_top1, len(data.images), n_photos, args, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        from edgecnn.fileio import write_text_atomic
        from edgecnn.measure.sysinfo import environment_markdown

        from _stats import hand_written_findings

        findings = hand_written_findings(args.out)  # they name the numbers a rerun must recheck
        write_text_atomic(args.out, text.rstrip("\n") + "\n" + findings + "\n" + environment_markdown(threads=args.threads))
    return 0


def render(rows, base_top1, n_search, n_photos, args, total_s) -> str:
    lines = ["# What the search's recovery wins back (SqueezeNet 1.1)", "",
             f"Generated by `python bench/recovery_check.py --steps {args.steps} --images {args.images} --size {args.size}` "
             f"in {total_s / 60:.1f} min ({args.threads} torch threads, 2 shared cores). Recovery: cached-teacher "
             f"distillation (`edgecnn.train.cached_teacher`, AdamW lr {args.lr:g}, cosine, batch 32, {args.steps} steps at "
             f"{args.size} px on {n_photos} photos of distill/, logit KD at T=2 plus feature matching at the block outputs the "
             f"model keeps: `edgecnn.search.prepare.make_recovery`, the search's own). Top-1 on the "
             f"{n_search} images of the search part (FP32: {base_top1:.2f} %); the evaluation part is not used.", "",
             "| model | top-1 before recovery | after | drop vs FP32 (points) | agreement with FP32 % | features matched | final loss | recovery s |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['before']:.2f} | {r['after']:.2f} | {base_top1 - r['after']:.2f} | {r['agree']:.1f} | "
                     f"{r['features']} | {r['loss']:.4f} | {r['seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
