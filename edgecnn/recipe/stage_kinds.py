"""The stage kinds: every name a recipe's ``stages`` list may hold, registered once with what
the rest of edgecnn asks about it.

Each kind says which typed config validates it, where it goes in a run (``rank``), which
data it needs, the tag it adds to the default output folder, and whether it runs after the
report. Recipe validation, the CLI flags, the output folder name, the input checks and the
pipeline's stage runners all query this table, so a new kind is added here and nowhere else
(``tests/test_stage_kinds.py`` checks every entry). Transform passes are kinds too: their
config classes and their order among themselves stay in :mod:`edgecnn.passes.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from edgecnn.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


# The data a kind needs: a recipe with that kind and without the data is refused before any work.
Need = Literal["calib", "train", "labelled_eval"]
TRANSFORM = "transform"  # the pipeline stage that runs every pass


@dataclass(frozen=True)
class StageKind:
    """One kind of recipe stage and the facts every part of edgecnn asks about it."""

    name: str
    config: Callable[[], type]  # the config class; a function, as passes, training and search load torch
    rank: int  # position in a run: a stage a flag adds goes before the first stage of a higher rank
    runner: str = TRANSFORM  # the pipeline stage kind that runs it (passes: the transform stage)
    needs: tuple[Need, ...] = ()
    tag: Callable[[BaseModel], Optional[str]] = lambda config: None  # its part of the default output folder name
    after_report: bool = False  # runs once report.json is written (it reads the finished folder)
    repeatable: bool = False  # may appear more than once in a recipe
    searched: bool = False  # a search stage chooses this per layer: a recipe has either this or a search
    searches: bool = False  # chooses the searched kinds per layer itself
    requires: tuple[str, ...] = ()  # kinds that must come before it
    last: bool = False  # only after-report kinds may follow it

    @property
    def is_pass(self) -> bool:
        return self.runner == TRANSFORM

    @property
    def changes_model(self) -> bool:
        """Passes, distillation and search leave a new checkpoint; export and later stages must follow them."""
        return self.rank < EXPORT_RANK


def _pass_config(name: str) -> Callable[[], type]:
    def config() -> type:
        from edgecnn.passes.registry import get_pass

        return get_pass(name).config_cls

    return config


def _distill_config() -> type:
    from edgecnn.train.distill import DistillConfig

    return DistillConfig


def _search_config() -> type:
    from edgecnn.search.run import SearchConfig

    return SearchConfig


def _density_tag(letter: str, name: str) -> Callable[[BaseModel], str]:
    return lambda cfg: f"{letter}{int(round(cfg.density * 100))}" if cfg.density is not None else name


def _quantize_tag(cfg) -> str:
    return "int8" if cfg.bits == cfg.activation_bits == 8 else f"w{cfg.bits}a{cfg.activation_bits}"


EXPORT_RANK = 5
# calib: the passes that calibrate or fine-tune on images, and distillation, when the model has
# real weights; train: distillation's labelled images; labelled_eval: the search's top-1 drop.
STAGE_KINDS: dict[str, StageKind] = {k.name: k for k in (
    StageKind("fold_bn", _pass_config("fold_bn"), rank=0, repeatable=True),
    StageKind("prune", _pass_config("prune"), rank=1, repeatable=True, tag=_density_tag("p", "prune")),
    StageKind("channel_prune", _pass_config("channel_prune"), rank=1, repeatable=True, needs=("calib",), searched=True,
              tag=_density_tag("c", "channel_prune")),
    StageKind("shift", _pass_config("shift"), rank=2, repeatable=True, needs=("calib",), searched=True, tag=lambda cfg: "shift"),
    StageKind("quantize", _pass_config("quantize"), rank=3, repeatable=True, needs=("calib",), searched=True, tag=_quantize_tag),
    StageKind("weight_share", _pass_config("weight_share"), rank=3, repeatable=True, searched=True, tag=lambda cfg: "ws"),
    StageKind("search", _search_config, rank=3, runner="search", needs=("labelled_eval",), searches=True,
              tag=lambda cfg: f"search{cfg.max_drop:g}"),
    StageKind("distill", _distill_config, rank=4, runner="distill", needs=("calib", "train"), repeatable=True,
              tag=lambda cfg: "kd"),
    StageKind("export", lambda: ExportConfig, rank=EXPORT_RANK, runner="export"),
    StageKind("compile", lambda: CompileConfig, rank=6, runner="compile", requires=("export",)),
    StageKind("measure", lambda: MeasureConfig, rank=7, runner="measure", last=True),
    StageKind("ship", lambda: ShipConfig, rank=8, runner="ship", requires=("export",), after_report=True, last=True),
)}


def stage_kind(name: str) -> StageKind:
    """The kind of recipe stage ``name``; one line listing the kinds for an unknown name."""
    if name not in STAGE_KINDS:
        raise UserError(f"unknown stage '{name}'; allowed: {', '.join(sorted(STAGE_KINDS))}")
    return STAGE_KINDS[name]


def kinds_where(test: Callable[[StageKind], bool]) -> tuple[str, ...]:
    """Names of the kinds for which ``test`` holds, in registry order."""
    return tuple(name for name, kind in STAGE_KINDS.items() if test(kind))


def insert_before(name: str) -> tuple[str, ...]:
    """Kinds that a stage ``name`` added by a flag goes before: later ranks that run before the report."""
    rank = stage_kind(name).rank
    return kinds_where(lambda k: k.rank > rank and not k.after_report)
