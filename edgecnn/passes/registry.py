"""The pass registry: each transform is a named mode with a typed config and ordering rules.

A pass is a function ``fn(model, config, ctx) -> nn.Module``, registered under its config
type (:func:`register_pass`): a config object finds its pass (:func:`pass_for`), a recipe's
stage name finds the config type. Recipes and the CLI validate a config against the pass's
pydantic class and check that the order of passes makes sense (``prune`` after
``quantize`` is refused: the grid would no longer hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from edgecnn.errors import UserError

class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class PassReport:
    """What a pass did: a per-layer table plus a few summary numbers for the final report."""

    name: str
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "summary": self.summary, "rows": self.rows}


@dataclass
class PassContext:
    """Everything a pass may need besides the model and its config.

    ``example_input`` is a batch used for tracing; ``calib_batches`` is an iterable of
    input tensors (calibration, sensitivity analysis); ``teacher`` is the unmodified model
    for passes that compare against it.
    """

    example_input: Any = None
    calib_batches: Any = None
    teacher: Any = None
    progress: bool = True
    reports: list[PassReport] = field(default_factory=list)

    def report(self, report: PassReport) -> None:
        self.reports.append(report)


@dataclass
class PassInfo:
    name: str
    fn: Callable
    config_cls: type
    summary: str
    not_after: tuple[str, ...] = ()

    def make_config(self, raw: Optional[dict | PassConfig] = None, where: str = "") -> PassConfig:
        if isinstance(raw, self.config_cls):
            return raw
        try:
            return self.config_cls(**(raw or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}pass '{self.name}' config '{loc}': {err['msg']}") from None


_BY_CONFIG: dict[type, PassInfo] = {}
_BY_NAME: dict[str, type] = {}
_loaded = False


def register_pass(name: str, config: type, summary: str = "", not_after: tuple[str, ...] = ()):
    """Decorator registering ``fn(model, config, ctx) -> model`` under its config type ``config``.

    ``name`` is the stage name recipes use. A config type or a name registered twice is an
    error at import, never a silent replacement.
    """

    def deco(fn):
        if config in _BY_CONFIG or name in _BY_NAME:
            raise ValueError(f"pass '{name}' ({config.__name__}) is registered twice")
        _BY_CONFIG[config] = PassInfo(name, fn, config, summary or (fn.__doc__ or "").strip().split("\n")[0], tuple(not_after))
        _BY_NAME[name] = config
        return fn

    return deco


def _load_all() -> None:
    """Import the modules that register passes (on first lookup, so ``import edgecnn.passes`` stays cheap).

    A plain import: a pass module that fails to import is an error, never a pass that quietly goes missing.
    """
    global _loaded
    if _loaded:
        return
    from edgecnn.passes import channel_prune, fold_bn, prune, quantize, shift, weight_share  # noqa: F401

    _loaded = True


def available_passes() -> list[str]:
    _load_all()
    return sorted(_BY_NAME)


def get_pass(name: str) -> PassInfo:
    """The pass a recipe stage ``name`` runs."""
    _load_all()
    if name not in _BY_NAME:
        raise UserError(f"unknown pass '{name}'; valid passes: {', '.join(sorted(_BY_NAME))}")
    return _BY_CONFIG[_BY_NAME[name]]


def pass_for(config: PassConfig) -> PassInfo:
    """The pass registered under the type of ``config``."""
    _load_all()
    return _BY_CONFIG[type(config)]


def check_order(names: list[str]) -> None:
    """Refuse orders that cannot work, e.g. pruning after quantization."""
    for i, name in enumerate(names):
        info = get_pass(name)
        for earlier in names[:i]:
            if earlier in info.not_after:
                raise UserError(f"pass '{name}' cannot run after '{earlier}'; move it before '{earlier}'")


def run_pass(name: str, model, config=None, ctx: Optional[PassContext] = None):
    """Look up, validate and run one pass; returns the transformed model."""
    info = get_pass(name)
    cfg = info.make_config(config)
    return info.fn(model, cfg, ctx if ctx is not None else PassContext())
