"""The device side (bench, compile, backends, latency/size/accuracy on ONNX) and the app side
(ship, ship --check) never import torch: a Jetson or an app developer's machine has no pip torch. Checked in a fresh interpreter, where nothing imported it before."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    import edgecnn.commands.bench, edgecnn.commands.compile, edgecnn.commands.eval
    import edgecnn.backends, edgecnn.backends.ort, edgecnn.backends.tensorrt, edgecnn.backends.trtexec
    import edgecnn.backends.jetson
    import edgecnn.commands.ship, edgecnn.ship, edgecnn.ship.source, edgecnn.ship.golden, edgecnn.ship.runtime
    import edgecnn.measure.latency, edgecnn.measure.size, edgecnn.measure.accuracy, edgecnn.measure.sysinfo
    import edgecnn.measure.interleave, edgecnn.stats
    imported = "torch" in sys.modules

    # Use them on a real file: measure, size, evaluate an ONNX model, plan a TensorRT build.
    tmp = Path(sys.argv[1])
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    from edgecnn.export.metadata import write_metadata
    from edgecnn.preprocess import Preprocess
    write_metadata(model, Preprocess(input_size=8, resize=8, crop=8).to_metadata())
    onnx.save(model, str(tmp / "m.onnx"))
    (tmp / "data" / "a").mkdir(parents=True)
    (tmp / "data" / "b").mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp / "data" / "a" / "x.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(tmp / "data" / "b" / "y.png")
    (tmp / "data" / "classes.txt").write_text("a red\\nb green\\nc blue\\n")  # 2 folders, 3 outputs: say which is which

    from edgecnn.measure.latency import measure_latency
    from edgecnn.measure.size import size_report
    from edgecnn.measure.accuracy import evaluate_onnx
    from edgecnn.backends.tensorrt import config_for_onnx, plan_build
    from edgecnn.backends.trtexec import trtexec_command
    measure_latency(tmp / "m.onnx", iterations=3, warmup_s=0)
    size_report(tmp / "m.onnx")
    report = evaluate_onnx(tmp / "m.onnx", tmp / "data", progress=False)
    trtexec_command(tmp / "m.onnx", config_for_onnx(tmp / "m.onnx", 10, fp16=True))
    from edgecnn.cli import cli
    cli.main(args=["eval", str(tmp / "m.onnx"), "--data", str(tmp / "data"), "--json"], standalone_mode=False)
    cli.main(args=["bench", str(tmp / "m.onnx"), "--iterations", "3", "--warmup", "0", "--in-process", "--json"],
             standalone_mode=False)
    (tmp / "labels.txt").write_text("".join(c + chr(10) for c in ("red", "green", "blue")))
    cli.main(args=["ship", str(tmp / "m.onnx"), "-o", str(tmp / "bundle"), "--golden", str(tmp / "data" / "a" / "x.png"),
                   "--labels", str(tmp / "labels.txt")], standalone_mode=False)
    cli.main(args=["ship", "--check", str(tmp / "bundle"), "--json"], standalone_mode=False)
    print(json.dumps({"after_import": imported, "after_use": "torch" in sys.modules, "top1": report.top1}))
    """
)


@pytest.mark.slow
def test_device_side_never_imports_torch(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"after_import": False, "after_use": False, "top1": 1.0}
