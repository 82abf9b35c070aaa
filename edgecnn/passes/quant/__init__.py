"""Quantization internals: fake-quant modules, calibration, placement, sensitivity, rounding.

The ``quantize`` pass itself lives in :mod:`edgecnn.passes.quantize`.
"""
