"""Reading recipes: YAML (data only), includes, validation, one-line errors.

``include:`` pulls in shared defaults (deep-merged; lists such as ``stages`` are replaced,
not concatenated; cycles are refused). Any problem is ONE line naming the file, the key
path and what is allowed.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from edgecnn.errors import UserError
from edgecnn.targets import DEFAULT_TARGET, check_targets, get_target, resolve_target_name
from edgecnn.recipe.schema import (
    RECIPE_SCHEMA_VERSION,
    SHIPPED_RECIPES,
    DataSpec,
    ModelSpec,
    Recipe,
    Stage,
    allowed_stages,
    available_targets,
    stage_config_class,
)
from edgecnn.recipe.stage_kinds import kinds_where, stage_kind

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


def shipped_recipe_names() -> list[str]:
    """Names of the shipped recipes (``_``-prefixed files are include fragments, not recipes)."""
    return sorted(p.stem for p in SHIPPED_RECIPES.glob("*.yaml") if not p.name.startswith("_"))


def resolve_recipe_path(ref: str | Path) -> Path:
    """A path, or the name of a shipped recipe (``squeezenet-int8`` -> edgecnn/recipes/squeezenet-int8.yaml)."""
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


def stage_entry(entry: Any) -> tuple[Any, Any]:
    """(name, raw config) of one raw ``stages`` entry; (None, None) when it has no recognisable form."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, raw = next(iter(entry.items()))
        return name, {} if raw is None else raw
    if isinstance(entry, dict) and "name" in entry:
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    return None, None


def _parse_stage(entry: Any, index: int, prefix: str) -> Stage:
    where = f"stages[{index}]"
    name, raw = stage_entry(entry)
    if name is None:
        raise UserError(f"{prefix}{where}: a stage is a name ('- fold_bn') or one mapping ('- quantize: {{bits: 8}}'); got {entry!r}")
    if not isinstance(name, str):
        raise UserError(f"{prefix}{where}: stage name must be a string, got {name!r}")
    if not isinstance(raw, dict):
        raise UserError(f"{prefix}{where}.{name}: the config must be a mapping of keys, got {raw!r}")
    allowed = allowed_stages()
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
    """Passes in an order the registry accepts, the other kinds where their entries in
    :mod:`edgecnn.recipe.stage_kinds` put them; no repeats of kinds that run once."""
    from edgecnn.passes.registry import check_order

    names = [s.name for s in stages]
    kinds = [stage_kind(n) for n in names]
    for kind in dict.fromkeys(kinds):
        if names.count(kind.name) > 1 and not kind.repeatable:
            raise UserError(f"{prefix}stages: '{kind.name}' appears {names.count(kind.name)} times; keep one")
    model_changing = [i for i, k in enumerate(kinds) if k.changes_model]
    searching = [k.name for k in kinds if k.searches]
    chosen_by_search = [k.name for k in kinds if k.searched]
    if searching and chosen_by_search:
        raise UserError(f"{prefix}stages: '{searching[0]}' chooses precision, channel pruning and shift per layer itself; "
                        f"remove '{chosen_by_search[0]}' (or the search stage)")
    for i, kind in enumerate(kinds):
        if not kind.changes_model and not kind.after_report and model_changing and i < model_changing[-1]:
            raise UserError(f"{prefix}stages: '{kind.name}' must come after every transform; '{names[model_changing[-1]]}' follows it")
    after_report = kinds_where(lambda k: k.after_report)
    for i, kind in enumerate(kinds):
        if kind.after_report and (i != len(names) - 1 or any(r not in names[:i] for r in kind.requires)):
            raise UserError(f"{prefix}stages: '{kind.name}' must be the last stage, after '{', '.join(kind.requires)}'")
        for required in () if kind.after_report else kind.requires:
            if required not in names:
                raise UserError(f"{prefix}stages: '{kind.name}' needs an '{required}' stage before it")
            if names.index(required) > i:
                raise UserError(f"{prefix}stages: '{kind.name}' must come after '{required}'")
        followers = [n for n in names[i + 1:] if n not in after_report]
        if kind.last and not kind.after_report and followers:
            raise UserError(f"{prefix}stages: '{kind.name}' must be the last stage (only '{', '.join(after_report)}' may follow it)")
    try:
        check_order([s.name for s in stages if s.is_pass])
    except UserError as exc:
        raise UserError(f"{prefix}stages: {exc}") from None


def _validate_sections(raw: dict, prefix: str) -> tuple[ModelSpec, DataSpec]:
    if "model" not in raw:
        raise UserError(f"{prefix}model: required key is missing; give at least 'model: {{name: squeezenet}}'")
    model_raw = raw["model"]
    if isinstance(model_raw, str):
        model_raw = {"name": model_raw}
    sections = []
    for key, cls, value in (("model", ModelSpec, model_raw), ("data", DataSpec, raw.get("data") or {})):
        if not isinstance(value, dict):
            raise UserError(f"{prefix}{key}: expected a mapping of keys, got {value!r}")
        try:
            sections.append(cls(**value))
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, cls, f"{prefix}{key}.")) from None
    return sections[0], sections[1]


def _validate_targets(raw: dict, prefix: str) -> list[str]:
    targets = raw.get("targets", [DEFAULT_TARGET])
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise UserError(f"{prefix}targets: expected a list of targets from: {', '.join(available_targets())}")
    # A family ("x86") names the target for this host's CPU class (edgecnn.targets.resolve_target_name).
    targets = check_targets([resolve_target_name(t) if isinstance(t, str) else t for t in targets], f"{prefix}targets")
    if len(set(targets)) != len(targets):
        raise UserError(f"{prefix}targets: a target is listed twice")
    return list(targets)


def _simulate_first_target(stages: list[Stage], targets: list[str], prefix: str) -> None:
    """A quantize (or search) stage that names no ``target`` simulates the first deployment target's encoding."""
    for i, stage in enumerate(stages):
        if stage.name in ("quantize", "search") and "target" not in stage.config.model_fields_set:
            try:
                stage.config.target = targets[0]
            except ValidationError as exc:
                raise UserError(f"{prefix}stages[{i}].{stage.name}.target: cannot simulate the first target {targets[0]!r} "
                                f"({exc.errors()[0]['msg']}); set quantize.target or list another target first") from None


def _check_shippable(stages: list[Stage], targets: list[str], prefix: str) -> None:
    """A ship stage for a target with no bundle kind is refused before any work."""
    for i, stage in enumerate(stages):
        if stage.name != "ship":
            continue
        for name in stage.config.targets or targets:
            refusal = get_target(name).ship_refusal() if name in targets else None
            if refusal:
                raise UserError(f"{prefix}stages[{i}].ship: {refusal}; or list the targets to ship in ship.targets")


def validate(raw: dict, source: str = "<recipe>") -> Recipe:
    """Validate a merged recipe dict; every problem is one UserError line starting with ``source``."""
    prefix = f"{source}: "
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise UserError(f"{prefix}{unknown[0]}: unknown key; allowed keys: {', '.join(TOP_LEVEL_KEYS)}")
    if raw.get("recipe_version", RECIPE_SCHEMA_VERSION) != RECIPE_SCHEMA_VERSION:
        raise UserError(f"{prefix}recipe_version: {raw['recipe_version']!r} is not supported; this edgecnn reads version {RECIPE_SCHEMA_VERSION}")
    model, data = _validate_sections(raw, prefix)
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise UserError(f"{prefix}stages: expected a non-empty list of stages, e.g. [fold_bn, {{quantize: {{}}}}, export, measure]")
    stages = [_parse_stage(entry, i, prefix) for i, entry in enumerate(stages_raw)]
    _check_stage_order(stages, prefix)
    targets = _validate_targets(raw, prefix)
    _simulate_first_target(stages, targets, prefix)
    _check_shippable(stages, targets, prefix)
    output = raw.get("output")
    if output is not None and not isinstance(output, str):
        raise UserError(f"{prefix}output: expected a folder path, got {output!r}")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise UserError(f"{prefix}name: expected a string, got {name!r}")
    return Recipe(model, data, stages, targets, output, source, name)


def load_recipe(ref: str | Path) -> Recipe:
    """Read, merge includes and validate a recipe file (or a shipped recipe name)."""
    path = resolve_recipe_path(ref)
    return validate(load_raw(path), str(path))
