"""TensorRT engine building from ONNX, for TensorRT 10 and 11 (imported lazily; no torch).

The builder configuration is plain data first (:class:`TrtBuildConfig` -> :func:`plan_build`
-> :class:`BuildPlan`), applied to the real ``tensorrt`` objects by the thin
:func:`apply_plan`; so every decision (strongly typed or builder precision flags, DLA with
GPU fallback, 2:4 sparsity, workspace, timing cache) is unit-tested without TensorRT.

TensorRT 11 builds strongly typed networks only: precision comes from the ONNX file (Q/DQ
nodes for INT8, float16 tensors for FP16, see :func:`edgecnn.export.fp16.to_fp16`); the
builder flags FP16/INT8 no longer exist. TensorRT 10 still accepts them (weak typing) or a
strongly typed network when asked.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from edgecnn.errors import UserError
from edgecnn.lazy import lazy_import

INSTALL_HINT = (
    "TensorRT is not installed; on a Jetson it comes with JetPack (apt install nvidia-jetpack, "
    "python3-libnvinfer), on x86 install it from NVIDIA's index: "
    "pip install --extra-index-url https://pypi.nvidia.com tensorrt"
)
_tensorrt = lazy_import("tensorrt", hint=INSTALL_HINT)


@dataclass
class TrtBuildConfig:
    """What the user asked for. ``trt_major`` is the installed TensorRT's major version."""

    trt_major: int = 10
    fp16: bool = False  # TRT 10: BuilderFlag.FP16; TRT 11: refused (convert the ONNX to FP16)
    int8: bool = False  # TRT 10: BuilderFlag.INT8 for a Q/DQ model; TRT 11: implied by Q/DQ
    strongly_typed: Optional[bool] = None  # None: TRT 11 always, TRT 10 when the ONNX has fp16/QDQ only
    sparse: bool = False  # BuilderFlag.SPARSE_WEIGHTS (2:4 structured sparsity, Ampere+/Orin)
    workspace_mb: Optional[int] = None  # MemoryPoolType.WORKSPACE limit
    dla_core: Optional[int] = None  # DeviceType.DLA on this core
    gpu_fallback: bool = True  # BuilderFlag.GPU_FALLBACK when on DLA
    timing_cache: Optional[str] = None
    optimization_level: Optional[int] = None  # builder_optimization_level 0-5 (TRT default 3)
    input_name: str = "input"
    input_shape: Optional[tuple[int, ...]] = None  # (C, H, W) for a dynamic-batch ONNX
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max for a dynamic batch
    detailed_profiling: bool = True  # ProfilingVerbosity.DETAILED: layer info in the engine inspector
    notes: list[str] = field(default_factory=list)  # decisions taken for the user, shown with the build


@dataclass
class BuildPlan:
    """The exact TensorRT calls, as names: what :func:`apply_plan` sets."""

    network_flags: list[str] = field(default_factory=list)  # NetworkDefinitionCreationFlag names
    builder_flags: list[str] = field(default_factory=list)  # BuilderFlag names
    memory_pool_limits: dict[str, int] = field(default_factory=dict)  # MemoryPoolType name -> bytes
    default_device_type: Optional[str] = None  # DeviceType name
    dla_core: Optional[int] = None
    optimization_level: Optional[int] = None
    profiling_verbosity: Optional[str] = None
    timing_cache: Optional[str] = None
    profile_shapes: Optional[dict[str, tuple]] = None  # input -> (min, opt, max)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_build(cfg: TrtBuildConfig) -> BuildPlan:
    """Turn a request into the TensorRT settings, refusing combinations TensorRT would reject."""
    plan = BuildPlan(notes=list(cfg.notes))
    if cfg.trt_major >= 11:
        if cfg.fp16 or cfg.int8:
            precision = "--fp16" if cfg.fp16 else "--int8"
            raise UserError(
                f"TensorRT {cfg.trt_major} has no {precision} builder flag (strongly typed networks only); "
                "export an FP16 ONNX (edgecnn export MODEL --precision fp16) or a Q/DQ INT8 model and compile that"
            )
        if cfg.strongly_typed is False:
            raise UserError(f"TensorRT {cfg.trt_major} builds strongly typed networks only; drop the weak-typing option")
        # Accepted (and ignored) by 11.x; keeping it makes the same plan valid on 10.x too.
        plan.network_flags.append("STRONGLY_TYPED")
    else:
        if cfg.strongly_typed and (cfg.fp16 or cfg.int8):
            raise UserError(
                "a strongly typed network takes its precision from the ONNX file; drop --fp16/--int8 "
                "or build without strong typing"
            )
        if cfg.strongly_typed:
            plan.network_flags.append("STRONGLY_TYPED")
        if cfg.fp16:
            plan.builder_flags.append("FP16")
        if cfg.int8:
            plan.builder_flags.append("INT8")
    if cfg.sparse:
        plan.builder_flags.append("SPARSE_WEIGHTS")
    if cfg.dla_core is not None:
        if cfg.dla_core < 0:
            raise UserError(f"DLA core {cfg.dla_core} is not valid; Jetson Orin/Xavier have cores 0 and 1")
        plan.default_device_type = "DLA"
        plan.dla_core = int(cfg.dla_core)
        if cfg.gpu_fallback:
            plan.builder_flags.append("GPU_FALLBACK")
        else:
            plan.notes.append("no GPU fallback: layers DLA cannot run make the build fail")
        if cfg.trt_major < 11 and not (cfg.fp16 or cfg.int8 or cfg.strongly_typed):
            plan.notes.append("DLA runs FP16/INT8 only: add --fp16 (TensorRT 10) or compile an FP16/Q-DQ ONNX")
    if cfg.workspace_mb is not None:
        if cfg.workspace_mb <= 0:
            raise UserError(f"workspace {cfg.workspace_mb} MB is not valid; give a positive size in MB")
        plan.memory_pool_limits["WORKSPACE"] = int(cfg.workspace_mb) << 20
    if cfg.optimization_level is not None:
        if not 0 <= cfg.optimization_level <= 5:
            raise UserError(f"builder optimization level {cfg.optimization_level} is not valid; choose 0-5")
        plan.optimization_level = int(cfg.optimization_level)
    if cfg.detailed_profiling:
        plan.profiling_verbosity = "DETAILED"
    plan.timing_cache = cfg.timing_cache
    if cfg.input_shape is not None:
        low, opt, high = cfg.batch
        if not 1 <= low <= opt <= high:
            raise UserError(f"batch range {cfg.batch} is not valid; need 1 <= min <= opt <= max")
        shape = tuple(int(d) for d in cfg.input_shape)
        plan.profile_shapes = {cfg.input_name: ((low, *shape), (opt, *shape), (high, *shape))}
    return plan


def import_tensorrt():
    """The ``tensorrt`` module, or UserError with how to install it."""
    return _tensorrt.load()


def tensorrt_version() -> Optional[str]:
    """Installed TensorRT version string without importing it when absent."""
    if not _tensorrt.installed():
        return None
    return getattr(_tensorrt.load(), "__version__", None)


def network_creation_flags(trt, plan: BuildPlan) -> int:
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def apply_plan(trt, builder, config, plan: BuildPlan):
    """Set a ``BuildPlan`` on a real ``IBuilderConfig``; returns the timing cache object or None."""
    for name in plan.builder_flags:
        if not hasattr(trt.BuilderFlag, name):
            raise UserError(f"this TensorRT ({trt.__version__}) has no BuilderFlag.{name}; drop that option")
        config.set_flag(getattr(trt.BuilderFlag, name))
    for pool, size in plan.memory_pool_limits.items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, pool), size)
    if plan.default_device_type:
        config.default_device_type = getattr(trt.DeviceType, plan.default_device_type)
        config.DLA_core = plan.dla_core
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    if plan.profiling_verbosity:
        config.profiling_verbosity = getattr(trt.ProfilingVerbosity, plan.profiling_verbosity)
    if plan.profile_shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in plan.profile_shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    cache = None
    if plan.timing_cache:
        path = Path(plan.timing_cache)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


@dataclass
class BuildResult:
    engine_path: str
    log_path: str
    seconds: float
    engine_bytes: int
    plan: dict
    trt_version: str


def build_engine(onnx_path: Union[str, Path], engine_path: Union[str, Path], cfg: Optional[TrtBuildConfig] = None,
                 overwrite: bool = True, **options) -> BuildResult:
    """Parse ``onnx_path``, build it, write the engine and ``<engine>.log`` atomically.

    Either a full ``cfg`` or :class:`TrtBuildConfig` fields as keywords (``fp16=True``,
    ``int8=True``, ``sparse=True``, ``dla_core=0``, ``workspace_mb=1024``...), which are fitted
    to the ONNX file and the installed TensorRT by :func:`config_for_onnx`.
    """
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file '{onnx_path}' does not exist; check the path")
    if engine_path.exists() and not overwrite:
        raise UserError(f"'{engine_path}' already exists; pass --force to overwrite it")
    major = int(trt.__version__.split(".")[0])
    if cfg is None:
        cfg = config_for_onnx(onnx_path, major, **options)
    cfg.trt_major = major
    plan = plan_build(cfg)
    log_lines: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            log_lines.append(f"[{severity.name}] {msg}")

    logger = _Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse '{onnx_path}': {errors[:400]}")
    config = builder.create_builder_config()
    cache = apply_plan(trt, builder, config, plan)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    log_path = engine_path.with_suffix(engine_path.suffix + ".log")
    _atomic_write(log_path, ("\n".join(log_lines) + "\n").encode())
    if serialized is None:
        raise UserError(f"TensorRT failed to build the engine; see the build log {log_path}")
    data = bytes(serialized)
    _atomic_write(engine_path, data)
    if cache is not None and plan.timing_cache:
        _atomic_write(Path(plan.timing_cache), bytes(cache.serialize()))
    return BuildResult(str(engine_path), str(log_path), seconds, len(data), plan.to_dict(), trt.__version__)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TrtRunner:
    """Inference on a serialized engine through Polygraphy's runner (it owns the CUDA buffers).

    ``run_callable(batch)`` gives the zero-argument function the latency loop times.
    """

    def __init__(self, engine_path: Union[str, Path]):
        import_tensorrt()
        try:
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner as _PolyRunner
        except ImportError:
            raise UserError("running TensorRT engines needs Polygraphy: pip install 'edgecnn[trt]'") from None
        path = Path(engine_path)
        if not path.is_file():
            raise UserError(f"engine '{path}' does not exist; build it with: edgecnn compile MODEL.onnx --backend trt")
        self._runner = _PolyRunner(EngineFromBytes(BytesFromPath(str(path))))
        self._runner.activate()
        meta = self._runner.get_input_metadata()
        self.input_name = next(iter(meta.keys()))
        self.input_shape = list(meta[self.input_name].shape)

    def input_for(self, batch: int, seed: int = 0):
        import numpy as np

        dims = [batch if (i == 0 and (not isinstance(d, int) or d < 0)) else d for i, d in enumerate(self.input_shape)]
        return np.random.default_rng(seed).standard_normal(dims, dtype=np.float32)

    def run(self, batch):
        outputs = self._runner.infer({self.input_name: batch})
        return next(iter(outputs.values()))

    def run_callable(self, batch):
        feed = {self.input_name: batch}
        infer = self._runner.infer
        return lambda: infer(feed)

    def close(self):
        self._runner.deactivate()


def onnx_input_info(onnx_path: Union[str, Path]) -> tuple[str, list, bool]:
    """(name, dims, typed) of the ONNX file's first input; symbolic dims as their names;
    ``typed`` is True when the graph carries its own precision (Q/DQ nodes or float16 weights)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    value = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]
    typed = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node) or any(
        i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer
    )
    return value.name, dims, typed


def config_for_onnx(onnx_path: Union[str, Path], trt_major: int, batch: Sequence[int] = (1, 1, 1), **options) -> TrtBuildConfig:
    """A TrtBuildConfig matching the ONNX file: input name, an optimization profile for a dynamic
    batch, and on TensorRT 10 a strongly typed network for an FP16 or Q/DQ file built without
    precision flags (so its precision is the file's, as on TensorRT 11)."""
    name, dims, typed = onnx_input_info(onnx_path)
    cfg = TrtBuildConfig(trt_major=trt_major, input_name=name, **options)
    if dims and (not isinstance(dims[0], int) or dims[0] <= 0):
        cfg.input_shape = tuple(dims[1:])
        cfg.batch = tuple(batch)
    if cfg.strongly_typed is None and trt_major < 11 and typed and not (cfg.fp16 or cfg.int8):
        cfg.strongly_typed = True
    if trt_major >= 11 and typed and (cfg.fp16 or cfg.int8):
        # The file already carries its precision; on 11.x that is the only way to ask for it.
        cfg.notes.append(
            f"TensorRT {trt_major}: precision comes from the ONNX file's Q/DQ and float16 tensors; "
            "--fp16/--int8 ignored"
        )
        cfg.fp16 = cfg.int8 = False
    return cfg
