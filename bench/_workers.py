"""Engine processes: a fresh process per build (calibration time/memory measured there) and
one long-lived worker per engine for accuracy, op profiles and runtime facts, driven one command
at a time so engines never overlap. Timing is not here: it goes through edgecnn.measure.interleave.

Sessions sharing one process slowed each other 2-4x on a 2-core machine, hence processes.
"""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Optional

import numpy as np

_CONTEXT = multiprocessing.get_context("spawn")


class EngineError(RuntimeError):
    """An engine failed in its own process; the message carries the child's error line."""


def _build_entry(conn, target: str, job: dict) -> None:
    try:
        from engines import resolve

        conn.send(("ok", resolve(target)(job)))
    except BaseException as exc:  # reported to the parent, which skips the engine
        conn.send(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", traceback.format_exc()))
    finally:
        conn.close()


def run_build(target: str, job: dict, timeout: float) -> dict:
    """Run ``target(job)`` in a fresh process; its result dict, or EngineError."""
    parent, child = _CONTEXT.Pipe()
    process = _CONTEXT.Process(target=_build_entry, args=(child, target, job), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise EngineError(f"build did not finish within {timeout:.0f} s")
        status, *payload = parent.recv()
    except EOFError:
        raise EngineError(f"build process died (exit code {process.exitcode})") from None
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
    if status != "ok":
        raise EngineError(payload[0] + "\n" + payload[1])
    return payload[0]


def _serve(conn, open_target: str, job: dict, artifact: dict) -> None:
    try:
        from engines import resolve
        from engines.common import images

        runner = resolve(open_target)(job, artifact)
        cache = images(job) if job.get("cache") else None
        conn.send(("ok", {}))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        conn.close()
        return

    def batch_input(batch: int) -> np.ndarray:
        if cache is None:
            return np.random.default_rng(0).standard_normal((batch, *job["input_shape"][1:])).astype(np.float32)
        rows = [job["eval_indices"][i % len(job["eval_indices"])] for i in range(batch)] if job["eval_indices"] else [0] * batch
        return np.ascontiguousarray(cache[rows])

    while True:
        try:
            command, args = conn.recv()
        except EOFError:
            return
        try:
            if command == "close":
                conn.send(("ok", None))
                return
            if command == "eval":
                from _stats import padded_batches, top5_of

                batch = args["batch"]
                if hasattr(runner, "set_threads"):
                    # Accuracy does not depend on threads; one thread avoids the thread-pool
                    # stalls PyTorch shows on an oversubscribed machine.
                    runner.set_threads(1)
                out = []
                for chunk, real in padded_batches(args["indices"], batch):
                    logits = runner.run(np.ascontiguousarray(cache[chunk]))
                    out.append(top5_of(logits[:real]))
                if hasattr(runner, "set_threads"):
                    runner.set_threads(job["threads"])
                conn.send(("ok", np.concatenate(out) if out else np.zeros((0, 5), np.int32)))
            elif command == "op_profile":
                if not hasattr(runner, "op_profile"):
                    conn.send(("ok", None))
                else:
                    conn.send(("ok", runner.op_profile(batch_input(1), args["iters"], job["work_dir"])))
            elif command == "info":
                info = {}
                if hasattr(runner, "runtime_precision"):
                    info["runtime_precision"] = runner.runtime_precision()
                conn.send(("ok", info))
            else:
                conn.send(("error", f"unknown command {command}", ""))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class EngineWorker:
    """The engine's own process; ``call`` sends one command and waits for its answer."""

    def __init__(self, open_target: str, job: dict, artifact: dict, timeout: float = 600):
        self.timeout = timeout
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child, open_target, job, artifact), daemon=True)
        self.process.start()
        child.close()
        self._answer()

    def _answer(self, timeout: Optional[float] = None):
        try:
            if not self.conn.poll(timeout or self.timeout):
                raise EngineError("no answer from the engine process (timed out)")
            status, *payload = self.conn.recv()
        except EOFError:
            raise EngineError(f"engine process died (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise EngineError(payload[0] + ("\n" + payload[1] if len(payload) > 1 else ""))
        return payload[0]

    def call(self, command: str, **args):
        self.conn.send((command, args))
        return self._answer()

    def close(self) -> None:
        try:
            if self.process.is_alive():
                self.conn.send(("close", {}))
                self._answer(10)
        except (EngineError, OSError, BrokenPipeError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
