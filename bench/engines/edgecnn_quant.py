"""edgecnn's own INT8 / W7A8 / W6A8 Q/DQ artifacts for ONNX Runtime x86: the job's ``target``, by
default the one ``--target x86`` resolves to on this CPU (``ort-x86-vnni`` on a VNNI CPU, whose
full 8-bit s8 weights the AVX2 kernels would saturate; ``ort-x86`` elsewhere)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engines.common import calibration_arrays, peak_rss_mb, rss_mb


def build_qdq(job: dict, weight_bits: int) -> dict:
    """fold_bn -> quantize (calibrated on the shared images) -> export_qdq(target=the job's)."""
    import torch

    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.models import load_model
    from edgecnn.passes.registry import PassContext, run_pass
    from edgecnn.targets import resolve_target_name

    torch.set_num_threads(job["threads"])
    loaded = load_model(job["model"], weights=job["weights_path"], **job["options"])
    arrays = calibration_arrays(job)
    batches = [torch.from_numpy(np.concatenate(arrays[i:i + 8])) for i in range(0, len(arrays), 8)]
    target = resolve_target_name(job.get("target") or "x86")
    work = Path(job["work_dir"])
    out = work / f"{job['model']}.{job.get('engine', f'edgecnn_w{weight_bits}a8')}.{target}.onnx"  # one file per engine
    rss_before = rss_mb()
    start = time.perf_counter()
    ctx = PassContext(example_input=batches[0][:1], calib_batches=batches, progress=False)
    model = run_pass("fold_bn", loaded.module, None, ctx)
    config = {"bits": weight_bits, "target": target}  # the pass's defaults otherwise (the `quantize` pass as a user runs it)
    model = run_pass("quantize", model, config, ctx)
    export_qdq_report(model, out, target=target, input_shape=tuple(job["input_shape"]), batch="dynamic")
    seconds = time.perf_counter() - start
    return {
        "path": str(out), "calib_seconds": seconds, "calib_peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before, "onnx_bytes": out.stat().st_size,
        "config": f"fold_bn + quantize({config}) + export_qdq(target='{target}')", "target": target,
    }


def build_int8(job: dict) -> dict:
    return build_qdq(job, 8)


def build_w7a8(job: dict) -> dict:
    """7-bit weights (ORT's reduce_range grid): s8 weights that cannot saturate VPMADDUBSW, so
    the fast U8S8 kernels run on AVX2 CPUs without VNNI."""
    return build_qdq(job, 7)


def build_w6a8(job: dict) -> dict:
    return build_qdq(job, 6)
