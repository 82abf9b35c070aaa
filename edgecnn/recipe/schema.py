"""The recipe schema: the top-level sections as pydantic models, the validated :class:`Recipe`.

Each stage's config is validated by the class its kind names in
:mod:`edgecnn.recipe.stage_kinds` (a transform's from the pass registry, ``distill``'s from
:mod:`edgecnn.train.distill`, ``search``'s from :mod:`edgecnn.search.run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field

from edgecnn.recipe.stage_kinds import (  # noqa: F401 (the stage configs are part of this module's API)
    STAGE_KINDS, CompileConfig, ExportConfig, MeasureConfig, ShipConfig, kinds_where, stage_kind)
from edgecnn.targets import target_names

RECIPE_SCHEMA_VERSION = 1
# Shipped recipes are package data, so a name resolves from an installed package too.
SHIPPED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


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


# Stages that are not transform passes: they run in the pipeline itself.
PIPELINE_STAGES = kinds_where(lambda kind: not kind.is_pass)


def available_targets() -> tuple[str, ...]:
    """Target names: the keys of the table in :mod:`edgecnn.targets`."""
    return target_names()


def allowed_stages() -> list[str]:
    return sorted(STAGE_KINDS)


def stage_config_class(stage: str) -> type:
    """The pydantic class that validates the config of ``stage``; UserError for unknown stages."""
    return stage_kind(stage).config()


class Stage:
    """One entry of ``stages``: a name and its validated config (a pydantic model)."""

    def __init__(self, name: str, config: BaseModel):
        self.name = name
        self.config = config

    @property
    def is_pass(self) -> bool:
        return stage_kind(self.name).is_pass

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
    parts = [stage_kind(s.name).tag(s.config) for s in recipe.stages]
    tag = "-".join(p for p in parts if p) or "fp32"
    name = recipe.model.name.replace("/", "_").replace(":", "_").replace(".py", "")
    return Path("edgecnn-out") / f"{Path(name).name}-{tag}"
