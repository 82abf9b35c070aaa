"""The results file of bench/shift_distill.py: deploy forms, the model rows, the goal, the
distillation curves, the search's sensitivity ranking and every setting."""

from __future__ import annotations

import os


def latency(r) -> str:
    return f"{r['ms_before']:.2f} -> {r['ms_after']:.2f}" if "ms_after" in r else "(measured at the end)"


def recovered(r) -> float:
    lost = r["top1_before"] - r["top1_right_after"]
    return (r["top1_after"] - r["top1_right_after"]) / lost * 100 if lost > 0 else float("nan")


def goal_verdict(r, need: float, n_eval: int) -> tuple[str, object]:
    """Top-1 after distillation against the mark, by its one-sided 95 % bounds (binomial, normal
    approximation on the n_eval images; the mark, from the same images, is taken as exact)."""
    import math

    from edgecnn.stats import Bound, verdict_at_least

    p = r["top1_after"] / 100
    bound = Bound.normal(r["top1_after"], 100 * math.sqrt(max(p * (1 - p), 1e-12) / n_eval), n_eval)
    return verdict_at_least(bound, need), bound


def render(forms, results, train_label, n_eval, argv, threads, total_s) -> str:
    import platform

    lines = ["# Shift convolutions + knowledge distillation (real weights)", "",
             f"Produced by `{' '.join(['python bench/shift_distill.py', *argv])}` in {total_s / 60:.1f} min on "
             f"{platform.machine()} CPU ({os.cpu_count()} cores, shared; torch threads {threads}, ORT 1 thread).", "",
             "## Deploy forms of one shift (ORT CPU, 1x144x56x56, 1 thread, edgecnn.measure.interleave: median of round medians)", "",
             "| form | ms | bit-exact vs PyTorch |", "| --- | --- | --- |"]
    from edgecnn.measure.sysinfo import environment_markdown

    lines[3:3] = [environment_markdown(threads=threads)]
    for f in forms:
        lines.append(f"| {f['form']} | {f['ms']:.3f} | {'' if f['exact'] is None else ('yes' if f['exact'] else 'NO')} |")
    lines += ["", "## Models", "",
              f"Evaluation: every third image of the shared sample in manifest order (index % 3 == 0, "
              f"n={n_eval}), 224 px; never trained on. Training images: {train_label}. "
              "Top-1 on this easy sample is not comparable with published ImageNet numbers; "
              f"standard error at n={n_eval} is about 2 points. Trained by `edgecnn.train.distill` (feature matching at the "
              "block outputs; settings below).", "",
              "| model | shifted layers | params | MACs | ORT ms (b1, 224, interleaved) | top-1 before | right after | after distillation | recovered | images seen | train time |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    results = sorted(results, key=lambda r: (r["model"] != "squeezenet1_1", r["model"], -r["layers"]))
    for r in results:
        shifted = f"{r['layers']}" + (f" ({', '.join(r['include'])})" if r["include"] else " (all)")
        lines.append(
            f"| {r['model']} | {shifted} | {r['params_before'] / 1e6:.3f} M -> {r['params_after'] / 1e6:.3f} M | "
            f"{r['macs_before'] / 1e6:.0f} M -> {r['macs_after'] / 1e6:.0f} M | {latency(r)} | "
            f"{r['top1_before']:.1f} | {r['top1_right_after']:.1f} | {r['top1_after']:.1f} | {recovered(r):.0f} % of the loss | "
            f"{r['images_seen']:,} | {r['train_s'] / 60:.1f} min |")
    for r in results:
        if r["model"] == "squeezenet1_1" and not r["include"]:
            need = r["top1_right_after"] + (r["top1_before"] - r["top1_right_after"]) / 2
            verdict, bound = goal_verdict(r, need, n_eval)
            lines += ["", f"Goal (SqueezeNet 1.1, every Fire's expand3x3 shifted, recovers at least half of what it "
                      f"loses, i.e. top-1 >= {need:.1f} %): **{verdict}**, {recovered(r):.0f} % recovered "
                      f"({r['top1_after'] - need:+.1f} points from the mark; top-1 one-sided 95 % bounds "
                      f"{bound.lower:.1f} / {bound.upper:.1f} on {n_eval} images)."]
    lines += ["", "Distillation history (per epoch of the loop: images seen, feature loss, eval top-1 %):", ""]
    for r in results:
        curve = ", ".join(f"{h['step'] * r['config']['batch_size']:,}: {h['loss']:.3f} / {h['top1']:.1f}" for h in r["history"])
        lines.append(f"- {r['model']}, {r['layers']} shifted: {curve}")
    for r in results:
        if r.get("ranking"):
            lines += ["", f"Search sensitivity of {r['model']}'s shift units (`edgecnn.search.sensitivity.measure`, each "
                      "unit alone, 64 training images; KL(FP32 || shifted) of the softmax, top-1 agreement with FP32), "
                      f"least sensitive first; the {r['layers']} first were shifted in the partial row:", "",
                      "| layer | KL | agreement |", "| --- | --- | --- |"]
            lines += [f"| {x['layer']} | {x['kl']:.3f} | {100 * x['agreement']:.0f} % |" for x in r["ranking"]]
    lines += ["", "Settings:", ""]
    for r in results:
        lines.append(f"- {r['model']}, {r['layers']} shifted: shift {r['shift']}; feature layers {r['feature_layers']}; "
                     f"distill {r['config']}; {r['epoch_images']:,} images per epoch")
    lines.append("")
    return "\n".join(lines)
