"""``edgecnn profile MODEL``: params, MACs, a per-layer table and the share of each layer kind."""

from __future__ import annotations

import json

import click

from edgecnn.cli_options import load_model_from_cli, model_options, pop_model_options
from edgecnn.errors import UserError

KIND_LABELS = {
    "conv": "conv (full)",
    "depthwise": "conv depthwise",
    "pointwise": "conv 1x1",
    "group": "conv grouped",
    "linear": "linear",
    "conv1d": "conv 1-d",
    "conv3d": "conv 3-d",
    "transposed": "conv transposed",
}


def _fmt_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} G"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


@click.command("profile")
@click.argument("model")
@model_options
@click.option("--input-size", type=int, default=None, help="Input height and width (default: the model's preprocessing size).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--layers/--no-layers", default=True, help="Show the per-layer table (default on).")
def profile(model, input_size, as_json, layers, **kwargs):
    """Params, MACs and a per-layer table for MODEL (zoo name or path/to/file.py:factory)."""
    from edgecnn.measure.profile import kind_shares, profile_model

    loaded = load_model_from_cli(model, **pop_model_options(kwargs))
    size = input_size or loaded.preprocess.input_size
    from edgecnn.models.input_size import check_input_size

    check_input_size(loaded.module, size, loaded.name)
    try:
        result = profile_model(loaded.module, size)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"{loaded.name} cannot run at input size {size} ({first}); check the model and --input-size") from None

    if as_json:
        payload = {"model": loaded.name, "options": loaded.options, "weights": loaded.weights} | result.to_dict()
        if not layers:
            payload.pop("rows")
        click.echo(json.dumps(payload))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    total_macs = result.macs or 1
    if layers:
        table = Table(title=f"{loaded.name} at {size}x{size}: per layer", show_lines=False)
        for col, justify in (("layer", "left"), ("kind", "left"), ("output", "left"), ("params", "right"), ("MACs", "right"), ("% MACs", "right")):
            table.add_column(col, justify=justify)
        for row in result.rows:
            table.add_row(
                row.name,
                row.kind,
                "x".join(map(str, row.out_shape)),
                f"{row.params:,}",
                f"{row.macs:,}",
                f"{100.0 * row.macs / total_macs:.2f}",
            )
        console.print(table)

    shares = kind_shares(result)
    kinds = Table(title="Resources per layer type")
    for col, justify in (("type", "left"), ("layers", "right"), ("MACs", "right"), ("% MACs", "right"), ("params", "right"), ("% params", "right")):
        kinds.add_column(col, justify=justify)
    for kind, entry in result.by_kind.items():
        mac_share, param_share = shares[kind]
        kinds.add_row(
            KIND_LABELS.get(kind, kind), str(entry["layers"]), _fmt_count(entry["macs"]), f"{mac_share:.2f}",
            _fmt_count(entry["params"]), f"{param_share:.2f}",
        )
    console.print(kinds)
    other = result.params - sum(e["params"] for e in result.by_kind.values())
    line = f"{loaded.name}: {result.params:,} params ({_fmt_count(result.params)})"
    if other:
        line += f", of which {other:,} in BatchNorm and other layers"
    if result.nonzero_params != result.params:
        line += f"; {result.nonzero_params:,} non-zero"
    console.print(line)
    console.print(f"{result.macs:,} MACs ({_fmt_count(result.macs)}) at {size}x{size}, batch 1")
    if result.skipped:
        shown = ", ".join(f"{s['layer']} ({s['kind']})" for s in result.skipped)
        console.print(f"[yellow]not counted in MACs[/] (a layer kind the counter does not know): {shown}")
