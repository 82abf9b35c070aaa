"""FP32 ONNX export with the TorchScript exporter, checked and compared against PyTorch.

Why the TorchScript exporter (``dynamo=False``): TensorRT 8.5 on JetPack 5 reads opset <= 17,
and the dynamo exporter only writes opset >= 18. Why a GlobalAveragePool rewrite: a model
that pools with ``x.mean((2, 3))`` exports as ReduceMean, which some runtimes (TensorRT's DLA,
older ORT ARM kernels) run slower or not at all; GlobalAveragePool is the op every edge
runtime fuses.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Optional, Union


from edgecnn.errors import UserError
from edgecnn.export.metadata import (
    KEY_INPUT_NAME,
    KEY_OUTPUT_NAME,
    KEY_PRECISION,
    model_metadata,
    read_metadata,
    set_metadata,
    write_metadata,
)
from edgecnn.export.finalize import check_input_shape, check_output, finalize
from edgecnn.export.parity import ParityError, ParityReport, check_parity
from edgecnn.export.qdq_rewrites import constant_values

__all__ = [
    "MIN_OPSET",
    "MAX_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ParityError",
    "ParityReport",
    "check_parity",
    "export_onnx",
    "export_with_parity",
    "read_metadata",
    "write_metadata",
    "use_global_average_pool",
]

MIN_OPSET, MAX_OPSET = 13, 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BatchSpec = Union[int, str]


def _batch_dim(batch: BatchSpec) -> Optional[int]:
    """None for a dynamic batch, else the positive static batch size."""
    if isinstance(batch, str):
        if batch.strip().lower() == "dynamic":
            return None
        try:
            batch = int(batch)
        except ValueError:
            raise UserError(f"batch '{batch}' is not valid; give a positive integer or 'dynamic'") from None
    if int(batch) < 1:
        raise UserError(f"batch {batch} is not valid; give a positive integer or 'dynamic'")
    return int(batch)


def _check_opset(opset: int) -> int:
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise UserError(
            f"opset {opset} is not supported; choose {MIN_OPSET}-{MAX_OPSET} (17 for TensorRT 8.5 on JetPack 5)"
        )
    return int(opset)


def _trace_to_proto(module, shape, opset: int, dynamic: bool):
    """Run the TorchScript exporter into memory and return the ModelProto."""
    import onnx
    import torch

    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), _quiet_stdout():
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                export_params=True,
            )
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        op = re.search(r"'(\w+::\w+)'", str(exc))
        op = op.group(1) if op else "an operator"
        layer = _layer_calling(module, example, op)
        where = f" in layer '{layer}'" if layer else ""
        raise UserError(
            f"the ONNX exporter cannot export {op}{where} at opset {opset}; try another --opset "
            "(up to 17 for TensorRT 8.5) or replace that op in the model"
        ) from None
    finally:
        module.train(was_training)
    return onnx.load_model_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet_stdout():
    """Keep the TorchScript exporter's graph dump (written straight to file descriptor 1 when
    an op fails) off the user's stdout; the failure becomes one line instead."""
    import sys
    import tempfile

    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured): nothing to protect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _layer_calling(module, example, op: str) -> Optional[str]:
    """Name of the innermost layer whose forward calls the aten ``op`` (e.g. 'aten::erfinv')."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {m: n for n, m in module.named_modules()}
    stack: list[str] = []
    found: list[str] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and stack and getattr(func, "_schema", None) is not None and func._schema.name == op:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def enter(mod, _inputs):
        stack.append(names.get(mod) or type(mod).__name__)

    def leave(_mod, _inputs, _output):
        stack.pop()  # a forward hook that returns something would replace the output

    handles = []
    for m in module.modules():
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.no_grad(), Spy():
            module(example)
    except Exception:  # best effort: the message is still right without the layer
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found and found[0] else None


def use_global_average_pool(model):
    """Rewrite spatial-mean pooling to GlobalAveragePool in place; returns the count rewritten.

    Handles ``ReduceMean`` over axes (2, 3) of a 4-D tensor (keepdims=0 gets a Flatten after
    it, which is what the squeeze did) and ``AveragePool`` whose kernel covers the whole
    feature map without padding. Hand-written: onnx has no such rewrite and onnxsim/onnxoptimizer
    do not do it.
    """
    import onnx
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    ranks, spatial = {}, {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        ranks[value.name] = len(dims)
        if len(dims) == 4:
            spatial[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[2:])

    new_nodes, rewritten, used_inputs = [], 0, set()
    for node in model.graph.node:
        replacement = None
        if node.op_type == "ReduceMean" and ranks.get(node.input[0]) == 4:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                values = constant_values(model, node.input[1])
                axes = None if values is None else [int(v) for v in values.reshape(-1)]
            if axes is not None and sorted(a % 4 for a in axes) == [2, 3]:
                keepdims = int(attrs.get("keepdims", 1))
                pooled = node.output[0] if keepdims else node.output[0] + "_gap"
                replacement = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name + "_gap")]
                if not keepdims:
                    replacement.append(
                        helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name + "_flatten", axis=1)
                    )
        elif node.op_type == "AveragePool" and node.input[0] in spatial:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            kernel = tuple(attrs.get("kernel_shape", ()))
            pads = attrs.get("pads", [0, 0, 0, 0])
            if (
                kernel
                and kernel == spatial[node.input[0]]
                and not any(pads)
                and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID")
            ):
                replacement = [helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)]
        if replacement is None:
            new_nodes.append(node)
            used_inputs.update(node.input)
        else:
            rewritten += 1
            new_nodes.extend(replacement)
            used_inputs.update(i for n in replacement for i in n.input)
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        # Drop axes constants nothing reads any more.
        dead = [i for i in model.graph.initializer if i.name not in used_inputs]
        for init in dead:
            if not any(init.name == g.name for g in model.graph.input):
                model.graph.initializer.remove(init)
        for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used_inputs]:
            if not any(node.output[0] == o.name for o in model.graph.output):
                model.graph.node.remove(node)
        del model.graph.value_info[:]  # stale after the rewrite; checker re-infers
    onnx.checker.check_model(model)
    return rewritten


def export_with_parity(
    model,
    path: Union[str, Path],
    input_shape=(1, 3, 224, 224),
    opset: int = 17,
    batch: BatchSpec = 1,
    metadata: Optional[dict] = None,
    parity_inputs=None,
    parity: bool = True,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    overwrite: bool = True,
) -> tuple[Path, Optional[ParityReport]]:
    """Export ``model`` (nn.Module or LoadedModel) to one self-contained FP32 ONNX file, and
    return it with the parity report (None when ``parity`` is False).

    ``batch``: a static batch size or ``'dynamic'`` (input_shape's batch is then ignored).
    ``metadata`` is merged over the defaults (edgecnn version, and for a LoadedModel its
    preprocessing, labels, name, weights). Before the file lands at ``path`` (atomically) it
    passes ``onnx.checker`` (full check) and, unless ``parity=False``, agrees with PyTorch in
    ONNX Runtime on ``parity_inputs`` (default: seeded random inputs), else ParityError.
    """
    path = check_output(path, overwrite)
    opset = _check_opset(opset)
    static_batch = _batch_dim(batch)
    shape = check_input_shape(input_shape)
    module = getattr(model, "module", model)
    trace_shape = (static_batch if static_batch else 2, *shape[1:])

    proto = _trace_to_proto(module, trace_shape, opset, dynamic=static_batch is None)
    use_global_average_pool(proto)
    values = model_metadata(model if hasattr(model, "preprocess") else None)
    values.update({KEY_INPUT_NAME: INPUT_NAME, KEY_OUTPUT_NAME: OUTPUT_NAME, KEY_PRECISION: "fp32"})
    values.update(metadata or {})
    set_metadata(proto, values)

    def verify(staging: Path) -> ParityReport:
        if parity_inputs is None:
            # A batch other than the traced one proves a dynamic batch really is dynamic.
            count = 3 if static_batch is None else max(static_batch, 2)
            return check_parity(staging, model, None, atol=atol, rtol=rtol, input_shape=shape, count=count)
        return check_parity(staging, model, parity_inputs, atol=atol, rtol=rtol)

    report = finalize(proto, path, "the exported ONNX graph", verify if parity else None)
    return path, report


def export_onnx(model, path: Union[str, Path], *args, **options) -> Path:
    """:func:`export_with_parity` (same parameters), returning only the path."""
    return export_with_parity(model, path, *args, **options)[0]
