"""Runtimes an exported model runs on: ONNX Runtime (``ort``), OpenVINO's CPU plugin
(``openvino``) and TensorRT (``tensorrt``, ``trtexec``, ``jetson``). Nothing here imports torch: this is what runs on the device.
Optional runtimes are imported lazily, so a missing one fails with an install hint.
"""
