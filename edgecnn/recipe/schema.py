"""The recipe schema: the top-level sections as pydantic models, the validated :class:`Recipe`.

Each stage's config is validated by the class of the code that runs it: a transform's
config class from the pass registry, ``distill``'s from :mod:`edgecnn.train.distill`,
``search``'s from :mod:`edgecnn.search.run`, the
pipeline stages' (export, compile, measure) from the classes below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field

from edgecnn.errors import UserError
from edgecnn.targets import target_names

RECIPE_SCHEMA_VERSION = 1
# Shipped recipes are package data, so a name resolves from an installed package too.
SHIPPED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Stages that are not transform passes: they run in the pipeline itself.
PIPELINE_STAGES = ("distill", "search", "export", "compile", "measure", "ship")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """The model to compress: a zoo name or ``file.py:factory``, its weights and options."""

    name: str
    weights: Optional[str] = Field(None, description="imagenet, a .pth path, or null for the embedded digits baseline")
    options: dict[str, Any] = Field(default_factory=dict)
    preprocess: Optional[Union[str, dict[str, Any]]] = None


class EmbeddedSpec(_Strict):
    """Settings of the embedded digits baseline (used only when ``model.weights`` is null)."""

    input_size: int = Field(48, ge=32, le=224)
    epochs: int = Field(10, ge=1, le=200)
    seed: int = 0
    max_train_images: Optional[int] = Field(None, ge=10)
    max_test_images: Optional[int] = Field(None, ge=10)


class DataSpec(_Strict):
    """Where images come from. Folders of class sub-folders, flat folders or list files."""

    calib: Optional[str] = None
    train: Optional[str] = None
    eval: Optional[str] = None
    calib_images: int = Field(128, ge=1)
    eval_images: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(32, ge=1, le=1024)
    embedded: EmbeddedSpec = Field(default_factory=EmbeddedSpec)


class ExportConfig(_Strict):
    """ONNX export of the final model, one file per target."""

    opset: int = Field(17, ge=13, le=21)
    batch: Union[Literal["dynamic"], int] = 1
    parity: bool = True
    fp16_rest: bool = Field(
        False,
        description="TensorRT targets: the float layers between Q/DQ pairs in float16 with explicit casts "
        "(strongly typed networks); other targets are exported as usual",
    )


class CompileConfig(_Strict):
    """Build a runtime engine where the runtime is installed (TensorRT); ORT needs none."""

    fp16: bool = True
    require: bool = Field(False, description="fail instead of skipping when the runtime is missing")


class MeasureConfig(_Strict):
    """Latency, size and accuracy of every checkpoint (``all``) or only the final model."""

    checkpoints: Literal["all", "final"] = "all"
    latency_runs: int = Field(200, ge=5, le=100000)
    warmup: int = Field(10, ge=0)
    warmup_seconds: float = Field(1.0, ge=0, le=60)
    threads: Optional[int] = Field(None, ge=1)
    plot: bool = True
    warn_drop: float = Field(5.0, ge=0, le=100)  # accuracy points a stage may lose before a warning


class ShipConfig(_Strict):
    """App-ready bundles (edgecnn.ship) of the exported models, one per target, written after the report."""

    targets: Optional[list[str]] = Field(None, description="targets to ship (default: every target of the run)")
    golden: Optional[str] = Field(None, description="golden test image (default: one of the evaluation images)")
    labels: Optional[str] = Field(None, description="class names file when the model carries none")


PIPELINE_CONFIGS: dict[str, type] = {"export": ExportConfig, "compile": CompileConfig, "measure": MeasureConfig,
                                     "ship": ShipConfig}


def available_targets() -> tuple[str, ...]:
    """Target names: the keys of the table in :mod:`edgecnn.targets`."""
    return target_names()


def allowed_stages() -> list[str]:
    from edgecnn.passes.registry import available_passes

    return sorted(set(available_passes()) | set(PIPELINE_STAGES))


def stage_config_class(stage: str) -> type:
    """The pydantic class that validates the config of ``stage``; UserError for unknown stages."""
    if stage in PIPELINE_CONFIGS:
        return PIPELINE_CONFIGS[stage]
    if stage == "distill":
        from edgecnn.train.distill import DistillConfig

        return DistillConfig
    if stage == "search":
        from edgecnn.search.run import SearchConfig

        return SearchConfig
    from edgecnn.passes.registry import available_passes, get_pass

    if stage not in available_passes():
        raise UserError(f"unknown stage '{stage}'; allowed: {', '.join(allowed_stages())}")
    return get_pass(stage).config_cls


class Stage:
    """One entry of ``stages``: a name and its validated config (a pydantic model)."""

    def __init__(self, name: str, config: BaseModel):
        self.name = name
        self.config = config

    @property
    def is_pass(self) -> bool:
        return self.name not in PIPELINE_STAGES

    def to_yaml(self) -> dict:
        return {self.name: self.config.model_dump(mode="json")}

    def __repr__(self) -> str:
        return f"Stage({self.name}, {self.config!r})"


class Recipe:
    """A validated recipe: ``model``, ``data``, ``stages`` (list of :class:`Stage`), ``targets``."""

    def __init__(self, model: ModelSpec, data: DataSpec, stages: list[Stage], targets: list[str], output: Optional[str], source: str, name: Optional[str] = None):
        self.model = model
        self.data = data
        self.stages = stages
        self.targets = targets
        self.output = output
        self.source = source
        self.name = name

    def stage(self, name: str) -> Optional[Stage]:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def embedded(self) -> bool:
        """True when the run uses the embedded digits baseline (no weights given)."""
        return self.model.weights is None

    def to_dict(self) -> dict:
        out = {
            "recipe_version": RECIPE_SCHEMA_VERSION,
            "name": self.name,
            "model": self.model.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "stages": [s.to_yaml() for s in self.stages],
            "targets": list(self.targets),
            "output": self.output,
        }
        if out["name"] is None:
            del out["name"]
        return out

    def to_yaml(self, notes: tuple[str, ...] = ()) -> str:
        """The resolved recipe as YAML; ``notes`` become comment lines under the header."""
        header = "# edgecnn resolved recipe: every default filled in; run it again with\n# edgecnn compress --recipe <this file>\n"
        header += "".join(f"# {note}\n" for note in notes)
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def default_output_dir(recipe: Recipe) -> Path:
    """./edgecnn-out/<model>-<tag>, the tag naming what the stages do (int8, w6a8, p50-int8, ...)."""
    parts = []
    for s in recipe.stages:
        cfg = s.config
        if s.name in ("prune", "channel_prune"):
            parts.append(f"{'c' if s.name == 'channel_prune' else 'p'}{int(round(cfg.density * 100))}" if cfg.density is not None else s.name)
        elif s.name == "shift":
            parts.append("shift")
        elif s.name == "weight_share":
            parts.append("ws")
        elif s.name == "quantize":
            parts.append("int8" if cfg.bits == cfg.activation_bits == 8 else f"w{cfg.bits}a{cfg.activation_bits}")
        elif s.name == "distill":
            parts.append("kd")
        elif s.name == "search":
            parts.append(f"search{cfg.max_drop:g}")
    tag = "-".join(parts) or "fp32"
    name = recipe.model.name.replace("/", "_").replace(":", "_").replace(".py", "")
    return Path("edgecnn-out") / f"{Path(name).name}-{tag}"
