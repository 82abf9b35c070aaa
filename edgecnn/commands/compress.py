"""``edgecnn compress MODEL``: run a compression pipeline from flags or a recipe, end to end.

Every flag is a recipe field (:func:`edgecnn.recipe.recipe_from_flags`): ``--print-recipe``
shows the resolved recipe, ``--dry-run`` the plan, and the run saves
``recipe.resolved.yaml`` so that ``edgecnn compress --recipe <it>`` reproduces it.
"""

from __future__ import annotations

import typing
from pathlib import Path

import click

from edgecnn.cli_options import device_option, field_option, model_options, pop_model_options
from edgecnn.errors import UserError
from edgecnn.passes.prune import PruneConfig
from edgecnn.passes.quantize import QuantConfig
from edgecnn.search.run import SearchConfig
from edgecnn.targets import DEFAULT_TARGET, families, target_names

# The prune pass's modes, plus ``channel``: the channel_prune pass.
PRUNE_MODES = (*typing.get_args(PruneConfig.model_fields["mode"].annotation), "channel")
BITS_HELP = ("Weight bits of the quantize stage (activations stay 8-bit); with a recipe whose weights are stored "
             "by weight_share, its codebook bits.")
TARGET_HELP = (", ".join(f"{name} (default)" if name == DEFAULT_TARGET else name for name in target_names())
               + f", or {' / '.join(families())}: the target for this machine's CPU class")


def _model_section(model_opts: dict) -> dict:
    """CLI model options -> the recipe's ``model`` fields (weights, options, preprocess)."""
    out: dict = {}
    options = {}
    for key in ("width_mult", "groups", "num_classes"):
        if model_opts.get(key) is not None:
            options[key] = model_opts[key]
    if model_opts.get("tf_padding"):
        options["tf_padding"] = True
    out["options"] = options
    preset = model_opts.get("preprocess")
    overrides = model_opts.get("preprocess_set") or ()
    if overrides:
        # Resolve to explicit fields so the saved recipe does not depend on preset defaults.
        from edgecnn.preprocess import get_preset

        if preset:
            base = get_preset(preset)
        else:
            from edgecnn.models import default_preprocess, resolve_name

            base = default_preprocess(resolve_name(model_opts["_model"]))
        out["preprocess"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in base.with_overrides(overrides).to_dict().items()}
    elif preset:
        out["preprocess"] = preset
    return out


def _collapse_warning(recipe):
    """Channel pruning or shift with nothing to train the model back: say so before any work."""
    from edgecnn.search.stage import collapse_warning

    if recipe.stage("search") is not None:  # without --train the search leaves pruning and shift out
        return None
    recovered = recipe.stage("distill") is not None and (recipe.data.train is not None or recipe.embedded)
    return collapse_warning(recipe.stage("channel_prune") is not None, recipe.stage("shift") is not None, recovered)


@click.command("compress")
@click.argument("model", required=False)
@model_options
@field_option(QuantConfig, "bits", help=BITS_HELP)
@click.option("--prune", "prune", type=float, default=None, metavar="D", help="Prune to density D (fraction of weights kept, 0 < D <= 1).")
@click.option("--prune-mode", type=click.Choice(PRUNE_MODES), default=None, help="unstructured (default), 2:4 or channel.")
@click.option("--shift", is_flag=True, help="Replace 3x3 convolutions by shift + 1x1 (shift stage).")
@field_option(SearchConfig, "max_drop", help="Search per layer for the fastest artifact whose top-1 drop is at most PTS points (needs --data).")
@field_option(SearchConfig, "search_time")
@field_option(SearchConfig, "objective", help="With --max-drop: what the search minimises, latency (default) or size (the shipped .ecnn).")
@field_option(SearchConfig, "confidence")
@field_option(SearchConfig, "choose_on", help="With --max-drop: a folder of unlabelled photos; a reserved, fixed subset of them (--choose-images) breaks ties between candidates by agreement with FP32 and is left out of --train recovery.")
@field_option(SearchConfig, "choose_images")
@click.option("--train", type=str, default=None, metavar="DIR", help="Photos for recovery by distillation after pruning / shift (labels optional, sub-folders searched).")
@click.option("--calib", type=str, default=None, metavar="DIR", help="Calibration images: a folder or a list file.")
@click.option("--data", type=str, default=None, metavar="DIR", help="Labelled evaluation images (class sub-folders or a labelled list file).")
@click.option("--target", "targets", multiple=True, metavar="TARGET", help=f"{TARGET_HELP}; repeatable.")
@click.option("--recipe", "recipe_path", type=str, default=None, metavar="FILE", help="A recipe YAML (or a shipped recipe name); flags override it.")
@click.option("-o", "--output", type=str, default=None, metavar="DIR", help="Output folder (default ./edgecnn-out/<model>-<tag>).")
@click.option("--ship", "ship", is_flag=True, help="Also write an app-ready bundle per target (OUTPUT/bundle-<target>/, see 'edgecnn ship').")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--print-recipe", is_flag=True, help="Print the resolved recipe and exit.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@device_option(flag="--measure-on")
def compress(model, bits, prune, prune_mode, shift, max_drop, search_time, objective, confidence, choose_on, choose_images, train, calib, data, targets, recipe_path, output, ship,
             force, print_recipe, dry_run, quiet, device, **kwargs):
    """Compress MODEL (zoo name or path/to/file.py:factory) and measure every stage.

    \b
    Without --weights, edgecnn trains a small baseline of MODEL on its embedded
    handwritten-digits dataset (offline, cached) and reports accuracy on digits.
    Example: edgecnn compress squeezenet --bits 6
    """
    from rich.console import Console

    from edgecnn import recipe as recipes

    model_opts = pop_model_options(kwargs)
    if model is None and recipe_path is None:
        raise UserError("give a MODEL (e.g. 'edgecnn compress squeezenet --bits 6') or --recipe FILE")
    base = None
    source = "command line"
    if recipe_path is not None:
        path = recipes.resolve_recipe_path(recipe_path)
        base = recipes.load_raw(path)  # validated once the flags are applied: a recipe may leave the model to the command line
        source = str(path)
    base_model = (base or {}).get("model")
    model_opts["_model"] = model or (base_model.get("name") if isinstance(base_model, dict) else base_model)
    section = _model_section(model_opts)
    flags = recipes.Flags(
        model=model, options=section["options"], weights=model_opts.get("weights"), bits=bits, prune=prune,
        prune_mode=prune_mode, shift=shift, calib=calib, data=data, targets=list(targets) or None, output=output, ship=ship,
        max_drop=max_drop, search_time=search_time, objective=objective, confidence=confidence, train=train,
        choose_on=choose_on, choose_images=choose_images,
    )
    raw, notes = recipes.apply_flags(base, flags)
    if "preprocess" in section:
        raw["model"]["preprocess"] = section["preprocess"]
    if base is not None and flags.given():
        source = f"{source} (with command-line flags)"
    recipe = recipes.validate(raw, source)

    import sys

    # A terminal gets its own width; a pipe or log file gets 110 columns so tables stay whole.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    if print_recipe:
        click.echo(recipe.to_yaml(notes), nl=False)
        return
    from edgecnn.pipeline import Pipeline

    warning = _collapse_warning(recipe)
    if warning:
        click.echo(warning, err=True)
    pipeline = Pipeline(recipe, Path(output) if output else None, force=force, console=console, progress=not quiet)
    if dry_run:
        for line in [f"note: {n}" for n in notes] + pipeline.plan():
            click.echo(line)
        return
    from edgecnn.measure.on_device import measuring_on, timing_device

    with measuring_on(timing_device(device)):
        pipeline.run()

