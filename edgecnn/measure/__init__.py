"""Measurements: ``profile`` (params/MACs, needs torch), and torch-free ``latency``, ``size``,
``accuracy`` and ``sysinfo`` that run next to the runtime on the device.
"""
