"""Jetson power state: a latency number means nothing without the nvpmodel mode and clocks.

On a Jetson the GPU/CPU clocks follow the power model (``nvpmodel -q``) and, unless
``jetson_clocks`` pinned them at maximum, scale with load: the same engine measures several times
slower. Every TensorRT measurement records this state and warns when clocks are not pinned.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass
class JetsonState:
    is_jetson: bool
    model: Optional[str] = None
    l4t_release: Optional[str] = None
    nvpmodel_mode: Optional[str] = None  # e.g. "MAXN" or "15W"
    nvpmodel_id: Optional[int] = None
    clocks_pinned: Optional[bool] = None  # None: could not tell (jetson_clocks missing or no permission)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _run(cmd: list[str]) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or "") + (done.stderr or "") if done.returncode == 0 else None


def parse_nvpmodel(text: str) -> tuple[Optional[str], Optional[int]]:
    """``nvpmodel -q`` prints ``NV Power Mode: MAXN`` then the mode id on the next line."""
    name = ident = None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(.+)$", line)
        if m:
            name = m.group(1).strip()
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                ident = int(lines[i + 1])
    return name, ident


def parse_jetson_clocks(text: str) -> Optional[bool]:
    """True when ``jetson_clocks --show`` reports every CPU and the GPU at their maximum.

    Lines look like ``cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600
    CurrentFreq=... IdleStates: ...`` and ``GPU MinFreq=306000000 MaxFreq=1300500000
    CurrentFreq=...``; pinned clocks have MinFreq == MaxFreq.
    """
    pairs = re.findall(r"^\s*(cpu\d+|GPU)\b.*?MinFreq=(\d+)\s+MaxFreq=(\d+)", text, flags=re.M)
    if not pairs:
        return None
    return all(int(low) == int(high) for _, low, high in pairs)


def detect(
    run: Callable[[list[str]], Optional[str]] = _run,
    tegra_release: Path = TEGRA_RELEASE,
    device_tree_model: Path = DEVICE_TREE_MODEL,
) -> JetsonState:
    """The Jetson state of this machine (``is_jetson=False`` elsewhere)."""
    release = tegra_release.read_text(errors="replace").strip() if tegra_release.is_file() else None
    model = None
    if device_tree_model.is_file():
        model = device_tree_model.read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    if release is None and not (model and ("jetson" in model.lower() or "nvidia" in model.lower())):
        return JetsonState(is_jetson=False)
    state = JetsonState(is_jetson=True, model=model, l4t_release=release.splitlines()[0] if release else None)
    text = run(["nvpmodel", "-q"])
    if text:
        state.nvpmodel_mode, state.nvpmodel_id = parse_nvpmodel(text)
    else:
        state.warnings.append("could not read the power mode (nvpmodel -q); record it by hand")
    clocks = run(["jetson_clocks", "--show"])
    state.clocks_pinned = parse_jetson_clocks(clocks) if clocks else None
    if state.clocks_pinned is False:
        state.warnings.append("clocks are not pinned: run 'sudo jetson_clocks' before measuring latency")
    elif state.clocks_pinned is None:
        state.warnings.append("could not tell whether jetson_clocks is set (needs sudo); run 'sudo jetson_clocks --show'")
    if state.nvpmodel_mode and "MAXN" not in state.nvpmodel_mode.upper():
        state.warnings.append(f"power mode is {state.nvpmodel_mode}, not MAXN: numbers are for this mode only")
    return state
