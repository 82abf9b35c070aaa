"""Measured peak multiply-accumulate rate of this CPU, fp32 and int8, at a given thread count.

The bench divides each engine's achieved MAC/s (model MACs / latency) by these numbers, so
"how far from this machine's compute limit" is measured, not taken from a datasheet:

* fp32: a large GEMM in ONNX Runtime (MLAS, the kernels its Conv uses) and in numpy (BLAS);
* int8: a large u8 x s8 ``MatMulInteger`` in ONNX Runtime (MLAS QGEMM, the kernels behind
  QLinearConv / ConvInteger on x86).

The peak of a kind is the best of its kernels (best iteration: the limit, not the typical
rate). Run on its own: ``python bench/peak_macs.py --threads 2``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

GEMM_SIZE = 1024


def _gemm_model(kind: str, m: int, k: int, n: int):
    """A one-node ONNX model computing A(m,k) @ B(k,n), B a constant initializer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        weight = rng.standard_normal((k, n)).astype(np.float32)
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])]
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
        inits = [numpy_helper.from_array(weight, "b")]
    else:
        weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])]
        output = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        nodes = [helper.make_node("MatMulInteger", ["a", "b", "a_zp"], ["y"])]
        inits = [numpy_helper.from_array(weight, "b"), numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zp")]
    graph = helper.make_graph(nodes, f"peak_{kind}", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _best_rate(fn, macs: int, seconds: float) -> float:
    """MAC/s of the fastest call of ``fn`` within ``seconds`` (after two warm-up calls)."""
    fn()
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    calls = 0
    while calls < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return macs / best


def ort_gemm_rate(kind: str, threads: int, seconds: float = 1.0, size: int = GEMM_SIZE) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        _gemm_model(kind, size, size, size).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    if kind == "fp32":
        a = rng.standard_normal((size, size)).astype(np.float32)
    else:
        a = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    return _best_rate(lambda: session.run(None, {"a": a}), size ** 3, seconds)


def numpy_gemm_rate(seconds: float = 1.0, size: int = GEMM_SIZE) -> float:
    """numpy's BLAS uses its own thread pool (all cores unless OPENBLAS_NUM_THREADS is set)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    out = np.empty((size, size), dtype=np.float32)
    return _best_rate(lambda: np.matmul(a, b, out=out), size ** 3, seconds)


def measure_peaks(threads: int, seconds: float = 1.0) -> dict:
    """{'fp32': MAC/s, 'int8': MAC/s, 'kernels': {name: MAC/s}} for this CPU at ``threads``."""
    kernels = {
        "ort_matmul_fp32": ort_gemm_rate("fp32", threads, seconds),
        "numpy_matmul_fp32": numpy_gemm_rate(seconds),
        "ort_matmulinteger_u8s8": ort_gemm_rate("int8", threads, seconds),
    }
    return {
        "fp32": max(kernels["ort_matmul_fp32"], kernels["numpy_matmul_fp32"]),
        "int8": kernels["ort_matmulinteger_u8s8"],
        "kernels": kernels,
        "threads": threads,
        "gemm_size": GEMM_SIZE,
    }


def measure_peaks_job(job: dict) -> dict:
    """Entry point for bench/run.py, which runs it in a process of its own."""
    return measure_peaks(job["threads"], job.get("seconds", 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent per kernel")
    args = parser.parse_args()
    peaks = measure_peaks(args.threads, args.seconds)
    for name, rate in peaks["kernels"].items():
        print(f"{name:28s} {rate / 1e9:8.1f} GMAC/s")
    print(json.dumps({k: peaks[k] for k in ("fp32", "int8", "threads")}))


if __name__ == "__main__":
    main()
