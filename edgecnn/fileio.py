"""Atomic file output: the one way edgecnn writes a file.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so a reader (or a crash) never sees half a file. ``mkstemp`` creates files with mode
0600; artifacts are meant to be shared, so they get the usual ``0666 & ~umask`` instead.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def current_umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_file_mode() -> int:
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` with mode 0666 & ~umask.

    For writers that want a file name rather than a file object (``onnx.save``, ``torch.save``).
    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, shared_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_atomic(path: PathLike, save: Callable[[Path], None]) -> Path:
    """Call ``save(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        save(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path`` (mode 0777 & ~umask).

    If ``path`` appeared meanwhile (another process built the same cache entry), theirs is
    kept and ours dropped. On any exception the temporary folder is removed.
    """
    import shutil

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def private_temp_dir(prefix: str) -> str:
    """A new folder only this user can enter (mode 0700), for scratch state such as sockets; the
    caller removes it."""
    return tempfile.mkdtemp(prefix=prefix)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (artifacts can be large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
