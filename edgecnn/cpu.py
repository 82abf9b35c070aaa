"""The host CPU, as the int8 kernels see it: its flags and the class they put it in.

ONNX Runtime (MLAS) picks its int8 kernels by instruction set at load time, so the same
Q/DQ file computes differently by CPU class: on x86 CPUs with AVX2 but no VNNI, u8 x s8 pairs
go through VPMADDUBSW, whose int16 sums saturate with full 8-bit s8 weights; with AVX-512 VNNI
or AVX-VNNI (VPDPBUSD) they accumulate in int32 and do not. On ARM64, the dot-product (SDOT,
``asimddp``) and matrix-multiply (SMMLA, ``i8mm``) instructions decide the kernel. A target
declares the classes it is for (``cpu_classes`` in :mod:`edgecnn.targets`); this module names
the class of the machine it runs on. Bottom of edgecnn: standard library only, no torch, so
the device agent uses it as is.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from typing import Iterable, Optional

# Flags worth recording with a measurement (x86 ``flags``, ARM64 ``Features`` in /proc/cpuinfo).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2",
             "bf16", "fphp", "asimdhp")

# Class name -> what it means for int8 kernels; most capable first within an architecture.
CPU_CLASSES: dict[str, str] = {
    "x86-vnni": "x86-64 with AVX-512 VNNI or AVX-VNNI: u8 x s8 products accumulate in int32",
    "x86-avx2": "x86-64 with AVX2, no VNNI: u8 x s8 pairs summed in int16 (VPMADDUBSW), saturating",
    "arm64-i8mm": "ARM64 with the int8 matrix multiply (I8MM: SMMLA/UMMLA)",
    "arm64-dot": "ARM64 with the dot-product instructions (SDOT/UDOT), no I8MM",
    "arm64-neon": "ARM64 (ARMv8.0 NEON): widening multiplies, no dot product",
    "other": "no AVX2 and not ARM64: ONNX Runtime's generic kernels",
}

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM64 = ("aarch64", "arm64")


def parse_flags(cpuinfo: str) -> frozenset:
    """Every flag of the first processor in a /proc/cpuinfo text (x86 ``flags``, ARM ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# /proc/cpuinfo fields that name the core design: x86 family/model/stepping, ARM implementer/part.
_IDENTITY_FIELDS = (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"),
                    ("CPU implementer", "implementer"), ("CPU part", "part"), ("CPU variant", "variant"))


def parse_identity(cpuinfo: str) -> str:
    """The first processor's core design in a /proc/cpuinfo text ("family 23 model 49 stepping 0",
    "implementer 0x41 part 0xd0c variant 0x1"); "" when the text has none.

    A hypervisor may name very different cores alike ("AMD EPYC"), and within one CPU class the
    int8 kernels' speed relative to fp32 differs by core design, so results record it.
    """
    names = dict(_IDENTITY_FIELDS)
    found: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        label = names.get(key.strip())
        if sep and label and value.strip() and label not in found:  # the first processor's value
            found[label] = value.strip()
    return " ".join(f"{label} {found[label]}" for _, label in _IDENTITY_FIELDS if label in found)


@lru_cache(maxsize=1)
def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo, read once ("" where it cannot be read, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def host_flags() -> frozenset:
    """The host's CPU flags (empty where /proc/cpuinfo cannot be read, e.g. not Linux)."""
    return parse_flags(read_cpuinfo())


@lru_cache(maxsize=1)
def host_identity() -> str:
    """The host's core design (:func:`parse_identity`; "" where /proc/cpuinfo cannot be read)."""
    return parse_identity(read_cpuinfo())


def cpu_flags(flags: Optional[Iterable[str]] = None) -> list[str]:
    """The flags of interest (:data:`CPU_FLAGS` order) among ``flags`` (default: the host's)."""
    present = set(host_flags() if flags is None else flags)
    return [f for f in CPU_FLAGS if f in present]


def classify(machine: str, flags: Iterable[str]) -> str:
    """The class (a key of :data:`CPU_CLASSES`) of a CPU of architecture ``machine`` with ``flags``."""
    flags = set(flags)
    machine = machine.lower()
    if machine in _X86:
        if flags & {"avx512_vnni", "avx_vnni"}:
            return "x86-vnni"
        return "x86-avx2" if "avx2" in flags else "other"
    if machine in _ARM64:
        if "i8mm" in flags:
            return "arm64-i8mm"
        return "arm64-dot" if "asimddp" in flags else "arm64-neon"
    return "other"


def host_class() -> str:
    """The class of the CPU edgecnn runs on."""
    return classify(platform.machine(), host_flags())


def describe_host() -> str:
    """One line for people: ``CPU class x86-avx2 (x86-64 with AVX2, no VNNI: ...)``."""
    name = host_class()
    return f"CPU class {name} ({CPU_CLASSES[name]})"
