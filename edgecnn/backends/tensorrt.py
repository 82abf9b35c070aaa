"""TensorRT engine building from ONNX, for TensorRT 8.5, 8.6, 10.x and 11.x (imported lazily; no torch).

The builder configuration is plain data first (:class:`TrtBuildConfig` -> :func:`plan_build`
-> :class:`BuildPlan`), applied to the real ``tensorrt`` objects by the thin
:func:`apply_plan`; every name a plan uses is checked in the tests against a manifest of the
TensorRT Python API per release (tests/data/trt_api_manifest.json, from NVIDIA's binding
sources and wheels), so a plan is right for its version without TensorRT installed.

What differs by version (the plan is chosen from ``tensorrt.__version__``):

* 8.5 / 8.6 (JetPack 5.1 / 6.0): the ONNX parser needs ``EXPLICIT_BATCH``; no strong
  typing, so a Q/DQ network needs ``BuilderFlag.INT8`` (plus ``FP16`` for the layers Q/DQ
  leave in float); 8.5 has no ``builder_optimization_level``.
* 10.x (JetPack 6.1/6.2: 10.3): explicit batch implied; a file with float16 tensors builds
  ``STRONGLY_TYPED``, a Q/DQ file with a float32 rest gets INT8 + FP16 as on 8.x.
* 11.x: strongly typed only (``STRONGLY_TYPED`` deprecated, always on; no FP16/INT8 flags).
"""

from __future__ import annotations

import json
import re
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
COVERED = "8.5, 8.6 (JetPack 5.1, 6.0), 10.x (JetPack 6.1/6.2: 10.3) and 11.x"


def parse_trt_version(version: Union[str, int, tuple]) -> tuple[int, int]:
    """(major, minor) of a TensorRT version ('8.6.2.3', '10.3', '11', 10), refusing uncovered ones."""
    if isinstance(version, tuple):
        major, minor = int(version[0]), int(version[1])
    else:
        m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:[.\w+-]*)\s*", str(version))
        if not m:
            raise UserError(f"'{version}' is not a TensorRT version; give one like 8.6 or 10.3")
        major, minor = int(m.group(1)), int(m.group(2) or 0)
        if major == 8 and m.group(2) is None:
            raise UserError("TensorRT 8 needs its minor version (8.5 or 8.6): they build differently")
    if not ((major == 8 and minor in (5, 6)) or major in (10, 11)):
        raise UserError(f"TensorRT {major}.{minor} is not covered; edgecnn builds for TensorRT {COVERED}")
    return major, minor


@dataclass
class TrtBuildConfig:
    """What the user asked for, for one TensorRT release (``trt_version``, e.g. '10.3')."""

    trt_version: str = "10.3"
    fp16: Optional[bool] = None  # None: FP16 for the float rest of a Q/DQ file on 8.x/10.x
    int8: bool = False  # 8.x/10.x: BuilderFlag.INT8 (implied by a Q/DQ file); 11.x: refused
    strongly_typed: Optional[bool] = None  # None: 11.x always; 10.x when the file has float16 tensors
    qdq: bool = False  # the ONNX file has Q/DQ nodes (set by config_for_onnx)
    fp16_tensors: bool = False  # the ONNX file has float16 weights/casts (set by config_for_onnx)
    opset: Optional[int] = None  # the ONNX file's default-domain opset (set by config_for_onnx)
    sparse: bool = False  # BuilderFlag.SPARSE_WEIGHTS (2:4 structured sparsity, Ampere+/Orin)
    workspace_mb: Optional[int] = None  # MemoryPoolType.WORKSPACE limit
    dla_core: Optional[int] = None  # DeviceType.DLA on this core
    gpu_fallback: bool = True  # BuilderFlag.GPU_FALLBACK when on DLA
    timing_cache: Optional[str] = None
    optimization_level: Optional[int] = None  # builder_optimization_level 0-5 (8.6+; TRT default 3)
    input_name: str = "input"
    input_shape: Optional[tuple[int, ...]] = None  # (C, H, W) for a dynamic-batch ONNX
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max for a dynamic batch
    detailed_profiling: bool = True  # ProfilingVerbosity.DETAILED: layer info in the engine inspector
    notes: list[str] = field(default_factory=list)  # decisions taken for the user, shown with the build

    @property
    def series(self) -> tuple[int, int]:
        return parse_trt_version(self.trt_version)

    @property
    def trt_major(self) -> int:
        return self.series[0]


@dataclass
class BuildPlan:
    """The exact TensorRT calls, as names: what :func:`apply_plan` sets."""

    trt_version: str = ""
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


def _precision(cfg: TrtBuildConfig, plan: BuildPlan, major: int, minor: int) -> None:
    """Network flags and precision builder flags for one release."""
    typed_file = cfg.qdq or cfg.fp16_tensors
    if major >= 11:
        if cfg.strongly_typed is False:
            raise UserError(f"TensorRT {major} builds strongly typed networks only; drop --weakly-typed")
        if cfg.fp16 or cfg.int8:
            if not typed_file:
                precision = "--fp16" if cfg.fp16 else "--int8"
                raise UserError(
                    f"TensorRT {major} has no {precision} builder flag (strongly typed networks only); export an "
                    "FP16 ONNX (edgecnn export MODEL --precision fp16) or a Q/DQ INT8 model and compile that")
            plan.notes.append(f"TensorRT {major}: precision comes from the ONNX file's Q/DQ and float16 tensors; "
                              "--fp16/--int8 ignored")
        if cfg.qdq and not cfg.fp16_tensors:
            plan.notes.append(f"TensorRT {major}: the float layers of this Q/DQ file run in FP32; export it with "
                              "FP16 for the rest to run them in FP16")
        return  # strong typing is the only mode; STRONGLY_TYPED is deprecated (always on)
    if major == 8:
        plan.network_flags.append("EXPLICIT_BATCH")  # the 8.x ONNX parser rejects implicit-batch networks
        if cfg.strongly_typed:
            raise UserError(f"TensorRT {major}.{minor} has no strongly typed networks (added in 10.0); "
                            "drop --strongly-typed")
        strongly_typed = False
    else:
        strongly_typed = cfg.strongly_typed if cfg.strongly_typed is not None else cfg.fp16_tensors
    if strongly_typed:
        if cfg.fp16 or cfg.int8:
            raise UserError("a strongly typed network takes its precision from the ONNX file; drop --fp16/--int8 "
                            "or build without strong typing (--weakly-typed)")
        plan.network_flags.append("STRONGLY_TYPED")
        return
    fp16 = cfg.fp16 if cfg.fp16 is not None else typed_file
    if fp16:
        plan.builder_flags.append("FP16")
    if cfg.int8 or cfg.qdq:
        plan.builder_flags.append("INT8")  # Q/DQ layers run in int8 only with this flag before strong typing
    if major == 10 and minor >= 12 and plan.builder_flags:
        plan.notes.append(f"TensorRT {major}.{minor} deprecates the FP16/INT8 builder flags (weak typing); a Q/DQ "
                          "export with FP16 for the rest builds strongly typed instead, as on TensorRT 11")
    if cfg.qdq and cfg.fp16 is None:
        plan.notes.append("Q/DQ file: INT8 for the quantized layers, FP16 for the rest (as NVIDIA's quantizer "
                          "deploys it); --no-fp16 keeps the rest in FP32")


def plan_build(cfg: TrtBuildConfig) -> BuildPlan:
    """Turn a request into the TensorRT settings of its release, refusing what that release lacks."""
    major, minor = cfg.series
    plan = BuildPlan(trt_version=f"{major}.{minor}", notes=list(cfg.notes))
    if major == 8 and cfg.opset is not None and cfg.opset > 17:
        raise UserError(f"TensorRT {major}.{minor} reads ONNX opset 17 at most and this file is opset {cfg.opset}; "
                        "export with --opset 17 (an opset-19 Q/DQ file from another quantizer needs TensorRT 10+)")
    _precision(cfg, plan, major, minor)
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
        if not (set(plan.builder_flags) & {"FP16", "INT8"} or cfg.qdq or cfg.fp16_tensors):
            plan.notes.append("DLA runs FP16/INT8 only: add --fp16 (TensorRT 8.x/10.x) or compile an FP16/Q-DQ ONNX")
    if cfg.workspace_mb is not None:
        if cfg.workspace_mb <= 0:
            raise UserError(f"workspace {cfg.workspace_mb} MB is not valid; give a positive size in MB")
        plan.memory_pool_limits["WORKSPACE"] = int(cfg.workspace_mb) << 20
    if cfg.optimization_level is not None:
        if (major, minor) < (8, 6):
            raise UserError(f"TensorRT {major}.{minor} has no builder optimization level (added in 8.6); "
                            "drop --builder-opt-level")
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


def engine_info_path(engine_path: Union[str, Path]) -> Path:
    """``<engine>.json``: the input name and shapes an engine was built for, for ``bench --trtexec``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def build_engine(onnx_path: Union[str, Path], engine_path: Union[str, Path], cfg: Optional[TrtBuildConfig] = None,
                 overwrite: bool = True, **options) -> BuildResult:
    """Parse ``onnx_path``, build it, write the engine, ``<engine>.log`` and ``<engine>.json`` atomically.

    Either a full ``cfg`` or :class:`TrtBuildConfig` fields as keywords (``fp16=True``,
    ``sparse=True``, ``dla_core=0``, ``workspace_mb=1024``...), which are fitted to the ONNX
    file and the installed TensorRT by :func:`config_for_onnx`.
    """
    from edgecnn.fileio import write_bytes_atomic, write_text_atomic

    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file '{onnx_path}' does not exist; check the path")
    if engine_path.exists() and not overwrite:
        raise UserError(f"'{engine_path}' already exists; pass --force to overwrite it")
    if cfg is None:
        cfg = config_for_onnx(onnx_path, trt.__version__, **options)
    cfg.trt_version = trt.__version__
    plan = plan_build(cfg)
    log_lines: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            log_lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

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
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(log_path, "\n".join(log_lines) + "\n")
    if serialized is None:
        raise UserError(f"TensorRT failed to build the engine; see the build log {log_path}")
    data = bytes(serialized)
    write_bytes_atomic(engine_path, data)
    if cache is not None and plan.timing_cache:
        write_bytes_atomic(Path(plan.timing_cache), bytes(cache.serialize()))
    info = {"input_name": cfg.input_name, "input_shape": list(cfg.input_shape) if cfg.input_shape else None,
            "profile_shapes": plan.profile_shapes, "trt_version": trt.__version__, "onnx": str(onnx_path)}
    write_text_atomic(engine_info_path(engine_path), json.dumps(info) + "\n")
    return BuildResult(str(engine_path), str(log_path), seconds, len(data), plan.to_dict(), trt.__version__)


def engine_input(engine_path: Union[str, Path]) -> Optional[dict]:
    """``{"name", "opt_shape", "dynamic"}`` of an engine's input from its ``.json`` written at build time;
    None when there is none (an engine built elsewhere)."""
    info_path = engine_info_path(engine_path)
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    profiles = info.get("profile_shapes") or {}
    if profiles:
        name, (_, opt, _) = next(iter(profiles.items()))
        return {"name": name, "opt_shape": list(opt), "max_batch": profiles[name][2][0], "dynamic": True}
    return {"name": info.get("input_name"), "opt_shape": None, "dynamic": False}


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


def onnx_input_info(onnx_path: Union[str, Path]) -> dict:
    """The ONNX file's first input (``name``, ``dims`` with symbolic dims as their names) and whether
    it states its own precision: ``qdq`` (Q/DQ nodes), ``fp16`` (float16 initializers or casts)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    value = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in model.graph.node
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"name": value.name, "dims": dims, "qdq": qdq, "fp16": fp16, "opset": opset}


def config_for_onnx(onnx_path: Union[str, Path], trt_version: Union[str, int], batch: Sequence[int] = (1, 1, 1),
                    **options) -> TrtBuildConfig:
    """A TrtBuildConfig matching the ONNX file and the TensorRT release: input name, an
    optimization profile for a dynamic batch, and what the file says about its precision."""
    info = onnx_input_info(onnx_path)
    cfg = TrtBuildConfig(trt_version=str(trt_version), input_name=info["name"], qdq=info["qdq"],
                         fp16_tensors=info["fp16"], opset=info["opset"], **options)
    parse_trt_version(cfg.trt_version)  # refuse an uncovered release before anything else
    dims = info["dims"]
    if dims and (not isinstance(dims[0], int) or dims[0] <= 0):
        cfg.input_shape = tuple(dims[1:])
        cfg.batch = tuple(batch)
    return cfg
