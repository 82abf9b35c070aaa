"""What every device kind provides, and the agent protocol they share."""

from __future__ import annotations

import io
import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

import numpy as np

from edgecnn.errors import UserError

AGENT_MODULE = "edgecnn.measure.agent"
_FRAME = struct.Struct("<Q")  # length prefix of one .npy frame on the agent's stdin/stdout


@dataclass(frozen=True)
class DeviceKind:
    """One registry entry: how a spec is recognised and what the kind can measure."""

    name: str
    factory: Callable[[str], "Device"]  # spec -> device
    matches: Callable[[str], bool]  # does a spec name this kind?
    measures_latency: bool  # a latency measured there predicts the deployed latency
    spec_help: str  # how the spec is written, for error messages
    why_no_latency: str = ""
    # cpu class -> the spec of a device of this kind whose kernels are that class's (an emulator),
    # or None: how edgecnn runs a target's own kernels on a host of another class
    emulates: Optional[Callable[[str], Optional[str]]] = None


DEVICE_KINDS: dict[str, DeviceKind] = {}


def register_device_kind(kind: DeviceKind) -> DeviceKind:
    """Add a kind to the registry (kinds in their own modules call this on import; living here,
    below edgecnn.devices.registry, so that those modules import nothing that imports them)."""
    if kind.name in DEVICE_KINDS:
        raise ValueError(f"device kind {kind.name!r} registered twice")
    DEVICE_KINDS[kind.name] = kind
    return kind


class Device:
    """A place that runs the agent. Kinds override :meth:`agent_command` and :meth:`put`."""

    kind: ClassVar[str] = ""

    def __init__(self, spec: str):
        self.spec = spec
        self.alias: Optional[str] = None  # the name it has in the devices file, if any

    # -- what a kind provides -------------------------------------------------------------
    def agent_command(self, args: Sequence[str]) -> list[str]:
        """The argv that runs ``python -m edgecnn.measure.agent ARGS`` on the device."""
        raise NotImplementedError

    def agent_env(self) -> Optional[dict]:
        """Environment of the local process that starts the agent (None: inherit)."""
        return None

    def put(self, path: Path) -> str:
        """Make a local file available on the device; returns its path there."""
        raise NotImplementedError

    def python_command(self) -> list[str]:
        """argv of a Python on the device that runs a local script (the bundle sample's check)."""
        from edgecnn.errors import UserError

        raise UserError(f"{self.name}: cannot run a local script there; use --device local or qemu-arm[:LEVEL]")

    def clean(self) -> str:
        """Remove what edgecnn left on the device; returns a line saying what went."""
        return f"{self.name}: nothing to clean"

    # -- shared by every kind ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.alias} ({self.spec})" if self.alias else self.spec

    @property
    def entry(self) -> DeviceKind:
        return DEVICE_KINDS[self.kind]

    def require_latency(self) -> None:
        """Refuse a latency measurement on a device whose timings mean nothing (one line)."""
        if not self.entry.measures_latency:
            raise UserError(f"{self.name}: no latency here ({self.entry.why_no_latency}); "
                            "measure latency on the real device (--device ssh://...) or locally")

    def run_agent(self, args: Sequence[str], timeout: float = 600.0) -> dict:
        """Run one agent job that prints one JSON object; a failure is one line naming the device."""
        cmd = self.agent_command(list(args))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.agent_env(),
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.name}: '{args[0]}' did not finish in {timeout:.0f} s") from None
        except OSError as exc:
            raise UserError(f"{self.name}: cannot start {cmd[0]!r} ({exc.strerror})") from None
        if done.returncode != 0:
            raise UserError(f"{self.name}: {self.failure_line(done.returncode, done.stderr)}")
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise UserError(f"{self.name}: the agent printed no result ({_last_line(done.stderr)})") from None

    def failure_line(self, returncode: int, stderr: str) -> str:
        """One line for a failed agent run; kinds refine it (unreachable host, missing runtime)."""
        return _last_line(stderr).replace("edgecnn: error: ", "") or f"the agent exited with code {returncode}"

    def probe(self) -> dict:
        """CPU model and flags, cores, OS, Python, runtime versions, free disk: recorded in reports."""
        info = self.run_agent(["probe"], timeout=120.0)
        info["device"] = self.name
        info["device_kind"] = self.kind
        return info

    def stream(self, model: str, threads: int = 0, opt_level: str = "all", backend: str = "ort") -> "AgentStream":
        """Batches through ``model`` (a path on the device) in one long-running agent process,
        in ``backend``'s runtime there (ONNX Runtime or OpenVINO)."""
        args = ["infer", model, "--threads", str(threads), "--opt-level", opt_level]
        if backend != "ort":
            args += ["--backend", backend]
        return AgentStream(self, self.agent_command(args))


class AgentStream:
    """One agent process answering .npy frames: ``send(batch) -> logits``; use as a context manager."""

    def __init__(self, device: Device, cmd: list[str]):
        self.device = device
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=device.agent_env())
        except OSError as exc:
            raise UserError(f"{device.name}: cannot start {cmd[0]!r} ({exc.strerror})") from None

    def send(self, batch: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(batch), allow_pickle=False)
        try:
            write_frame(self.proc.stdin, buf.getvalue())
            self.proc.stdin.flush()
            answer = read_frame(self.proc.stdout)
        except (BrokenPipeError, EOFError, OSError):
            raise UserError(f"{self.device.name}: {self._died()}") from None
        return np.load(io.BytesIO(answer), allow_pickle=False)

    def _died(self) -> str:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        err = self.proc.stderr.read().decode("utf-8", "replace") if self.proc.stderr else ""
        return self.device.failure_line(self.proc.returncode or 1, err)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                write_frame(self.proc.stdin, b"")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "AgentStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_frame(fh, payload: bytes) -> None:
    fh.write(_FRAME.pack(len(payload)))
    fh.write(payload)


def read_frame(fh) -> bytes:
    head = fh.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (size,) = _FRAME.unpack(head)
    data = fh.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
