"""Devices: places where edgecnn can run a measurement, each kind one registry entry.

A device runs edgecnn's torch-free *agent* (:mod:`edgecnn.measure.agent`) with its own Python and
runtime: ``local`` (this machine, the default), and further kinds registered with
:func:`register_device_kind` (an emulated ARM CPU, a board over SSH). Everything a command asks
of a device goes through :class:`~edgecnn.devices.base.Device`: stage a file, run an agent job
that prints JSON, or stream batches through a model. Which measurements a device can make
honestly (latency under emulation cannot) is a field of its kind, not an ``if`` in a command.

This package sits at the bottom of edgecnn: it starts the agent by module name and never
imports the measuring code itself.
"""

from edgecnn.devices.base import AgentStream, Device, DeviceKind  # noqa: F401
from edgecnn.devices.registry import (  # noqa: F401
    DEVICE_KINDS,
    device_kinds,
    devices_file,
    parse_device,
    register_device_kind,
)
