"""Flags compose with recipes: each compress flag overrides the matching field of a shipped
recipe's own stage and never adds a stage that conflicts with it; ``--print-recipe`` says what
a flag did."""

from __future__ import annotations

import pytest
import yaml

from edgecnn.cli import main
from edgecnn.recipe import load_recipe


def _printed(capsys, recipe: str, *flags: str) -> tuple[dict, str]:
    """(resolved recipe, comment lines) that ``compress --recipe R FLAGS --print-recipe`` prints."""
    main(["compress", "--recipe", recipe, *flags, "--print-recipe"])
    out = capsys.readouterr().out
    return yaml.safe_load(out), "\n".join(line for line in out.splitlines() if line.startswith("#"))


def _stage(printed: dict, name: str) -> dict:
    return next(s[name] for s in printed["stages"] if name in s)


def _names(printed: dict) -> list[str]:
    return [next(iter(s)) for s in printed["stages"]]


def _shipped_names(recipe: str) -> list[str]:
    return [s.name for s in load_recipe(recipe).stages]


# (shipped recipe, flags, check(printed recipe, comments)); stage lists stay the recipe's unless said.
SAME_STAGES = [
    ("squeezenet-deep-compression", ["--bits", "6"],
     lambda r, c: _stage(r, "weight_share")["bits"] == 6 and "weight_share.bits" in c and "codebook" in c),
    ("squeezenet-deep-compression", ["--bits", "4"], lambda r, c: _stage(r, "weight_share")["bits"] == 4),
    ("squeezenet-int8", ["--bits", "7"], lambda r, c: _stage(r, "quantize")["bits"] == 7 and "quantize.bits" in c),
    ("mobilenet_v2-shift-int8", ["--bits", "6"],
     lambda r, c: _stage(r, "quantize")["bits"] == 6 and _stage(r, "shift")["kinds"] == ["depthwise"]),
    ("squeezenet-deep-compression", ["--prune", "0.5"],
     lambda r, c: _stage(r, "prune")["density"] == 0.5 and _stage(r, "prune")["schedule"]["classifier.1"] == 0.2),
    ("squeezenet-deep-compression", ["--prune-mode", "2:4"],
     lambda r, c: _stage(r, "prune")["mode"] == "2:4" and _stage(r, "prune")["density"] is None),
    ("mobilenet_v2-shift-int8", ["--shift"],
     lambda r, c: _stage(r, "shift")["assign"] == "balanced" and "already has a shift stage" in c),
    ("squeezenet-w6a8", ["--target", "trt"], lambda r, c: r["targets"] == ["trt"] and _stage(r, "quantize")["target"] == "trt"),
    ("squeezenet-w6a8", ["--calib", "cal", "--data", "val"],
     lambda r, c: (r["data"]["calib"], r["data"]["eval"], r["data"]["calib_images"]) == ("cal", "val", 256)),
    ("squeezenet-int8", ["-o", "elsewhere"], lambda r, c: r["output"] == "elsewhere"),
    ("mobilenet_v2-int8", ["--weights", "imagenet", "--width-mult", "0.5"],
     lambda r, c: r["model"]["weights"] == "imagenet" and r["model"]["options"] == {"width_mult": 0.5}),
    ("squeezenet-int8", ["--preprocess", "caffe"], lambda r, c: r["model"]["preprocess"] == "caffe"),
    ("squeezenet-deep-compression", ["squeezenet1_1"], lambda r, c: r["model"]["name"] == "squeezenet1_1"),
]


@pytest.mark.parametrize("recipe,flags,check", SAME_STAGES, ids=[f"{r}:{' '.join(f)}" for r, f, _ in SAME_STAGES])
def test_flag_overrides_the_recipes_own_stage(recipe, flags, check, capsys):
    printed, comments = _printed(capsys, recipe, *flags)
    assert _names(printed) == _shipped_names(recipe)
    assert check(printed, comments), (printed, comments)


def test_flag_adds_a_stage_only_where_the_recipe_has_none(capsys):
    printed, comments = _printed(capsys, "squeezenet-int8", "--prune", "0.5", "--prune-mode", "2:4", "--shift")
    assert _names(printed) == ["fold_bn", "prune", "shift", "quantize", "export", "measure"]
    assert _stage(printed, "prune")["mode"] == "2:4" and _stage(printed, "quantize")["bits"] == 8
    assert "adds a prune stage" in comments and "adds a shift stage" in comments
    printed, comments = _printed(capsys, "squeezenet-deep-compression", "--prune", "0.4", "--prune-mode", "unstructured")
    assert _names(printed) == _shipped_names("squeezenet-deep-compression")
    assert _stage(printed, "prune")["density"] == 0.4 and "schedule keep their own density" in comments


def test_deep_compression_with_bits_runs_its_plan(capsys, tmp_path):
    """The command from the bug report: the plan keeps weight_share and has no quantize stage."""
    main(["compress", "squeezenet1_0", "--recipe", "squeezenet-deep-compression", "--bits", "6", "--dry-run", "-o", str(tmp_path / "never")])
    plan = capsys.readouterr().out
    assert "note: --bits 6 sets weight_share.bits" in plan
    assert "weight_share" in plan and "stage 3: export" in plan and "quantize" not in plan.replace("quantize stage", "")
    assert not (tmp_path / "never").exists()


def test_switching_the_kind_of_pruning_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--recipe", "squeezenet-deep-compression", "--prune", "0.5", "--prune-mode", "channel", "--print-recipe"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert "--prune-mode channel" in err and "'prune' stage" in err


def test_without_a_recipe_there_are_no_notes(capsys):
    main(["compress", "squeezenet", "--bits", "6", "--print-recipe"])
    comments = [line for line in capsys.readouterr().out.splitlines() if line.startswith("#")]
    assert len(comments) == 2  # the header only


@pytest.mark.parametrize("bits", range(1, 10))
def test_cli_bits_are_exactly_the_quantize_configs(bits, capsys):
    """``--bits N`` is accepted exactly when the quantize config accepts N (7 included)."""
    from pydantic import ValidationError

    from edgecnn.passes.quantize import QuantConfig

    try:
        QuantConfig(bits=bits)
        config_accepts = True
    except ValidationError:
        config_accepts = False
    try:
        main(["compress", "squeezenet", "--bits", str(bits), "--print-recipe"])
        cli_accepts = True
    except SystemExit as exc:
        assert exc.code == 2
        cli_accepts = False
    out = capsys.readouterr().out
    assert cli_accepts == config_accepts
    if cli_accepts:
        assert _stage(yaml.safe_load(out), "quantize")["bits"] == bits
