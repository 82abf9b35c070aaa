"""Every stage kind, checked from its registry entry: a new kind is tested by being registered."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from edgecnn.errors import UserError
from edgecnn.recipe import STAGE_KINDS, apply_flags, default_output_dir, insert_before, stage_kind, validate
from edgecnn.recipe.flags import Flags
from edgecnn.recipe.stage_kinds import EXPORT_RANK

KINDS = sorted(STAGE_KINDS)
# Required fields of configs that have no default for everything (the rest validate from {}).
MINIMAL = {"search": {"max_drop": 1.0}}


def _config(name: str) -> BaseModel:
    return stage_kind(name).config()(**MINIMAL.get(name, {}))


def test_every_pass_is_a_stage_kind_run_by_the_transform_stage():
    from edgecnn.passes.registry import available_passes

    passes = {name for name, kind in STAGE_KINDS.items() if kind.is_pass}
    assert passes == set(available_passes())


@pytest.mark.parametrize("name", KINDS)
def test_kind_config_class_validates_its_recipe_stage(name):
    kind = stage_kind(name)
    cls = kind.config()
    assert issubclass(cls, BaseModel)
    if kind.is_pass:
        from edgecnn.passes.registry import get_pass

        assert cls is get_pass(name).config_cls
    raw = {"model": {"name": "squeezenet"}, "stages": [*kind.requires, {name: MINIMAL.get(name, {})}]}
    recipe = validate(raw, "test")
    stage = next(s for s in recipe.stages if s.name == name)
    assert isinstance(stage.config, cls) and stage.is_pass == kind.is_pass


@pytest.mark.parametrize("name", KINDS)
def test_kind_has_a_runner_that_runs_it(name):
    from edgecnn.pipeline.stages import STAGES, stage_for

    kind = stage_kind(name)
    assert kind.runner in STAGES
    assert stage_for(name) is STAGES[kind.runner]
    assert hasattr(stage_for(name), "run")


@pytest.mark.parametrize("name", KINDS)
def test_kind_order_rules_are_consistent(name):
    kind = stage_kind(name)
    assert all(r in STAGE_KINDS and STAGE_KINDS[r].rank < kind.rank for r in kind.requires)
    assert kind.changes_model == (kind.rank < EXPORT_RANK)
    assert not (kind.searched and kind.searches)
    if kind.after_report:
        assert kind.last and kind.rank == max(k.rank for k in STAGE_KINDS.values())
    assert all(STAGE_KINDS[n].rank > kind.rank and not STAGE_KINDS[n].after_report for n in insert_before(name))
    assert set(kind.needs) <= {"calib", "train", "labelled_eval"}


@pytest.mark.parametrize("name", KINDS)
def test_kind_tag_names_the_output_folder(name):
    kind = stage_kind(name)
    tag = kind.tag(_config(name))
    assert tag is None or (tag and "/" not in tag and " " not in tag)
    stages = [*kind.requires, {name: MINIMAL.get(name, {})}]
    recipe = validate({"model": {"name": "squeezenet"}, "stages": stages}, "test")
    folder = default_output_dir(recipe).name
    assert folder == f"squeezenet-{tag or 'fp32'}"


@pytest.mark.parametrize("name", [n for n in KINDS if not STAGE_KINDS[n].repeatable])
def test_kind_that_runs_once_is_refused_twice(name):
    kind = stage_kind(name)
    stages = [*kind.requires, {name: MINIMAL.get(name, {})}, {name: MINIMAL.get(name, {})}]
    with pytest.raises(UserError, match=f"'{name}' appears 2 times|must be the last stage"):
        validate({"model": {"name": "squeezenet"}, "stages": stages}, "test")


@pytest.mark.parametrize("name", [n for n in KINDS if STAGE_KINDS[n].requires])
def test_kind_without_what_it_requires_is_refused(name):
    with pytest.raises(UserError, match=f"'{name}'"):
        validate({"model": {"name": "squeezenet"}, "stages": [{name: MINIMAL.get(name, {})}]}, "test")


@pytest.mark.parametrize("name", [n for n in KINDS if STAGE_KINDS[n].changes_model])
def test_later_stages_must_follow_a_model_changing_kind(name):
    stages = ["export", {name: MINIMAL.get(name, {})}]
    with pytest.raises(UserError, match="'export' must come after every transform"):
        validate({"model": {"name": "squeezenet"}, "stages": stages}, "test")


@pytest.mark.parametrize("need, name", [(need, n) for n in KINDS for need in STAGE_KINDS[n].needs if need != "labelled_eval"]
                         + [("labelled_eval", n) for n in KINDS if "labelled_eval" in STAGE_KINDS[n].needs])
def test_kind_without_the_data_it_needs_is_refused_before_any_work(tmp_path, need, name):
    from edgecnn.pipeline.load import check_inputs

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    given = {key: str(tmp_path) for key in ("calib", "train", "eval")}
    given.pop({"calib": "calib", "train": "train", "labelled_eval": "eval"}[need])
    recipe = validate({"model": {"name": "squeezenet", "weights": str(weights)}, "data": given,
                       "stages": [{name: MINIMAL.get(name, {})}]}, "test")
    with pytest.raises(UserError, match="needs"):
        check_inputs(recipe)


def test_stage_added_by_a_flag_goes_before_later_kinds():
    raw, _ = apply_flags({"model": {"name": "squeezenet"}, "stages": ["fold_bn", "quantize", "export", "measure"]},
                         Flags(prune=0.5, shift=True))
    assert raw["stages"][:4] == ["fold_bn", {"prune": {"density": 0.5, "mode": "unstructured"}}, {"shift": {}}, "quantize"]
    raw, _ = apply_flags({"model": {"name": "squeezenet"}, "stages": ["fold_bn", "export", "measure", "ship"]}, Flags(bits=6))
    assert raw["stages"] == ["fold_bn", {"quantize": {"bits": 6}}, "export", "measure", "ship"]
