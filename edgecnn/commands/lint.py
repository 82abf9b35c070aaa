"""``edgecnn lint model.onnx``: TensorRT's Q/DQ placement rules on any Q/DQ ONNX file (no torch).

Works on edgecnn's ``trt`` exports and on files from other quantizers (NVIDIA Model
Optimizer, pytorch-quantization): each violation names the rule, the nodes and the NVIDIA
document the rule comes from. Exit code 1 when a rule is broken, 0 when the file is clean.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecnn.errors import UserError


@click.command("lint")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--rule", "rules", multiple=True, help="Check only this rule (repeat for several).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lint(onnx_file, rules, as_json):
    """Check ONNX_FILE against TensorRT's explicit-quantization placement rules."""
    from edgecnn.export.trt_rules import RULE_SOURCES, TRT_RULES, lint as run_lint

    path = Path(onnx_file)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist; check the path")
    unknown = [r for r in rules if r not in TRT_RULES]
    if unknown:
        raise UserError(f"unknown rule '{unknown[0]}'; rules: {', '.join(TRT_RULES)}")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise UserError(f"'{path}' is not an ONNX file: {str(exc).splitlines()[0][:200]}") from None
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    violations = run_lint(model, list(rules) or None)
    if as_json:
        click.echo(json.dumps({"file": str(path), "qdq_nodes": qdq, "violations": [
            {"rule": v.rule, "nodes": v.nodes, "message": v.message, "source": RULE_SOURCES[v.rule]} for v in violations]}))
    else:
        if not qdq:
            click.echo(f"{path.name}: no Q/DQ nodes (not an explicitly quantized file); nothing to check")
        for v in violations:
            click.echo(f"{v}\n    source: {RULE_SOURCES[v.rule]}")
        if qdq and not violations:
            click.echo(f"{path.name}: {qdq} Q/DQ nodes, every TensorRT placement rule holds")
    if violations:
        raise SystemExit(1)
