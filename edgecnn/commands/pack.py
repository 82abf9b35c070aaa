"""``edgecnn pack`` / ``edgecnn unpack``: ONNX <-> the compact .ecnn shipped format (no torch)."""

from __future__ import annotations

from pathlib import Path

import click


def _human(n: float) -> str:
    return f"{n / 2**20:.3f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


@click.command("pack")
@click.argument("onnx_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Output .ecnn file (default: next to the input).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--codec", type=click.Choice(["auto", "rans", "huffman"]), default="auto", show_default=True, help="Entropy coder; auto keeps the smaller file.")
@click.option("--verbose", "-v", is_flag=True, help="Print the encoding chosen for every tensor.")
def pack(onnx_path, output, force, codec, verbose):
    """Pack an ONNX model into a compact .ecnn file (decodes bit-exactly with numpy + onnx)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgecnn.pack import pack_file

    output = output or onnx_path.with_suffix(".ecnn")
    columns = (TextColumn("packing {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"), TimeElapsedColumn())
    onnx_bytes = onnx_path.stat().st_size if onnx_path.is_file() else 0  # the input as it was read
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(onnx_path.name, total=None)
        stats = pack_file(onnx_path, output, force=force, codec=codec, progress=lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(
        f"{output}: {stats.total:,} B ({_human(stats.total)}) from {onnx_bytes:,} B ONNX "
        f"(x{onnx_bytes / max(1, stats.total):.1f}), codec {stats.codec}"
    )
    if verbose:
        for t in stats.tensors:
            click.echo(f"  {t.name:48s} {t.encoding:6s} {t.numel:>9,} el  {t.nonzeros:>9,} nz  {t.distinct if t.distinct >= 0 else '>4096':>6} distinct  ~{t.bytes:,.0f} B")
        click.echo("  sections: " + ", ".join(f"{k} {v:,} B" for k, v in stats.sections.items()))


@click.command("unpack")
@click.argument("ecnn_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Output .onnx file (default: next to the input).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def unpack(ecnn_path, output, force):
    """Decode a .ecnn file back into ONNX (initializers bit-identical to the packed model)."""
    from edgecnn.pack import unpack_file

    output = output or ecnn_path.with_suffix(".onnx")
    path = unpack_file(ecnn_path, output, force=force)
    click.echo(f"{path}: {path.stat().st_size:,} B ONNX")
