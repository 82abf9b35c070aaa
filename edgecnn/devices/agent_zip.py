"""The agent as one self-contained file for devices that do not have edgecnn installed.

A zip application of edgecnn's own Python files (no torch is imported on the agent's paths),
named by the hash of its contents: a device that already holds this exact agent gets no copy,
and a device never runs an agent of another edgecnn version than the host's.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from edgecnn.fileio import write_bytes_atomic

_MAIN = "import sys\nfrom edgecnn.measure.agent import main\nsys.exit(main())\n"


def agent_bytes() -> bytes:
    """The zip application's bytes (deterministic: sorted names, fixed timestamps)."""
    root = Path(__file__).resolve().parents[1]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name = "edgecnn/" + path.relative_to(root).as_posix()
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), path.read_bytes())
        zf.writestr(zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0)), _MAIN)
    return buf.getvalue()


def agent_zip(cache_dir: Path) -> Path:
    """``cache_dir/edgecnn-agent-<sha256[:16]>.pyz``, written once."""
    data = agent_bytes()
    path = Path(cache_dir) / f"edgecnn-agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
    return path
