"""A throwaway OpenSSH server on 127.0.0.1 for the SSH device tests.

Per run: a fresh host key and user key, a free non-default port, ``sshd -D`` in the foreground
under ``timeout`` (a bounded lifetime even if the tests die), and an ssh_config that pins the
host key (``StrictHostKeyChecking yes``): the client checks it as a user's config would.
:meth:`SshServer.stop` kills the server and every session it forked, which is
also how the tests drop a connection mid-run.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

LIFETIME_S = 1800  # longer than a slow session: the server outlives every test that uses it


def find_sshd() -> Optional[str]:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)),
                                        None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SshServer:
    def __init__(self, root: Path, sshd: str):
        self.root, self.sshd = Path(root), sshd
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.user = getpass.getuser()
        self.port = _free_port()
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / name)], check=True)
        (self.root / "authorized_keys").write_text((self.root / "user_key.pub").read_text())
        (self.root / "authorized_keys").chmod(0o600)
        (self.root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            f"PidFile {self.root / 'sshd.pid'}", "MaxStartups 50", "LogLevel ERROR",
            # Debian's bash runs ~/.bashrc for every command sshd starts, but only at shell level 1:
            # the test machine's shell set-up is not the device's, and one that takes a lock (pyenv's
            # rehash) is left locked when a test drops a connection, making every later command wait.
            "SetEnv SHLVL=1", "",
        ]))
        host_pub = (self.root / "host_key.pub").read_text().split()
        (self.root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.write_client_config(self.root / "ssh_config", self.root / "user_key")
        self.proc: Optional[subprocess.Popen] = None

    def write_client_config(self, path: Path, identity: Path) -> Path:
        path.write_text("\n".join([
            "Host 127.0.0.1", f"  IdentityFile {identity}", "  IdentitiesOnly yes", "  IdentityAgent none",
            f"  UserKnownHostsFile {self.root / 'known_hosts'}", "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes", "  LogLevel ERROR", "",
        ]))
        return path

    def spec(self, python: str, **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"python": python, **options}.items())
        return f"ssh://{self.user}@127.0.0.1:{self.port}?{query}"

    def start(self) -> "SshServer":
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation folder sshd requires as root
        self.proc = subprocess.Popen(
            ["timeout", str(LIFETIME_S), self.sshd, "-D", "-e", "-f", str(self.root / "sshd_config")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"), start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        """Kill the server and every session it forked (sessions call setsid, so by parentage)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found
