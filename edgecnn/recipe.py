"""Recipes: one YAML file says which model, which data, which stages in which order, which targets.

A recipe is data, never code (``yaml.safe_load``; nothing is evaluated). It is validated
here against a schema: the top level by the pydantic classes below, each stage's config by
the config class of the pass that runs it (from :mod:`edgecnn.passes.registry`) or of the
pipeline stage (distill/export/compile/measure). Any problem is ONE line naming the file,
the key path and what is allowed. ``include:`` pulls in shared defaults (deep-merged; lists
such as ``stages`` are replaced, not concatenated; cycles are refused).

The CLI builds the same structure from its flags (:func:`recipe_from_flags`), so every
flag is a recipe field and ``recipe.resolved.yaml`` reproduces a run exactly.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecnn.errors import UserError
from edgecnn.targets import DEFAULT_TARGET, check_targets, target_names

RECIPE_SCHEMA_VERSION = 1
SHIPPED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Stages that are not transform passes: they run in the pipeline itself.
PIPELINE_STAGES = ("distill", "export", "compile", "measure")
# Every transform stage edgecnn knows of (a partial build may lack some).
KNOWN_PASS_STAGES = ("fold_bn", "prune", "channel_prune", "shift", "quantize", "weight_share")
# Stage name -> pass name, where they differ (``prune`` with mode channel is its own pass).
STAGE_TO_PASS = {"channel_prune": "channel_prune"}


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


class DistillFallbackConfig(_Strict):
    """Used only when edgecnn.train offers no config class of its own."""

    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


PIPELINE_CONFIGS: dict[str, type] = {"export": ExportConfig, "compile": CompileConfig, "measure": MeasureConfig}


def available_targets() -> tuple[str, ...]:
    """Target names: the keys of the table in :mod:`edgecnn.targets`."""
    return target_names()


def distill_config_class() -> type:
    """The config class of edgecnn.train.distill (same keys as ``edgecnn finetune``), or a minimal fallback."""
    try:
        from edgecnn.train.distill import DistillConfig
    except ImportError:
        return DistillFallbackConfig
    return DistillConfig


def stage_config_class(stage: str) -> type:
    """The pydantic class that validates the config of ``stage``; UserError for unknown stages."""
    if stage in PIPELINE_CONFIGS:
        return PIPELINE_CONFIGS[stage]
    if stage == "distill":
        return distill_config_class()
    from edgecnn.passes.registry import available_passes, get_pass

    if stage not in available_passes():
        allowed = sorted(set(available_passes()) | set(PIPELINE_STAGES))
        raise UserError(f"unknown stage '{stage}'; allowed: {', '.join(allowed)}")
    return get_pass(STAGE_TO_PASS.get(stage, stage)).config_cls


def allowed_stages() -> list[str]:
    from edgecnn.passes.registry import available_passes

    return sorted(set(available_passes()) | set(PIPELINE_STAGES))


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

    def to_yaml(self) -> str:
        header = "# edgecnn resolved recipe: every default filled in; run it again with\n# edgecnn compress --recipe <this file>\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


# ---------------------------------------------------------------------------------------
# Loading

TOP_LEVEL_KEYS = ("include", "recipe_version", "name", "model", "data", "stages", "targets", "output")


def _read_yaml(path: Path, where: str) -> dict:
    if not path.is_file():
        raise UserError(f"{where}recipe file '{path}' not found; pass an existing .yaml file or a shipped recipe name")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}:{pos}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; a recipe is UTF-8 YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a mapping of keys ({', '.join(TOP_LEVEL_KEYS)}), not a {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_recipe_path(ref: str | Path) -> Path:
    """A path, or the name of a shipped recipe (``squeezenet-int8`` -> recipes/squeezenet-int8.yaml)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if not path.suffix and not path.parent.parts:
        shipped = SHIPPED_RECIPES / f"{ref}.yaml"
        if shipped.is_file():
            return shipped
    return path


def load_raw(path: Path, _stack: tuple[Path, ...] = ()) -> dict:
    """The recipe dict with its includes merged in (includes first, the file itself on top)."""
    path = Path(path).expanduser()
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(p.name for p in _stack + (real,))
        raise UserError(f"{_stack[0]}: include cycle {chain}; remove one of these includes")
    where = f"{_stack[-1]}: " if _stack else ""
    data = _read_yaml(path, where)
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise UserError(f"{path}: include: expected a file name or a list of file names")
    merged: dict = {}
    for inc in includes:
        inc_path = Path(inc).expanduser()
        if not inc_path.is_absolute():
            inc_path = path.parent / inc_path
        merged = deep_merge(merged, load_raw(inc_path, _stack + (real,)))
    return deep_merge(merged, data)


def _unwrap(annotation):
    """Optional[X] / Union[X, None] -> X, so that nested models can be walked."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Union and args:
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return annotation


def _allowed_keys(cls: type, loc: tuple) -> Optional[list[str]]:
    """Field names of the model reached by walking ``loc`` (minus its last element) from ``cls``."""
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            return None
        cls = _unwrap(field.annotation)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return None


def format_validation_error(exc: ValidationError, cls: type, prefix: str) -> str:
    """One line: ``<file>: <key.path>: <what is wrong and what is allowed>``."""
    errors = exc.errors()
    # A misspelt key also makes the real key "missing": the unknown key is the useful line.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(cls, loc)
        msg = f"unknown key '{loc[-1]}'" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"]
        if "input" in err and not isinstance(err["input"], (dict, list)) and "got" not in msg:
            msg += f" (got {err['input']!r})"
    return f"{prefix}{path}: {msg}"


def _parse_stage(entry: Any, index: int, prefix: str) -> Stage:
    where = f"stages[{index}]"
    if isinstance(entry, str):
        name, raw = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, raw = next(iter(entry.items()))
        raw = {} if raw is None else raw
    elif isinstance(entry, dict) and "name" in entry:
        raw = {k: v for k, v in entry.items() if k != "name"}
        name = entry["name"]
    else:
        raise UserError(f"{prefix}{where}: a stage is a name ('- fold_bn') or one mapping ('- quantize: {{bits: 8}}'); got {entry!r}")
    if not isinstance(name, str):
        raise UserError(f"{prefix}{where}: stage name must be a string, got {name!r}")
    if not isinstance(raw, dict):
        raise UserError(f"{prefix}{where}.{name}: the config must be a mapping of keys, got {raw!r}")
    allowed = allowed_stages()
    if name in KNOWN_PASS_STAGES and name not in allowed:
        raise UserError(f"{prefix}{where}: stage {name} is not available in this build (no edgecnn.passes.{name} pass registered)")
    if name not in allowed:
        raise UserError(f"{prefix}{where}: unknown stage '{name}'; allowed: {', '.join(allowed)}")
    cls = stage_config_class(name)
    try:
        config = cls(**raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, cls, f"{prefix}{where}.{name}.")) from None
    except TypeError as exc:  # e.g. keys that are not strings
        raise UserError(f"{prefix}{where}.{name}: {exc}") from None
    return Stage(name, config)


def _check_stage_order(stages: list[Stage], prefix: str) -> None:
    """Passes in an order the registry accepts; export before compile, measure last; no repeats of those."""
    from edgecnn.passes.registry import check_order

    names = [s.name for s in stages]
    for fixed in PIPELINE_STAGES:
        if names.count(fixed) > 1 and fixed != "distill":
            raise UserError(f"{prefix}stages: '{fixed}' appears {names.count(fixed)} times; keep one")
    model_changing = [i for i, s in enumerate(stages) if s.is_pass or s.name == "distill"]
    for later in ("export", "compile", "measure"):
        if later in names and model_changing and names.index(later) < model_changing[-1]:
            raise UserError(f"{prefix}stages: '{later}' must come after every transform; '{names[model_changing[-1]]}' follows it")
    if "compile" in names and "export" not in names:
        raise UserError(f"{prefix}stages: 'compile' needs an 'export' stage before it")
    if "compile" in names and names.index("compile") < names.index("export"):
        raise UserError(f"{prefix}stages: 'compile' must come after 'export'")
    if "measure" in names and names.index("measure") != len(names) - 1:
        raise UserError(f"{prefix}stages: 'measure' must be the last stage")
    try:
        check_order([STAGE_TO_PASS.get(s.name, s.name) for s in stages if s.is_pass])
    except UserError as exc:
        raise UserError(f"{prefix}stages: {exc}") from None


def validate(raw: dict, source: str = "<recipe>") -> Recipe:
    """Validate a merged recipe dict; every problem is one UserError line starting with ``source``."""
    prefix = f"{source}: "
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise UserError(f"{prefix}{unknown[0]}: unknown key; allowed keys: {', '.join(TOP_LEVEL_KEYS)}")
    if raw.get("recipe_version", RECIPE_SCHEMA_VERSION) != RECIPE_SCHEMA_VERSION:
        raise UserError(f"{prefix}recipe_version: {raw['recipe_version']!r} is not supported; this edgecnn reads version {RECIPE_SCHEMA_VERSION}")
    if "model" not in raw:
        raise UserError(f"{prefix}model: required key is missing; give at least 'model: {{name: squeezenet}}'")
    model_raw = raw["model"]
    if isinstance(model_raw, str):
        model_raw = {"name": model_raw}
    sections = {}
    for key, cls, value in (("model", ModelSpec, model_raw), ("data", DataSpec, raw.get("data") or {})):
        if not isinstance(value, dict):
            raise UserError(f"{prefix}{key}: expected a mapping of keys, got {value!r}")
        try:
            sections[key] = cls(**value)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, cls, f"{prefix}{key}.")) from None
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise UserError(f"{prefix}stages: expected a non-empty list of stages, e.g. [fold_bn, {{quantize: {{}}}}, export, measure]")
    stages = [_parse_stage(entry, i, prefix) for i, entry in enumerate(stages_raw)]
    _check_stage_order(stages, prefix)
    targets = raw.get("targets", [DEFAULT_TARGET])
    if isinstance(targets, str):
        targets = [targets]
    allowed_targets = available_targets()
    if not isinstance(targets, list) or not targets:
        raise UserError(f"{prefix}targets: expected a list of targets from: {', '.join(allowed_targets)}")
    check_targets(targets, f"{prefix}targets")
    if len(set(targets)) != len(targets):
        raise UserError(f"{prefix}targets: a target is listed twice")
    _simulate_first_target(stages, targets)
    output = raw.get("output")
    if output is not None and not isinstance(output, str):
        raise UserError(f"{prefix}output: expected a folder path, got {output!r}")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise UserError(f"{prefix}name: expected a string, got {name!r}")
    return Recipe(sections["model"], sections["data"], stages, list(targets), output, source, name)


def _simulate_first_target(stages: list[Stage], targets: list[str]) -> None:
    """A quantize stage that names no ``target`` simulates the first deployment target's encoding."""
    for stage in stages:
        cfg = stage.config
        if stage.name == "quantize" and "target" in type(cfg).model_fields and "target" not in cfg.model_fields_set:
            try:
                cfg.target = targets[0]
            except ValidationError:  # a target the quantizer cannot simulate keeps its default
                pass


def load_recipe(ref: str | Path) -> Recipe:
    """Read, merge includes and validate a recipe file (or a shipped recipe name)."""
    path = resolve_recipe_path(ref)
    return validate(load_raw(path), str(path))


# ---------------------------------------------------------------------------------------
# Flags -> recipe

DEFAULT_STAGES = ["fold_bn", "quantize", "export", "measure"]


def quantize_config_for_bits(bits: int) -> dict:
    """The quantize-pass config for ``--bits N``: N-bit weights, 8-bit activations (wNa8)."""
    cls = stage_config_class("quantize")
    fields = cls.model_fields
    for name in ("weight_bits", "w_bits", "bits"):
        if name in fields:
            return {name: bits}
    raise UserError("this build's quantize pass has no bit-width setting; use a recipe")


def prune_stage_for(density: float, mode: str) -> tuple[str, dict]:
    """(stage name, config) for ``--prune D --prune-mode M``."""
    if mode == "channel":
        stage = "channel_prune"
    else:
        stage = "prune"
    cls = stage_config_class(stage)
    fields = cls.model_fields
    cfg: dict = {}
    for name in ("density", "keep", "ratio"):
        if name in fields:
            cfg[name] = density
            break
    else:
        raise UserError(f"this build's {stage} pass has no density setting; use a recipe")
    if stage == "prune":
        for name in ("mode", "pattern", "method"):
            if name in fields:
                cfg[name] = mode
                break
    return stage, cfg


def _set_stage(stages: list, name: str, cfg: dict, before: tuple[str, ...]) -> list:
    """Update ``name``'s config in a raw stage list, or insert it before the first of ``before``."""
    out = []
    found = False
    for entry in stages:
        entry_name = entry if isinstance(entry, str) else next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else None
        if entry_name == name:
            old = {} if isinstance(entry, str) else (entry[name] or {})
            out.append({name: {**old, **cfg}})
            found = True
        else:
            out.append(entry)
    if not found:
        names = [e if isinstance(e, str) else next(iter(e)) for e in out]
        pos = next((i for i, n in enumerate(names) if n in before), len(out))
        out.insert(pos, {name: cfg})
    return out


def recipe_from_flags(
    base: Optional[dict],
    model: Optional[str] = None,
    options: Optional[dict] = None,
    weights: Optional[str] = None,
    bits: Optional[int] = None,
    prune: Optional[float] = None,
    prune_mode: Optional[str] = None,
    shift: bool = False,
    calib: Optional[str] = None,
    data: Optional[str] = None,
    targets: Optional[list[str]] = None,
    output: Optional[str] = None,
) -> dict:
    """The raw recipe dict for the compress flags, on top of ``base`` (a loaded recipe) if any.

    Every flag overrides the matching recipe field; flags not given leave the recipe alone.
    """
    raw = copy.deepcopy(base) if base else {"model": {}, "stages": list(DEFAULT_STAGES), "targets": [DEFAULT_TARGET]}
    raw.setdefault("model", {})
    if isinstance(raw["model"], str):
        raw["model"] = {"name": raw["model"]}
    if model:
        if base and raw["model"].get("name") not in (None, model):
            raw["model"]["options"] = {}
        raw["model"]["name"] = model
    if options:
        raw["model"]["options"] = {**(raw["model"].get("options") or {}), **options}
    if weights is not None:
        raw["model"]["weights"] = weights
    stages = raw.get("stages") or list(DEFAULT_STAGES)
    if not isinstance(stages, list):  # left for validate() to report
        return raw
    if prune is not None:
        stage, cfg = prune_stage_for(prune, prune_mode or "unstructured")
        stages = _set_stage(stages, stage, cfg, ("shift", "quantize", "weight_share", "distill", "export", "compile", "measure"))
    elif prune_mode is not None:
        raise UserError("--prune-mode needs --prune D (the density to keep, e.g. --prune 0.5)")
    if shift:
        stages = _set_stage(stages, "shift", {}, ("quantize", "weight_share", "distill", "export", "compile", "measure"))
    if bits is not None:
        stages = _set_stage(stages, "quantize", quantize_config_for_bits(bits), ("weight_share", "distill", "export", "compile", "measure"))
    raw["stages"] = stages
    data_raw = dict(raw.get("data") or {})
    if calib is not None:
        data_raw["calib"] = calib
    if data is not None:
        data_raw["eval"] = data
    if data_raw:
        raw["data"] = data_raw
    if targets:
        raw["targets"] = list(targets)
    if output is not None:
        raw["output"] = output
    return raw


def default_output_dir(recipe: Recipe) -> Path:
    """./edgecnn-out/<model>-<tag>, the tag naming what the stages do (int8, w6a8, p50-int8, ...)."""
    parts = []
    for s in recipe.stages:
        cfg = s.config.model_dump()
        if s.name in ("prune", "channel_prune"):
            d = next((cfg[k] for k in ("density", "keep", "ratio") if isinstance(cfg.get(k), (int, float))), None)
            parts.append(f"{'c' if s.name == 'channel_prune' else 'p'}{int(round(d * 100))}" if d is not None else s.name)
        elif s.name == "shift":
            parts.append("shift")
        elif s.name == "weight_share":
            parts.append("ws")
        elif s.name == "quantize":
            wb = next((cfg[k] for k in ("weight_bits", "w_bits", "bits") if k in cfg), 8)
            ab = next((cfg[k] for k in ("act_bits", "activation_bits", "a_bits") if k in cfg), 8)
            parts.append("int8" if wb == ab == 8 else f"w{wb}a{ab}")
        elif s.name == "distill":
            parts.append("kd")
    tag = "-".join(parts) or "fp32"
    name = recipe.model.name.replace("/", "_").replace(":", "_").replace(".py", "")
    return Path("edgecnn-out") / f"{Path(name).name}-{tag}"
