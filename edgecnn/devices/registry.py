"""The device-kind registry, and device specs: ``local``, a kind's own spelling, or a name
from the devices file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from edgecnn.devices.base import AGENT_MODULE, DEVICE_KINDS, Device, DeviceKind, register_device_kind  # noqa: F401
from edgecnn.errors import UserError


def device_kinds() -> tuple[str, ...]:
    _load_kinds()
    return tuple(DEVICE_KINDS)


def devices_file() -> Path:
    """``$EDGECNN_DEVICES``, else ``~/.config/edgecnn/devices.yaml`` (XDG_CONFIG_HOME respected)."""
    if os.environ.get("EDGECNN_DEVICES"):
        return Path(os.environ["EDGECNN_DEVICES"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "edgecnn" / "devices.yaml"


def _named_devices() -> dict[str, str]:
    path = devices_file()
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"devices file '{path}' cannot be read ({str(exc).splitlines()[0]}); fix or remove it") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UserError(f"devices file '{path}' should map names to specs, e.g. 'jetson: ssh://nvidia@orin.local'")
    return data


def parse_device(spec: Optional[str]) -> Device:
    """The device a ``--device`` value names (None or ``local``: this machine)."""
    _load_kinds()
    spec = (spec or "local").strip()
    named = _named_devices()
    if spec in named:
        device = _by_kind(named[spec], f"'{spec}' in {devices_file()}")
        device.alias = spec
        return device
    return _by_kind(spec, f"--device {spec!r}")


def emulator_for(cpu_class: str) -> Optional[Device]:
    """A device that runs ``cpu_class``'s kernels on this machine (``qemu-arm:rpi5`` for
    ``arm64-dot``), or None where no registered kind emulates that class."""
    _load_kinds()
    for kind in DEVICE_KINDS.values():
        spec = kind.emulates(cpu_class) if kind.emulates is not None else None
        if spec is not None:
            return kind.factory(spec)
    return None


def _by_kind(spec: str, where: str) -> Device:
    for kind in DEVICE_KINDS.values():
        if kind.matches(spec):
            return kind.factory(spec)
    forms = "; ".join(k.spec_help for k in DEVICE_KINDS.values())
    raise UserError(f"{where} is not a device: write {forms}, or a name from {devices_file()}")


def _load_kinds() -> None:
    """Import the modules that register the built-in kinds (each registers itself on import)."""
    import importlib

    for module in BUILTIN_KIND_MODULES:
        kind = getattr(importlib.import_module(module), "DEVICE_KIND", None)  # a module may also register itself
        if kind is not None and kind.name not in DEVICE_KINDS:
            register_device_kind(kind)


class LocalDevice(Device):
    """This machine, with this interpreter: what every command did before devices existed."""

    kind = "local"

    def agent_command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", AGENT_MODULE, *args]

    def put(self, path: Path) -> str:
        return str(Path(path).resolve())

    def python_command(self) -> list[str]:
        return [sys.executable]


register_device_kind(DeviceKind(
    "local", LocalDevice, lambda spec: spec == "local", measures_latency=True, spec_help="'local' (this machine)",
))

# Kinds living in their own modules register themselves when imported here.
BUILTIN_KIND_MODULES: tuple[str, ...] = ("edgecnn.devices.qemu", "edgecnn.devices.ssh")
