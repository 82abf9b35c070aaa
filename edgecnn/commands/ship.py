"""``edgecnn ship OUTPUT_FOLDER|model.onnx -o bundle/`` and ``edgecnn ship --check bundle/`` (no torch)."""

from __future__ import annotations

import json
import sys

import click

from edgecnn.cli_options import device_option
from edgecnn.errors import UserError
from edgecnn.targets import target_names


@click.command("ship")
@click.argument("source", required=False, type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None, help="Bundle folder to write.")
@click.option("--target", type=click.Choice(target_names()), default=None,
              help="Runtime to ship for (default: the output folder's first target / the model's own).")
@click.option("--golden", type=click.Path(dir_okay=False), default=None,
              help="Golden test image (default: one of the run's images, or an embedded digit).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Class names (one per line, or an ImageNet classes.txt) when the model carries none.")
@click.option("--force", is_flag=True, help="Replace an existing bundle (only a folder edgecnn wrote as a bundle).")
@click.option("--check", "check_dir", type=click.Path(file_okay=False), default=None, metavar="BUNDLE",
              help="Verify a bundle: hashes, labels/preprocessing vs metadata, golden output from .onnx and .ort.")
@click.option("--python", "python", type=str, default=None,
              help="With --check: run the bundle's sample with this Python (e.g. a fresh venv's).")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ship(source, output, target, golden, labels, force, check_dir, python, device, as_json):
    """Write an app-ready bundle for SOURCE (an 'edgecnn compress' output folder or a model.onnx).

    \b
    Example: edgecnn ship edgecnn-out/squeezenet-w6a8 -o bundle/
             edgecnn ship --check bundle/
    """
    if check_dir is not None:
        if source is not None or output is not None:
            raise UserError("--check takes only the bundle folder: edgecnn ship --check BUNDLE")
        if python is not None and device is not None:
            raise UserError("give --python or --device, not both: --device runs the sample with the device's Python")
        _check(check_dir, python, as_json, device)
        return
    if python is not None or device is not None:
        raise UserError("--python and --device go with --check")
    if source is None or output is None:
        raise UserError("give what to ship and where: edgecnn ship OUTPUT_FOLDER|model.onnx -o BUNDLE")
    from edgecnn.ship import build_bundle

    bundle = build_bundle(source, output, target=target, golden=golden, labels=labels, force=force,
                          log=lambda line: click.echo(line, err=True))
    top = bundle.golden["top5"][0]
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle.path), "target": bundle.target, "files": bundle.files,
                               "golden": bundle.golden}))
        return
    click.echo(f"wrote {bundle.path}/ ({bundle.target}: {', '.join(sorted(bundle.files))}); checked")
    click.echo(f"golden image: {bundle.golden['origin']} -> {top['label']} (tolerance {bundle.golden['atol']:.3g}; "
               f"logits from {bundle.golden['kernels']})")


def _check(folder: str, python, as_json: bool, device=None) -> None:
    from edgecnn.ship import check_bundle

    if device is not None:
        from edgecnn.devices import parse_device

        device = parse_device(device)
    result = check_bundle(folder, python=python, device=device)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        for line in result.passed:
            click.echo(f"ok: {line}")
        if result.versions and not result.failures:
            where = f" on {device.name}" if device is not None else ""
            click.echo(f"checked{where} with " + ", ".join(f"{k} {v}" for k, v in result.versions.items()))
    for line in result.failures:
        click.echo(f"edgecnn: check failed: {line}", err=True)
    if result.failures:
        sys.exit(2)
