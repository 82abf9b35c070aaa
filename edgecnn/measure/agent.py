"""The agent: what a device runs for edgecnn, with its own Python, numpy and runtime (no torch).

``python -m edgecnn.measure.agent JOB ...`` (or the zip application of
:mod:`edgecnn.devices.agent_zip`):

* ``probe``: one JSON object describing the machine (CPU model and flags, cores, OS, Python,
  runtime versions, free disk);
* ``latency MODEL [options]``: the library's timer (:mod:`edgecnn.measure.latency`), one JSON
  result, exactly as a local ``edgecnn bench`` measures;
* ``interleave NAME=MODEL ...``: whole-model timings of several files, rounds interleaved (the
  search's latency table, measured on the device);
* ``infer MODEL``: reads length-prefixed ``.npy`` batches on stdin and answers each with the
  model's first output, until an empty frame: evaluation images travel as preprocessed tensors,
  so the device needs no image library.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys

from edgecnn.errors import UserError


def probe(cache_dir: str = ".") -> dict:
    from edgecnn.measure.sysinfo import library_versions, system_info

    info = system_info()
    info["runtimes"] = library_versions(("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "polygraphy", "numpy"))
    try:
        info["free_disk_bytes"] = shutil.disk_usage(cache_dir).free
    except OSError:
        info["free_disk_bytes"] = None
    info["trtexec"] = shutil.which("trtexec") or (
        "/usr/src/tensorrt/bin/trtexec" if os.path.exists("/usr/src/tensorrt/bin/trtexec") else None)
    return info


def infer(model: str, threads: int, opt_level: str, stdin, stdout, backend: str = "ort") -> None:
    import numpy as np

    from edgecnn.devices.base import read_frame, write_frame
    from edgecnn.measure.accuracy import onnx_predictor

    predict, _ = onnx_predictor(model, threads=threads, opt_level=opt_level, backend=backend)
    while True:
        try:
            frame = read_frame(stdin)
        except EOFError:
            return
        if not frame:
            return
        batch = np.load(io.BytesIO(frame), allow_pickle=False)
        buf = io.BytesIO()
        np.save(buf, predict(batch).astype(np.float32), allow_pickle=False)
        write_frame(stdout, buf.getvalue())
        stdout.flush()


def interleave(models: dict[str, str], threads: int, batch: int, rounds: int, iters: int, warmup: int,
               spread_s: float = 0.0, backend: str = "ort") -> dict:
    """Per-call seconds by round of several files, rounds interleaved (A, B, A, B, ...) and spread
    over ``spread_s`` seconds, each call timed by the library timer: what
    :class:`edgecnn.measure.interleave.Timer` measures, on this machine."""
    from edgecnn.measure.latency import SETTLE_S, SPINNING_BACKENDS, interleaved, open_runner, time_runs

    runners = {name: open_runner(path, backend, threads) for name, path in models.items()}
    calls = {name: r.run_callable(r.input_for(batch)) for name, r in runners.items()}
    times: dict[str, list] = {name: [] for name in models}
    for name in interleaved(list(calls), rounds, spread_s, lambda _name: backend in SPINNING_BACKENDS, SETTLE_S):
        times[name].append(time_runs(calls[name], 0.0, iterations=iters, warmup_runs=warmup))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgecnn-agent", description="edgecnn's device agent (no torch)")
    jobs = parser.add_subparsers(dest="job", required=True)
    p = jobs.add_parser("probe")
    p.add_argument("--cache-dir", default=".")
    jobs.add_parser("latency", add_help=False)
    p = jobs.add_parser("infer")
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--opt-level", default="all")
    p.add_argument("--backend", default="ort", choices=("ort", "openvino"))
    p = jobs.add_parser("interleave")
    p.add_argument("models", nargs="+", metavar="NAME=PATH")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--spread", type=float, default=0.0, help="seconds the rounds are spread over")
    p.add_argument("--backend", default="ort", choices=("ort", "openvino"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["latency"]:
        from edgecnn.measure.latency import main as latency_main

        return latency_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.job == "probe":
            json.dump(probe(args.cache_dir), sys.stdout)
            sys.stdout.write("\n")
        elif args.job == "interleave":
            models = dict(item.split("=", 1) for item in args.models)
            json.dump(interleave(models, args.threads, args.batch, args.rounds, args.iters, args.warmup, args.spread,
                                  args.backend), sys.stdout)
            sys.stdout.write("\n")
        elif args.job == "infer":
            infer(args.model, args.threads, args.opt_level, sys.stdin.buffer, sys.stdout.buffer, args.backend)
    except UserError as exc:
        print(f"edgecnn: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
