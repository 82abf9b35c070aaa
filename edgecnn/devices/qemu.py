"""``qemu-arm[:LEVEL]``: the real aarch64 ONNX Runtime kernels, on an emulated ARM CPU.

The numerics of an ``ort-arm`` artifact depend on which integer kernels the CPU runs (NEON
widening multiplies, SDOT/UDOT, I8MM/SVE); this device runs them here, at the level of the
board named (:data:`edgecnn.devices.qemu_env.ARM_LEVELS`). Its answers are compared with the
reference semantics; its timings are not the board's, so it refuses latency.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from edgecnn.devices.base import Device, DeviceKind, _last_line, register_device_kind
from edgecnn.devices.qemu_env import DEFAULT_LEVEL, ArmLevel, QemuEnv, arm_level, cache_root, ensure_env

PREFIX = "qemu-arm"


class QemuArmDevice(Device):
    kind = PREFIX

    def __init__(self, spec: str):
        super().__init__(spec)
        _, _, name = spec.partition(":")
        self.level: ArmLevel = arm_level(name or DEFAULT_LEVEL)  # a bad level is refused at parse time
        self._env: Optional[QemuEnv] = None

    @property
    def cpu_class(self) -> str:
        """The edgecnn.cpu class of the emulated CPU (what its instructions make the kernels do)."""
        from edgecnn import cpu

        return cpu.classify("aarch64", self.level.features.split())

    @property
    def env(self) -> QemuEnv:
        if self._env is None:
            self._env = ensure_env()
        return self._env

    def python_command(self) -> list[str]:
        """The emulated interpreter's argv (qemu-aarch64 -L ROOT -cpu CPU python3.11)."""
        return self.env.argv(self.level)

    def agent_command(self, args: Sequence[str]) -> list[str]:
        from edgecnn.devices.agent_zip import agent_zip

        return [*self.python_command(), str(agent_zip(cache_root() / PREFIX)), *args]

    def stream(self, model: str, threads: int = 0, opt_level: str = "all", backend: str = "ort"):
        # One thread unless asked: emulated worker threads spin-wait on the host's cores, which
        # slows emulation many times on a busy machine; the numerics are the same kernels'.
        return super().stream(model, threads or 1, opt_level, backend)

    def agent_env(self) -> dict:
        # The host's PYTHONPATH/PYTHONHOME point at x86 packages the emulated Python must not see.
        return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

    def put(self, path: Path) -> str:
        return str(Path(path).resolve())  # qemu-user sees this machine's files

    def failure_line(self, returncode: int, stderr: str) -> str:
        line = _last_line(stderr).replace("edgecnn: error: ", "")
        if "Illegal instruction" in stderr or returncode == -4:
            return f"illegal instruction on the emulated {self.level.qemu_cpu} ({self.level.board})"
        return line or f"the emulated agent exited with code {returncode}"


def _level_for_class(cpu_class: str) -> Optional[str]:
    """The first level (default first) whose emulated instructions make the kernels of ``cpu_class``."""
    from edgecnn import cpu
    from edgecnn.devices.qemu_env import ARM_LEVELS

    names = [DEFAULT_LEVEL] + [n for n in ARM_LEVELS if n != DEFAULT_LEVEL]
    for name in names:
        if cpu.classify("aarch64", ARM_LEVELS[name].features.split()) == cpu_class:
            return f"{PREFIX}:{name}"
    return None


register_device_kind(DeviceKind(
    PREFIX, QemuArmDevice, lambda spec: spec == PREFIX or spec.startswith(PREFIX + ":"), measures_latency=False,
    spec_help="qemu-arm[:rpi4|rpi5|orin|max] (emulated ARM CPU, numerics only)", emulates=_level_for_class,
    why_no_latency="an emulated ARM CPU runs 50-150x slower than the board, with other timing; its numbers "
                   "say nothing about the board's latency",
))
