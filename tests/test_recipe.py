"""Recipe schema: shipped recipes validate, includes merge, errors are one precise line, flags map on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgecnn.errors import UserError
from edgecnn.recipe import (
    SHIPPED_RECIPES,
    default_output_dir,
    load_recipe,
    recipe_from_flags,
    validate,
)

SHIPPED = sorted(p for p in SHIPPED_RECIPES.glob("*.yaml") if not p.name.startswith("_"))


def test_every_family_has_int8_and_w6a8_recipes():
    names = {p.stem for p in SHIPPED}
    for family in ("squeezenet", "mobilenet_v2", "mobilenet_v3", "shufflenet_v2"):
        assert f"{family}-int8" in names and f"{family}-w6a8" in names
    assert "squeezenet-deep-compression" in names
    assert any("shift" in n for n in names)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_validates_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.targets
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(recipe.to_yaml())
    again = load_recipe(resolved)
    assert again.to_dict() == recipe.to_dict()


def test_shipped_recipe_by_name():
    assert load_recipe("squeezenet-int8").model.name == load_recipe(SHIPPED_RECIPES / "squeezenet-int8.yaml").model.name


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_include_deep_merges_and_replaces_lists(tmp_path):
    _write(tmp_path / "base.yaml", "data: {calib_images: 64, batch_size: 8}\nstages: [fold_bn, export]\ntargets: [trt]\n")
    child = _write(tmp_path / "child.yaml", "include: base.yaml\nmodel: {name: squeezenet}\ndata: {batch_size: 16}\nstages: [export]\n")
    recipe = load_recipe(child)
    assert recipe.data.calib_images == 64  # from base
    assert recipe.data.batch_size == 16  # child wins
    assert [s.name for s in recipe.stages] == ["export"]  # lists are replaced, not concatenated
    assert recipe.targets == ["trt"]


def test_include_cycle_is_rejected(tmp_path):
    _write(tmp_path / "a.yaml", "include: b.yaml\nmodel: {name: squeezenet}\nstages: [export]\n")
    _write(tmp_path / "b.yaml", "include: [c.yaml]\n")
    _write(tmp_path / "c.yaml", "include: a.yaml\n")
    with pytest.raises(UserError, match=r"include cycle a.yaml -> b.yaml -> c.yaml -> a.yaml"):
        load_recipe(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("model: {nme: squeezenet}\nstages: [export]\n", r"model\.nme: unknown key 'nme'; allowed keys: name, weights, options, preprocess"),
        ("model: {name: squeezenet}\ndata: {calib_images: 0}\nstages: [export]\n", r"data\.calib_images: .*greater than or equal to 1"),
        ("model: {name: squeezenet}\ndata: {embedded: {epoch: 3}}\nstages: [export]\n", r"data\.embedded\.epoch: unknown key .*allowed keys: input_size, epochs"),
        ("model: {name: squeezenet}\nstages: [{weight_share: {bits: 9}}]\n", r"stages\[0\]\.weight_share\.bits: .*less than or equal to 8"),
        ("model: {name: squeezenet}\nstages: [{export: {opsett: 17}}]\n", r"stages\[0\]\.export\.opsett: unknown key .*allowed keys: opset, batch, parity"),
        ("model: {name: squeezenet}\nstages: [export]\ntarget: [trt]\n", r"target: unknown key; allowed keys: include, .*targets"),
        ("model: {name: squeezenet}\nstages: []\n", r"stages: expected a non-empty list"),
        ("model: {name: squeezenet}\nstages: [export, export]\n", r"'export' appears 2 times"),
    ],
)
def test_errors_are_one_line_with_file_and_key_path(tmp_path, text, expected):
    path = _write(tmp_path / "r.yaml", text)
    with pytest.raises(UserError) as exc:
        load_recipe(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert re.search(expected, message), message


def test_yaml_is_data_only(tmp_path):
    path = _write(tmp_path / "evil.yaml", "model: !!python/object/apply:os.system ['echo hacked']\nstages: [export]\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(path)


def test_flags_map_onto_a_recipe():
    raw = recipe_from_flags(
        None, model="squeezenet", options={"width_mult": None}, weights="imagenet", bits=6, prune=0.5, prune_mode="2:4",
        calib="calib", data="val", targets=["ort-x86", "trt"], output="out",
    )
    recipe = validate(raw, "flags")
    names = [s.name for s in recipe.stages]
    assert names == ["fold_bn", "prune", "quantize", "export", "measure"]
    assert recipe.stage("quantize").config.bits == 6
    assert recipe.data.calib == "calib" and recipe.data.eval == "val"
    assert recipe.targets == ["ort-x86", "trt"] and recipe.output == "out" and recipe.model.weights == "imagenet"


def test_flags_override_the_recipe_they_name(tmp_path):
    base = yaml.safe_load(
        "model: {name: mobilenet_v2, options: {width_mult: 0.5}}\n"
        "stages: [{quantize: {bits: 8}}, export]\ntargets: [trt]\n"
    )
    raw = recipe_from_flags(base, bits=6, targets=["ort-x86"])
    recipe = validate(raw, "r")
    assert recipe.stage("quantize").config.bits == 6
    assert recipe.targets == ["ort-x86"]
    assert recipe.model.options == {"width_mult": 0.5}  # untouched: no model flag given
    assert [s.name for s in recipe.stages] == ["quantize", "export"]


def test_default_output_dir_names_the_job():
    recipe = validate(recipe_from_flags(None, model="squeezenet", bits=6), "flags")
    assert default_output_dir(recipe) == Path("edgecnn-out") / "squeezenet-w6a8"
    recipe = validate(recipe_from_flags(None, model="squeezenet", prune=0.5), "flags")
    assert default_output_dir(recipe) == Path("edgecnn-out") / "squeezenet-p50-int8"
