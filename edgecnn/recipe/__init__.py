"""Recipes: one YAML file says which model, which data, which stages in which order, which targets.

A recipe is data, never code (``yaml.safe_load``; nothing is evaluated). :mod:`.schema`
holds the typed sections and the validated :class:`Recipe`; :mod:`.load` reads files,
merges includes and turns every problem into one line; :mod:`.flags` maps the command
line onto the same structure, so every flag is a recipe field and ``recipe.resolved.yaml``
reproduces a run exactly.
"""

from edgecnn.recipe.flags import DEFAULT_STAGES, Flags, apply_flags, recipe_from_flags
from edgecnn.recipe.load import (
    TOP_LEVEL_KEYS,
    deep_merge,
    format_validation_error,
    load_raw,
    load_recipe,
    resolve_recipe_path,
    shipped_recipe_names,
    validate,
)
from edgecnn.recipe.schema import (
    PIPELINE_STAGES,
    RECIPE_SCHEMA_VERSION,
    SHIPPED_RECIPES,
    CompileConfig,
    DataSpec,
    EmbeddedSpec,
    ExportConfig,
    MeasureConfig,
    ModelSpec,
    Recipe,
    ShipConfig,
    Stage,
    allowed_stages,
    available_targets,
    default_output_dir,
    stage_config_class,
)
from edgecnn.recipe.stage_kinds import STAGE_KINDS, StageKind, insert_before, kinds_where, stage_kind

__all__ = [
    "DEFAULT_STAGES", "Flags", "apply_flags", "recipe_from_flags",
    "TOP_LEVEL_KEYS", "deep_merge", "format_validation_error", "load_raw", "load_recipe", "resolve_recipe_path",
    "shipped_recipe_names", "validate",
    "PIPELINE_STAGES", "RECIPE_SCHEMA_VERSION", "SHIPPED_RECIPES", "CompileConfig", "DataSpec",
    "EmbeddedSpec", "ExportConfig", "MeasureConfig", "ModelSpec", "Recipe", "ShipConfig", "Stage", "allowed_stages",
    "available_targets", "default_output_dir", "stage_config_class",
    "STAGE_KINDS", "StageKind", "insert_before", "kinds_where", "stage_kind",
]
