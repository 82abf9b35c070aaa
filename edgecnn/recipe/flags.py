"""Command-line flags -> recipe: every ``edgecnn compress`` flag is a recipe field.

On top of a recipe (``--recipe``), a flag overrides the matching field of the stage the
recipe already has; it adds a stage only where the recipe has none of that kind, so a flag
never adds a stage that conflicts with the recipe. Each such decision is written as a note
(shown by ``--print-recipe`` and ``--dry-run``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

from edgecnn.errors import UserError
from edgecnn.recipe.load import stage_entry
from edgecnn.recipe.stage_kinds import insert_before, kinds_where
from edgecnn.targets import DEFAULT_TARGET

DEFAULT_STAGES = ["fold_bn", "quantize", "export", "measure"]


@dataclass
class Flags:
    """The recipe-shaping flags of ``edgecnn compress``; None (or False) means not given."""

    model: Optional[str] = None
    options: Optional[dict] = None
    weights: Optional[str] = None
    bits: Optional[int] = None
    prune: Optional[float] = None
    prune_mode: Optional[str] = None
    shift: bool = False
    calib: Optional[str] = None
    data: Optional[str] = None
    targets: Optional[list[str]] = None
    output: Optional[str] = None
    ship: bool = False
    max_drop: Optional[float] = None
    search_time: Optional[float] = None
    confidence: Optional[float] = None
    train: Optional[str] = None
    objective: Optional[str] = None
    choose_on: Optional[str] = None
    choose_images: Optional[int] = None

    def given(self) -> bool:
        """True when a flag other than the model options (always present on the command line) is set."""
        values = (self.model, self.bits, self.prune, self.prune_mode, self.shift, self.calib, self.data, self.targets, self.output,
                  self.ship, self.max_drop, self.search_time, self.confidence, self.train, self.objective, self.choose_on,
                  self.choose_images)
        return any(v not in (None, False, (), []) for v in values)


def _names(stages: list) -> list:
    return [stage_entry(e)[0] for e in stages]


def _override(stages: list, name: str, fields: dict) -> None:
    """Set ``fields`` in the config of the first stage called ``name``."""
    index = _names(stages).index(name)
    _, cfg = stage_entry(stages[index])
    if isinstance(cfg, dict):  # anything else is left for validate() to report
        stages[index] = {name: {**cfg, **fields}}


def _insert(stages: list, name: str, cfg: dict) -> None:
    """A stage added by a flag goes before the first stage of a later kind (its rank), else last."""
    before = insert_before(name)
    pos = next((i for i, n in enumerate(_names(stages)) if n in before), len(stages))
    stages.insert(pos, {name: cfg})


def _apply_bits(stages: list, bits: int, notes: list[str]) -> None:
    """``--bits``: the bits of whatever stores the weights (quantize, else weight_share's codebook)."""
    names = _names(stages)
    if "quantize" in names:
        _override(stages, "quantize", {"bits": bits})
        notes.append(f"--bits {bits} sets quantize.bits")
    elif "weight_share" in names:
        _override(stages, "weight_share", {"bits": bits})
        notes.append(f"--bits {bits} sets weight_share.bits: this recipe stores its weights as a weight_share "
                     f"codebook ({2 ** bits} shared values per layer), so no quantize stage is added")
    else:
        _insert(stages, "quantize", {"bits": bits})
        notes.append(f"--bits {bits} adds a quantize stage (bits {bits}): the recipe has none")


def _apply_prune(stages: list, density: Optional[float], mode: Optional[str], notes: list[str]) -> None:
    """``--prune D --prune-mode M``: the recipe's prune (or channel_prune) stage, else a new one."""
    wanted = "channel_prune" if mode == "channel" else "prune"
    existing = next((n for n in _names(stages) if n in ("prune", "channel_prune")), None)
    if existing is None:
        if density is None:
            raise UserError("--prune-mode needs --prune D (the density to keep, e.g. --prune 0.5)")
        cfg = {"density": density} if wanted == "channel_prune" else {"density": density, "mode": mode or "unstructured"}
        _insert(stages, wanted, cfg)
        notes.append(f"--prune {density} adds a {wanted} stage: the recipe has none")
        return
    if mode is not None and wanted != existing:
        raise UserError(f"--prune-mode {mode}: the recipe prunes with a '{existing}' stage; "
                        f"change that stage in the recipe to switch the kind of pruning")
    fields = {}
    if density is not None:
        fields["density"] = density
    if mode is not None and existing == "prune":
        fields["mode"] = mode
    if not fields:  # --prune-mode channel on a channel_prune stage: nothing to change
        notes.append(f"--prune-mode {mode}: the recipe's {existing} stage already prunes that way")
        return
    _override(stages, existing, fields)
    notes.append(f"--prune/--prune-mode set {', '.join(f'{existing}.{k}' for k in fields)}"
                 + (" (layers in its schedule keep their own density)" if "density" in fields and existing == "prune" else ""))


def _apply_shift(stages: list, notes: list[str]) -> None:
    if "shift" in _names(stages):
        notes.append("--shift: the recipe already has a shift stage; its config is kept")
    else:
        _insert(stages, "shift", {})
        notes.append("--shift adds a shift stage: the recipe has none")


def _apply_search(stages: list, flags: Flags, notes: list[str]) -> None:
    """``--max-drop``: a search stage in place of what it chooses per layer (quantize, pruning, shift);
    ``--shift`` and ``--prune D --prune-mode channel`` become options of the search."""
    cfg: dict = {"max_drop": flags.max_drop}
    if flags.search_time is not None:
        cfg["search_time"] = flags.search_time
    if flags.objective is not None:
        cfg["objective"] = flags.objective
    if flags.confidence is not None:
        cfg["confidence"] = flags.confidence
    if flags.choose_on is not None:
        cfg["choose_on"] = flags.choose_on
    if flags.choose_images is not None:
        cfg["choose_images"] = flags.choose_images
    if flags.shift:
        cfg["shift"] = True
    if flags.prune is not None and flags.objective == "size":  # the size search prunes single weights by magnitude
        if flags.prune_mode not in (None, "unstructured"):
            raise UserError("--objective size prunes single weights: use --prune D (--prune-mode unstructured) or leave --prune out")
        cfg["prune_densities"] = [flags.prune]
    elif flags.prune is not None:
        if flags.prune_mode != "channel":
            raise UserError("--max-drop searches channel pruning only: use --prune D --prune-mode channel (or leave --prune out)")
        cfg["prune_densities"] = [flags.prune]
    searched = kinds_where(lambda kind: kind.searched)
    removed = [n for n in _names(stages) if n in searched]
    stages[:] = [e for e in stages if stage_entry(e)[0] not in removed]
    if "search" in _names(stages):
        _override(stages, "search", cfg)
        notes.append("--max-drop sets the recipe's search stage")
    else:
        _insert(stages, "search", cfg)
        notes.append(f"--max-drop {flags.max_drop} adds a search stage" + (f" in place of {', '.join(removed)}: the search "
                     "chooses precision, channel pruning and shift per layer" if removed else ""))


def _apply_model(raw: dict, flags: Flags, from_recipe: bool) -> None:
    raw.setdefault("model", {})
    if isinstance(raw["model"], str):
        raw["model"] = {"name": raw["model"]}
    if not isinstance(raw["model"], dict):  # left for validate() to report
        return
    if flags.model:
        if from_recipe and raw["model"].get("name") not in (None, flags.model):
            raw["model"]["options"] = {}
        raw["model"]["name"] = flags.model
    if flags.options:
        raw["model"]["options"] = {**(raw["model"].get("options") or {}), **flags.options}
    if flags.weights is not None:
        raw["model"]["weights"] = flags.weights


def _apply_stages(raw: dict, flags: Flags) -> list[str]:
    notes: list[str] = []
    stages = raw.get("stages") or list(DEFAULT_STAGES)
    if not isinstance(stages, list):  # left for validate() to report
        return notes
    stages = list(stages)
    searching = (flags.search_time, flags.objective, flags.confidence, flags.choose_on, flags.choose_images)
    if flags.max_drop is not None or any(v is not None for v in searching):
        if flags.max_drop is None:
            names = ("--search-time", "--objective", "--confidence", "--choose-on", "--choose-images")
            what = next(name for name, v in zip(names, searching) if v is not None)
            raise UserError(f"{what} needs --max-drop PTS (the top-1 drop the search may spend)")
        if flags.bits is not None:
            raise UserError("--bits and --max-drop do not go together: the search chooses the bits per layer")
        _apply_search(stages, flags, notes)
        raw["stages"] = stages
        return notes
    if flags.prune is not None or flags.prune_mode is not None:
        _apply_prune(stages, flags.prune, flags.prune_mode, notes)
    if flags.shift:
        _apply_shift(stages, notes)
    if flags.bits is not None:
        _apply_bits(stages, flags.bits, notes)
    if flags.ship:
        if "ship" in _names(stages):
            notes.append("--ship: the recipe already has a ship stage; its config is kept")
        else:
            stages.append("ship")  # after the report: last
            notes.append("--ship adds a ship stage at the end")
    raw["stages"] = stages
    return notes


def apply_flags(base: Optional[dict], flags: Flags) -> tuple[dict, list[str]]:
    """(raw recipe dict, notes): ``flags`` on top of ``base`` (a loaded raw recipe) or the defaults.

    Flags not given leave the recipe alone. The notes say what each stage flag did to a
    recipe (none without one: then the flags are the whole recipe).
    """
    raw = copy.deepcopy(base) if base else {"model": {}, "stages": list(DEFAULT_STAGES), "targets": [DEFAULT_TARGET]}
    _apply_model(raw, flags, from_recipe=bool(base))
    notes = _apply_stages(raw, flags)
    data_raw = dict(raw.get("data") or {})
    if flags.calib is not None:
        data_raw["calib"] = flags.calib
    if flags.data is not None:
        data_raw["eval"] = flags.data
    if flags.train is not None:
        data_raw["train"] = flags.train
    if data_raw:
        raw["data"] = data_raw
    if flags.targets:
        raw["targets"] = list(flags.targets)
    if flags.output is not None:
        raw["output"] = flags.output
    return raw, notes if base else []


def recipe_from_flags(base: Optional[dict], **flags) -> dict:
    """The raw recipe dict for the compress flags (keywords of :class:`Flags`), on top of ``base`` if any."""
    return apply_flags(base, Flags(**flags))[0]
