"""``edgecnn models``: the model zoo with params and MACs at 224x224."""

from __future__ import annotations

import json

import click

from edgecnn import cpu
from edgecnn.targets import families, resolve_target_name


def zoo_table(input_size: int = 224) -> list[dict]:
    """One dict per zoo model: name, family, options, params, MACs, weights and preprocessing.

    """
    from edgecnn.measure.profile import profile_model
    from edgecnn.models import available, default_preprocess, get_spec
    from edgecnn.models.registry import create

    rows = []
    for name in available():
        spec = get_spec(name)
        module = create(name)
        prof = profile_model(module, input_size)
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "params": prof.params,
                "macs": prof.macs,
                "options": [o for o in spec.options if o != "dropout"],
                "imagenet_weights": spec.imagenet is not None,
                "published_top1": spec.imagenet.top1 if spec.imagenet else None,
                "preprocess": default_preprocess(name).name,
                "efficient": spec.efficient,
                "summary": spec.summary,
            }
        )
    return rows


def _targets_here() -> dict[str, str]:
    """{family: the target a bare family name picks on this machine}."""
    return {family: resolve_target_name(family) for family in families()}


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def models(as_json):
    """List the model zoo with params and MACs at 224x224."""
    from edgecnn.models import ALIASES

    rows = zoo_table(224)
    if as_json:
        click.echo(json.dumps({"input_size": 224, "models": rows, "aliases": ALIASES, "cpu_class": cpu.host_class(),
                               "targets_here": _targets_here()}))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgecnn model zoo (params and MACs at 224x224, 1000 classes)")
    table.add_column("model", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    table.add_column("options")
    table.add_column("imagenet top-1", justify="right")
    table.add_column("preprocess")
    for row in rows:
        weights = f"{row['published_top1']:.1f}" if row["imagenet_weights"] else "-"
        name = row["name"] + ("" if row["efficient"] else " (ref.)")
        table.add_row(
            name, f"{row['params'] / 1e6:.2f} M", f"{row['macs'] / 1e6:.0f} M", ", ".join(row["options"]) or "-",
            weights, row["preprocess"],
        )
    console = Console()
    console.print(table)
    console.print("aliases: " + ", ".join(f"{alias} -> {target}" for alias, target in ALIASES.items()))
    console.print("imagenet top-1: published ImageNet-1k accuracy of the checkpoint `--weights imagenet` loads")
    console.print("user models: path/to/file.py:factory (a callable returning a torch.nn.Module)")
    picks = ", ".join(f"--target {family} -> {name}" for family, name in _targets_here().items())
    console.print(f"this machine: {cpu.describe_host()}; {picks}")
