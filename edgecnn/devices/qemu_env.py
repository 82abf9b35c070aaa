"""The emulated aarch64 environment ``qemu-arm`` runs in, built once into edgecnn's cache.

Debian's arm64 Python 3.11 (``apt-get download`` + ``dpkg -x``, no root needed once the arm64
architecture is known to apt) plus PyPI's aarch64 ``onnxruntime``/``numpy``/``pillow`` wheels
unpacked into its ``dist-packages``, so ``python -I`` (the bundle check's isolation) still
finds them. The runtime versions follow this machine's, so a difference between the host and
the emulated ARM CPU is the kernels', not a version's.

qemu-user passes the host's ``/proc/cpuinfo`` through, and ONNX Runtime's cpuinfo library
cannot read an x86 one on aarch64. ``qemu -L ROOT`` looks paths up under ROOT first, so each
CPU level gets a root of links into the shared sysroot plus its own ``proc/cpuinfo`` naming
an ARM core (which also sets the core type ORT tunes for); ``-cpu`` sets the instructions
(HWCAPs) the kernels dispatch on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgecnn.errors import UserError
from edgecnn.fileio import atomic_dir

QEMU = "qemu-aarch64"
PYTHON = "python3.11"  # the Debian bookworm interpreter: the wheels are cp311
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
                   "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5")
WHEELS = ("onnxruntime", "numpy", "pillow")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
SITE = Path("usr/lib/python3/dist-packages")
FORMAT = "2"  # bump when the layout below changes: a new cache key


@dataclass(frozen=True)
class ArmLevel:
    """One emulated CPU, named by the board that has it."""

    name: str
    qemu_cpu: str  # qemu's -cpu model: the instructions the kernels may use
    part: str  # MIDR part number in the fake cpuinfo (the core ORT believes it runs on)
    features: str  # /proc/cpuinfo Features line, matching the -cpu model
    board: str

    def cpuinfo(self, cpus: int) -> str:
        """One entry per CPU this machine has: ORT's cpuinfo reads the core of each CPU the kernel
        lists, and crashes on a missing one for cores newer than the A76."""
        return "".join(self._processor(i) for i in range(cpus))

    def _processor(self, index: int) -> str:
        return (f"processor\t: {index}\nBogoMIPS\t: 50.00\nFeatures\t: {self.features}\nCPU implementer\t: 0x41\n"
                f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {self.part}\nCPU revision\t: 0\n\n")


_V80 = "fp asimd evtstrm crc32 cpuid"
_V82_DOT = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
ARM_LEVELS: dict[str, ArmLevel] = {
    "rpi4": ArmLevel("rpi4", "cortex-a72", "0xd08", _V80, "Raspberry Pi 4 (Cortex-A72, ARMv8.0 NEON)"),
    "rpi5": ArmLevel("rpi5", "cortex-a76", "0xd0b", _V82_DOT, "Raspberry Pi 5 (Cortex-A76, dot product)"),
    "orin": ArmLevel("orin", "cortex-a76", "0xd42", _V82_DOT,
                     "Jetson Orin CPU (Cortex-A78AE id, Cortex-A76 instructions: qemu 7.2 has no A78)"),
    "max": ArmLevel("max", "max", "0xd0b", _V82_DOT + " sve i8mm bf16 svei8mm sve2",
                    "qemu's max CPU (I8MM, SVE: ARMv8.6+ cores)"),
}
DEFAULT_LEVEL = "rpi4"
# qemu's own CPU names work too, for people who know their core rather than their board.
LEVEL_ALIASES = {"cortex-a72": "rpi4", "cortex-a76": "rpi5", "a78ae": "orin"}


def arm_level(name: str) -> ArmLevel:
    key = LEVEL_ALIASES.get(name, name)
    if key not in ARM_LEVELS:
        raise UserError(f"unknown ARM level '{name}'; write qemu-arm:LEVEL with LEVEL one of "
                        f"{', '.join(ARM_LEVELS)} (or {', '.join(LEVEL_ALIASES)})")
    return ARM_LEVELS[key]


def cache_root() -> Path:
    """edgecnn's cache: ``$EDGECNN_CACHE``, else ``~/.cache/edgecnn`` (XDG_CACHE_HOME respected)."""
    if os.environ.get("EDGECNN_CACHE"):
        return Path(os.environ["EDGECNN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecnn"


def wheel_versions() -> dict[str, str]:
    """The aarch64 wheels to install: this machine's versions, so only the kernels differ."""
    versions = {}
    for name in WHEELS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"{name} is not installed here; install it (pip install {name}): the emulated "
                            "environment takes the same version") from None
    return versions


@dataclass(frozen=True)
class QemuEnv:
    """A built environment: ``argv(level)`` starts its Python on that emulated CPU."""

    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    def level_root(self, level: ArmLevel) -> Path:
        return self.root / "levels" / level.name

    def argv(self, level: ArmLevel) -> list[str]:
        root = self.level_root(level)
        return [shutil.which(QEMU) or QEMU, "-L", str(root), "-cpu", level.qemu_cpu, str(root / "usr/bin" / PYTHON)]


def env_key(versions: dict[str, str]) -> str:
    text = "|".join([FORMAT, str(os.cpu_count() or 1), *DEBIAN_PACKAGES, *(f"{k}={v}" for k, v in sorted(versions.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_host() -> None:
    """One line naming what this machine lacks for emulation, and the command that installs it."""
    if shutil.which(QEMU) is None:
        raise UserError(f"{QEMU} not found: install qemu-user (sudo apt-get install qemu-user) to run ARM kernels here")
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UserError("the emulated ARM environment is built from Debian arm64 packages; this machine has no "
                        "apt-get/dpkg (use a Debian or Ubuntu machine)")
    archs = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
    if "arm64" not in archs:
        raise UserError("apt does not know arm64 packages: run sudo dpkg --add-architecture arm64 && sudo apt-get update")


def ensure_env(cache: Path | None = None) -> QemuEnv:
    """The environment for this machine's runtime versions, built on first use (atomically:
    a half-built one is never seen)."""
    versions = wheel_versions()
    final = (cache or cache_root()) / "qemu-arm" / env_key(versions)
    env = QemuEnv(final)
    if (final / "complete").is_file():
        return env
    check_host()
    final.parent.mkdir(parents=True, exist_ok=True)
    # Downloads go to a scratch folder; the environment appears whole or not at all (another
    # process that built it meanwhile wins).
    with tempfile.TemporaryDirectory(prefix=".build-", dir=final.parent) as tmp, atomic_dir(final) as staging:
        _build(QemuEnv(staging), versions, Path(tmp))
    return env


def _build(env: QemuEnv, versions: dict[str, str], work: Path) -> None:
    debs, wheels = work / "debs", work / "wheels"
    for folder in (debs, wheels, env.sysroot):
        folder.mkdir(parents=True)
    done = subprocess.run(["apt-get", "download", *(f"{p}:arm64" for p in DEBIAN_PACKAGES)], cwd=debs,
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing = [p for p in DEBIAN_PACKAGES if p in done.stderr] or list(DEBIAN_PACKAGES)
        raise UserError(f"arm64 package {missing[0]} cannot be downloaded ({_last(done.stderr)}); "
                        "run sudo apt-get update (after sudo dpkg --add-architecture arm64)")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(env.sysroot)], check=True, capture_output=True)
    for name, version in versions.items():
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.11", *platforms, "-d", str(wheels), f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"the aarch64 wheel {name}=={version} cannot be downloaded ({_last(done.stderr)}); try: "
                            f"pip download --platform manylinux_2_28_aarch64 --only-binary=:all: {name}=={version}")
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(env.sysroot / SITE)
    for level in ARM_LEVELS.values():
        root = env.level_root(level)
        (root / "proc").mkdir(parents=True)
        for entry in env.sysroot.iterdir():
            if entry.name != "proc":
                (root / entry.name).symlink_to(Path("../../sysroot") / entry.name)
        (root / "proc" / "cpuinfo").write_text(level.cpuinfo(os.cpu_count() or 1), encoding="utf-8")
    for so in (env.sysroot / SITE).rglob("*.so*"):  # zipfile drops the executable bit
        so.chmod(0o755)
    (env.root / "complete").write_text(" ".join(f"{k}=={v}" for k, v in versions.items()) + "\n", encoding="utf-8")


def _last(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
