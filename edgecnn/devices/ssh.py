"""``ssh://user@host[:port]``: a board or edge box reached with the user's own OpenSSH client.

edgecnn runs the system ``ssh`` (so ``~/.ssh/config``, keys, the agent and ProxyJump apply as
they do for the user; host keys are checked as that config says, never accepted silently;
``BatchMode`` so nothing waits for a password). Every remote command is an argument list
quoted with :func:`shlex.quote`: nothing the user typed reaches the remote shell unquoted.

Files move content-addressed into one cache folder on the device (``~/.cache/edgecnn-device``
unless ``?dir=`` says otherwise): a file already there under its hash is not copied again,
nothing is written outside that folder, and :meth:`SshDevice.clean` removes only a folder
that edgecnn marked as its own. The agent itself travels as the zip application of
:mod:`edgecnn.devices.agent_zip`, so the device needs Python, numpy and a runtime, not edgecnn.

Faults have names: an unreachable host, a refused login, an unknown host key, a full disk, a
missing runtime each become one line; a connection that drops mid-job is retried once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import parse_qsl, urlsplit

from edgecnn.devices.base import Device, DeviceKind, _last_line
from edgecnn.errors import UserError
from edgecnn.fileio import atomic_path, file_sha256

DEFAULT_DIR = ".cache/edgecnn-device"  # relative to the login's home folder
MARKER = ".edgecnn-device-cache"  # written in the cache folder: clean() removes only a marked folder
SSH_CONFIG_ENV = "EDGECNN_SSH_CONFIG"  # an ssh_config file to use instead of ~/.ssh/config (ssh -F)
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_OPTIONS = {"python": "the device's Python (default python3)", "dir": f"the cache folder (default ~/{DEFAULT_DIR})",
            "trtexec": "TensorRT's trtexec where it is not on PATH"}

_UNREACHABLE = ("Could not resolve hostname", "Connection refused", "No route to host", "Connection timed out",
                "Network is unreachable", "Name or service not known", "port 22: Operation timed out")
_DROPPED = ("closed by remote host", "read from master failed", "mux_client", "Connection reset", "Broken pipe",
            "Timeout, server", "client_loop:", "Connection closed by", "packet_write_wait", "Connection to ")
_CANNOT_WRITE = ("Read-only file system", "Permission denied", "Operation not permitted", "cannot create directory",
                 "Not a directory")
_HOST_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "host key is known")


class SshDevice(Device):
    kind = "ssh"

    def __init__(self, spec: str):
        super().__init__(spec)
        parts = urlsplit(spec)
        try:
            port = parts.port
        except ValueError:
            port = -1
        host = parts.hostname or ""
        if parts.netloc.count("@") > 1 or parts.password is not None or port == -1 or not _HOST.match(
                f"[{host}]" if ":" in host else host) or (parts.username and not _USER.match(parts.username)) \
                or parts.path not in ("", "/"):
            raise UserError(f"--device {spec!r} is not an SSH device: write ssh://user@host[:port] "
                            "(no password; keys come from your ssh config)")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            known = ", ".join(f"{k}= ({v})" for k, v in _OPTIONS.items())
            raise UserError(f"--device {spec!r}: unknown option {unknown[0]!r}; known: {known}")
        self.user, self.host, self.port = parts.username, host, parts.port
        self.python = options.get("python") or "python3"
        folder = options.get("dir") or DEFAULT_DIR
        self.folder = folder[2:] if folder.startswith("~/") else folder
        self.trtexec = options.get("trtexec")
        self._present: set[str] = set()
        self._agent: Optional[str] = None

    @property
    def shown_folder(self) -> str:
        return self.folder if self.folder.startswith("/") else f"~/{self.folder}"

    # -- the ssh command line -------------------------------------------------------------
    def ssh_argv(self, remote: Sequence[str] | str) -> list[str]:
        """``ssh [options] -- host COMMAND``; ``remote`` is an argv (quoted here) or a line built from quoted parts."""
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
                   "-o", "ServerAliveCountMax=3"]
        if os.environ.get(SSH_CONFIG_ENV):
            options = ["-F", os.environ[SSH_CONFIG_ENV], *options]
        options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={_control_folder()}/%C", "-o", "ControlPersist=30"]
        if self.port:
            options += ["-p", str(self.port)]
        if self.user:
            options += ["-l", self.user]
        line = remote if isinstance(remote, str) else shlex.join(remote)
        return ["ssh", *options, "--", self.host, line]

    def _in_folder(self, argv: Sequence[str]) -> str:
        return f"cd {shlex.quote(self.folder)} && exec {shlex.join(argv)}"

    def agent_command(self, args: Sequence[str]) -> list[str]:
        if self._agent is None:
            from edgecnn.devices.agent_zip import agent_zip

            self._agent = self.put(agent_zip(_local_cache() / "agent"))
        return self.ssh_argv(self._in_folder([self.python, "-I", self._agent, *args]))

    # -- running, with named faults and one retry of a dropped connection ------------------
    def run(self, remote: Sequence[str] | str, what: str, timeout: float = 120.0, stdin=None,
            retry: bool = True) -> subprocess.CompletedProcess:
        """Run a remote command; connection faults are one line, a dropped connection is retried once."""
        cmd = self.ssh_argv(remote)
        dropped = False
        for attempt in (1, 2):
            if stdin is not None:
                stdin.seek(0)
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=timeout,
                                      stdin=stdin if stdin is not None else subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise UserError(f"{self.name}: {what} did not finish in {timeout:.0f} s") from None
            except OSError as exc:
                raise UserError(f"{self.name}: cannot start 'ssh' ({exc.strerror}); install the OpenSSH client") from None
            stderr = done.stderr.decode("utf-8", "replace")
            if done.returncode == 255 and self._dropped(stderr) and retry and attempt == 1:
                dropped = True
                time.sleep(1.0)
                continue
            if dropped and done.returncode == 255:
                raise UserError(f"{self.name}: the connection dropped during {what} and the retry failed "
                                f"({self.failure_line(255, stderr)})")
            break
        return done

    def run_agent(self, args: Sequence[str], timeout: float = 600.0) -> dict:
        import json

        done = self.run(self._in_folder([self.python, "-I", self._agent_path(), *args]), f"'{args[0]}'", timeout)
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode != 0:
            raise UserError(f"{self.name}: {self.failure_line(done.returncode, stderr)}")
        try:
            return json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise UserError(f"{self.name}: the agent printed no result ({_last_line(stderr)})") from None

    def _agent_path(self) -> str:
        self.agent_command([])
        return self._agent

    def _dropped(self, stderr: str) -> bool:
        """ssh exited 255 after the session started (with ``LogLevel ERROR`` it says nothing at all)."""
        if any(s in stderr for s in _UNREACHABLE + _HOST_KEY) or "Permission denied" in stderr:
            return False
        return not stderr.strip() or any(s in stderr for s in _DROPPED)

    def failure_line(self, returncode: int, stderr: str) -> str:
        where = f"{self.host}:{self.port or 22}"
        login = f"{self.user + '@' if self.user else ''}{self.host}"
        if returncode == 255 and any(s in stderr for s in _UNREACHABLE):
            return (f"cannot reach {where} ({_last_line(stderr).split(': ')[-1]}); check the address, that "
                    "sshd runs there, and your ~/.ssh/config")
        if any(s in stderr for s in _HOST_KEY):
            return (f"the host key of {self.host} is unknown or has changed; check it and accept it once "
                    f"with: ssh {login}")
        if returncode == 255 and ("Permission denied" in stderr or "Too many authentication failures" in stderr):
            return (f"{login} refused the login (no accepted key; passwords are not asked): add your key there "
                    f"with ssh-copy-id {login}, or name it in ~/.ssh/config")
        if returncode == 255 and self._dropped(stderr):
            return "the connection dropped; check the network and that the device is up, then run again"
        if "No space left on device" in stderr:
            return f"the device's disk is full (cache folder {self.shown_folder}); free space there or give ?dir= on another disk"
        if any(s in stderr for s in _CANNOT_WRITE) and self.folder in stderr:
            return f"cannot write the cache folder {self.shown_folder} on the device; give a writable one with ?dir=PATH"
        missing = re.search(r"No module named '([\w.]+)'", stderr)
        if missing:
            package = {"PIL": "pillow"}.get(missing.group(1).split(".")[0], missing.group(1).split(".")[0])
            return (f"{package} is missing from the device's Python ({self.python}): install it there with "
                    f"'{self.python} -m pip install {package}'")
        if returncode == 127 or "python" in stderr and "not found" in stderr:
            return (f"no Python at '{self.python}' on the device: install python3 with numpy and onnxruntime there, "
                    "or point ?python= at one")
        return super().failure_line(returncode, stderr)

    def require_runtime(self, info: dict, backend: str = "ort") -> None:
        """One line saying what to install on the device when its probe lacks the runtime."""
        runtimes = info.get("runtimes", {})
        if "numpy" not in runtimes:
            raise UserError(f"{self.name}: numpy is missing from the device's Python ({self.python}): "
                            f"install it there with '{self.python} -m pip install numpy'")
        if backend == "ort" and not ({"onnxruntime", "onnxruntime-gpu"} & set(runtimes)):
            raise UserError(f"{self.name}: onnxruntime is missing from the device's Python ({self.python}): "
                            f"install it there with '{self.python} -m pip install onnxruntime'")
        if backend == "openvino" and "openvino" not in runtimes:
            raise UserError(f"{self.name}: openvino is missing from the device's Python ({self.python}): "
                            f"install it there with '{self.python} -m pip install openvino'")
        if self.trtexec:
            info["trtexec"] = self.trtexec
        if backend == "trt" and not info.get("trtexec"):
            raise UserError(f"{self.name}: TensorRT's trtexec is not on the device: install TensorRT there "
                            "(on a Jetson: sudo apt install nvidia-jetpack)")

    # -- files --------------------------------------------------------------------------------
    def put(self, path: Path) -> str:
        """Copy ``path`` into the cache folder under its SHA-256 unless it is already there."""
        path = Path(path)
        digest = file_sha256(path)
        remote = f"{self.folder}/{digest[:32]}{''.join(path.suffixes[-1:])}"
        if remote in self._present:
            return remote
        quoted, part = shlex.quote(remote), shlex.quote(f"{remote}.part")
        check = self.run(["test", "-f", remote], f"checking {path.name}")
        if check.returncode not in (0, 1):
            raise UserError(f"{self.name}: {self.failure_line(check.returncode, check.stderr.decode('utf-8', 'replace'))}")
        if check.returncode == 1:
            size = path.stat().st_size
            folder = shlex.quote(self.folder)
            line = (f"mkdir -p {folder} && touch {folder}/{MARKER} && cat > {part} && "
                    f"test \"$(wc -c < {part})\" -eq {size} && mv {part} {quoted} || {{ rm -f {part}; exit 3; }}")
            with open(path, "rb") as fh:
                done = self.run(line, f"copying {path.name}", timeout=600.0, stdin=fh)
            if done.returncode != 0:
                stderr = done.stderr.decode("utf-8", "replace")
                raise UserError(f"{self.name}: copying {path.name} failed: {self.failure_line(done.returncode, stderr)}")
        self._present.add(remote)
        return remote

    def put_folder(self, folder: Path) -> str:
        """Copy a folder (same relative names) into the cache folder, each file content-addressed;
        returns its path there, named by the hash of its listing."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        blobs = {p.relative_to(folder).as_posix(): self.put(p) for p in files}
        listing = "\n".join(f"{name} {blob}" for name, blob in blobs.items())
        tree = f"{self.folder}/trees/{hashlib.sha256(listing.encode()).hexdigest()[:24]}"
        if tree in self._present:
            return tree
        subfolders = sorted({f"{tree}/{Path(name).parent.as_posix()}" for name in blobs})
        line = " && ".join([shlex.join(["mkdir", "-p", *subfolders])] +
                           [shlex.join(["cp", "-f", blob, f"{tree}/{name}"]) for name, blob in blobs.items()])
        done = self.run(line, f"staging {folder.name}/")
        if done.returncode != 0:
            raise UserError(f"{self.name}: staging {folder.name}/ failed: "
                            f"{self.failure_line(done.returncode, done.stderr.decode('utf-8', 'replace'))}")
        self._present.add(tree)
        return tree

    def run_python(self, args: Sequence[str], cwd: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """The device's Python with ``args``, in ``cwd`` (a folder on the device); text output."""
        done = self.run(f"cd {shlex.quote(cwd)} && exec {shlex.join([self.python, *args])}", "running Python",
                        timeout)
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
                                           done.stderr.decode("utf-8", "replace"))

    def fetch(self, remote: str, local: Path) -> Path:
        """Bring a device file back; ``local`` appears whole or not at all."""
        local = Path(local)
        done = self.run(["cat", remote], f"fetching {Path(remote).name}", timeout=600.0)
        if done.returncode != 0:
            stderr = done.stderr.decode("utf-8", "replace")
            raise UserError(f"{self.name}: fetching {remote} failed: {self.failure_line(done.returncode, stderr)}")
        with atomic_path(local) as tmp:
            tmp.write_bytes(done.stdout)
        return local

    def clean(self) -> str:
        folder = shlex.quote(self.folder)
        line = f"if test -f {folder}/{MARKER}; then rm -rf -- {folder} && echo removed; else echo absent; fi"
        done = self.run(line, "cleaning")
        if done.returncode != 0:
            raise UserError(f"{self.name}: {self.failure_line(done.returncode, done.stderr.decode('utf-8', 'replace'))}")
        self._present.clear()
        self._agent = None
        if done.stdout.decode().strip() == "removed":
            return f"{self.name}: removed {self.shown_folder}"
        return f"{self.name}: nothing to clean (no edgecnn cache folder {self.shown_folder})"


_CONTROL: list[str] = []


def _control_folder() -> str:
    """A private folder for this process's shared connections: one TCP + key exchange per device,
    not per command (slow boards spend most of a short job in the handshake). Closed at exit."""
    if not _CONTROL:
        import atexit
        import shutil

        from edgecnn.fileio import private_temp_dir

        _CONTROL.append(private_temp_dir("edgecnn-ssh-"))
        atexit.register(_close_connections, _CONTROL[0])
        atexit.register(shutil.rmtree, _CONTROL[0], True)
    return _CONTROL[0]


def _close_connections(folder: str) -> None:
    for socket in Path(folder).glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "edgecnn-device"], capture_output=True,
                       timeout=10, stdin=subprocess.DEVNULL)


def _local_cache() -> Path:
    """edgecnn's cache root (``$EDGECNN_CACHE`` or ``~/.cache/edgecnn``), where the agent zip is built."""
    return Path(os.environ.get("EDGECNN_CACHE") or Path.home() / ".cache" / "edgecnn")


# Registered by edgecnn.devices.registry when it loads this module (no import back: no cycle).
DEVICE_KIND = DeviceKind(
    "ssh", SshDevice, lambda spec: spec.startswith("ssh://"), measures_latency=True,
    spec_help="ssh://user@host[:port] (a board over SSH; ?python=PATH&dir=PATH&trtexec=PATH optional)",
)
