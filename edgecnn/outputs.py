"""Output rules shared by every command that writes (compress, export, compile, pack, unpack, finetune).

The promise they keep: nothing the user owns is overwritten without ``--force``; ``--force``
replaces only what edgecnn made (a folder marked by :data:`MANIFEST` inside it; a file whose
own bytes say so, i.e. edgecnn's ONNX metadata or the ``.ecnn`` header, or else whose sidecar
record ``.<name>.edgecnn.json`` still matches its SHA-256); an output that is one of the
command's inputs is refused even with ``--force``; an output that cannot be written is named
as the problem before any work starts; a default output path follows the same rules as one
given with ``-o``. Checks run before the work and again when the result is committed, under a
lock that keeps two runs from writing the same path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from edgecnn.errors import UserError
from edgecnn.fileio import file_sha256

MANIFEST = "edgecnn-output.json"  # written into every output folder: marks it as edgecnn's to replace
RECORD_SUFFIX = ".edgecnn.json"  # ``.<name>.edgecnn.json`` beside a file whose bytes do not name edgecnn
ECNN_MAGIC = b"ECNN"  # first bytes of every .ecnn file (edgecnn.pack.decoder.MAGIC)
ONNX_METADATA_PREFIX = "edgecnn."  # edgecnn's ONNX metadata_props keys (edgecnn.export.metadata)

PathLike = Union[str, "os.PathLike[str]"]


def absolute(path: PathLike) -> Path:
    """``path`` made absolute with ``.`` and ``..`` folded (symlinks kept), so it always has a name."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _probe_writable(folder: Path, output: PathLike) -> None:
    """Create and remove a file in ``folder``: the only check that also holds for root and /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgecnn-probe-", dir=folder)
    except OSError as exc:
        raise UserError(f"cannot write the output '{output}' ({_reason(exc)} in '{folder}'); choose another -o path") from None
    os.close(fd)
    os.unlink(probe)


def _check_parent(path: Path, output: PathLike, create: bool) -> None:
    """The folder that will hold ``path`` exists (or can be made, when ``create``) and is writable."""
    parent = path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write the output '{output}': '{existing}' is a file, not a folder; choose another -o path")
    if existing != parent and not create:
        raise UserError(f"cannot write the output '{output}': folder '{parent}' does not exist; create it or choose another -o path")
    _probe_writable(existing, output)


# --- inputs are never outputs --------------------------------------------------------------


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (links and ``..`` included), existing or not."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(absolute(a)) == os.path.realpath(absolute(b))


def check_not_an_input(output: PathLike, inputs: Iterable[Optional[PathLike]], holds: bool = False) -> None:
    """Refuse an output that is one of the command's inputs (``holds``: or a folder holding one).

    Even ``--force`` never replaces an input: the command would destroy what it reads.
    """
    out_real = Path(os.path.realpath(absolute(output)))
    for item in inputs:
        if item is None or str(item) == "":
            continue
        if same_file(output, item):
            raise UserError(f"output '{output}' is the input '{item}'; choose another -o path "
                            "(an input is never replaced, even with --force)")
        if holds and out_real in Path(os.path.realpath(absolute(item))).parents:
            raise UserError(f"output folder '{output}' holds the input '{item}', and edgecnn replaces its output "
                            "folder as a whole; choose another -o (an input is never replaced, even with --force)")


def model_input_files(model_ref: str, weights: Optional[str] = None) -> list[str]:
    """The files a MODEL reference reads (a user's ``file.py``, a weights file): outputs may not be these."""
    files = []
    path, sep, attr = str(model_ref).rpartition(":")
    if sep and path.endswith(".py"):
        files.append(path)
    if weights and weights != "imagenet":
        files.append(weights)
    return files


# --- single files -------------------------------------------------------------------------


def record_path(path: PathLike) -> Path:
    """Where the sidecar record of the output file ``path`` lives."""
    path = absolute(path)
    return path.with_name(f".{path.name}{RECORD_SUFFIX}")


def _marked_by_content(path: Path) -> bool:
    """The file's own bytes say edgecnn made it: the .ecnn header, or edgecnn's ONNX metadata."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(ECNN_MAGIC))
    except OSError:
        return False
    if head == ECNN_MAGIC:
        return True
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX (protobuf raises DecodeError and friends)
        return False
    return bool(model.graph.node) and any(p.key.startswith(ONNX_METADATA_PREFIX) for p in model.metadata_props)


def _record_matches(path: Path) -> bool:
    try:
        data = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "edgecnn" and data.get("sha256") == file_sha256(path)


def is_edgecnn_file(path: PathLike) -> bool:
    """True when edgecnn wrote the file at ``path`` (so --force may replace it)."""
    path = absolute(path)
    return path.is_file() and (_marked_by_content(path) or _record_matches(path))


def record_output(path: PathLike, command: str) -> None:
    """Mark a file edgecnn just wrote as its own, for a later ``--force``.

    Files whose bytes already say so (ONNX with edgecnn metadata, .ecnn) need nothing; any other
    (an engine, a checkpoint, a foreign ONNX unpacked) gets a sidecar record holding its SHA-256,
    so a file the user later puts in its place is not mistaken for edgecnn's.
    """
    from edgecnn import __version__
    from edgecnn.fileio import write_text_atomic

    path = absolute(path)
    record = record_path(path)
    if _marked_by_content(path):
        with contextlib.suppress(OSError):
            record.unlink()
        return
    text = json.dumps({"tool": "edgecnn", "version": __version__, "command": command, "file": path.name,
                       "sha256": file_sha256(path)}) + "\n"
    with writing(record):
        write_text_atomic(record, text)


def check_output_file(path: PathLike, force: bool, create_parent: bool = False,
                      inputs: Iterable[Optional[PathLike]] = ()) -> Path:
    """Refuse an output file that is an input, exists (without ``force``, or not edgecnn's), is a
    folder, or cannot be written.

    Call it before the work starts, for a path given with ``-o`` and for a default one alike,
    and again when the result is put in place.
    """
    shown = path
    path = absolute(path)
    if path.is_dir():
        raise UserError(f"output '{shown}' is a folder; give a file name with -o")
    check_not_an_input(shown, inputs)
    if path.exists():
        if not force:
            raise UserError(f"output '{shown}' already exists; pass --force to overwrite it or choose another -o path")
        if not is_edgecnn_file(path):
            raise UserError(f"output '{shown}' was not written by edgecnn (no edgecnn metadata, .ecnn header or "
                            f"{record_path(path).name} record), so even --force does not replace it; choose another "
                            "-o path or remove it yourself")
    _check_parent(path, shown, create_parent)
    return path


@contextlib.contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a one-line error that names the output."""
    try:
        yield
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"cannot write the output '{path}' ({_reason(exc)}); choose another -o path") from None


# --- folders ------------------------------------------------------------------------------


def is_edgecnn_output(folder: PathLike) -> bool:
    """True when ``folder`` holds edgecnn's manifest (so --force may replace it)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "edgecnn"


def write_manifest(folder: PathLike, command: str) -> Path:
    from edgecnn import __version__
    from edgecnn.fileio import write_text_atomic

    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = json.dumps({"tool": "edgecnn", "version": __version__, "command": command, "created_utc": created}) + "\n"
    return write_text_atomic(Path(folder) / MANIFEST, text)


def _holds_cwd(path: Path) -> bool:
    cwd = absolute(os.getcwd())
    return cwd == path or path in cwd.parents


def check_output_dir(path: PathLike, force: bool, inputs: Iterable[Optional[PathLike]] = ()) -> Path:
    """Refuse an output folder that edgecnn may not replace; returns the absolute path.

    An empty folder is used as is. A non-empty one needs ``force`` *and* edgecnn's manifest:
    a folder edgecnn never wrote is never deleted. The current folder (``-o .``) and those
    above it are refused, because the result replaces the output folder as a whole.
    """
    shown = path
    path = absolute(path)
    if path.parent == path:
        raise UserError(f"output folder '{shown}' is the file system root; choose a sub-folder with -o")
    if path.exists() and not path.is_dir():
        raise UserError(f"output path '{shown}' is a file; choose another -o folder")
    check_not_an_input(shown, inputs, holds=True)
    if _holds_cwd(path):
        raise UserError(
            f"output folder '{shown}' is the current folder or holds it, and edgecnn replaces its output folder "
            "as a whole; give a new sub-folder, e.g. -o ./edgecnn-out"
        )
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UserError(f"output folder '{shown}' already exists; pass --force to replace it or choose another -o")
        if not is_edgecnn_output(path):
            raise UserError(
                f"output folder '{shown}' was not written by edgecnn (no {MANIFEST} in it), so even --force "
                "does not replace it; choose another -o or empty it yourself"
            )
    _check_parent(path, shown, create=True)
    return path


@contextlib.contextmanager
def output_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (a ``.<name>.lock`` file beside it).

    A second run writing the same output fails at once with one line instead of both running
    and one result silently replacing the other.
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform: rely on the commit-time check
        yield
        return
    path = absolute(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write the output '{path}' ({_reason(exc)}); choose another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"another edgecnn run is writing '{path}' now; wait for it to finish or choose another -o"
                ) from None
            raise
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def make_work_dir(path: Path) -> Path:
    """A temporary folder beside ``path`` (same file system, so the commit is one rename)."""
    from edgecnn.fileio import current_umask

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the result is a normal folder
    except OSError as exc:
        raise UserError(f"cannot create the output folder '{path}' ({_reason(exc)}); choose another -o") from None
    return tmp


def commit_dir(work: Path, path: Path, force: bool, shown: Optional[PathLike] = None) -> None:
    """Move the finished ``work`` folder to ``path``, re-checking the rules first.

    Something may have appeared at ``path`` while the job ran: it is replaced only under the
    same rules as at the start. An old edgecnn folder (with ``force``) is removed last.
    """
    check_output_dir(shown if shown is not None else path, force)
    swap_into_place(work, path)


def swap_into_place(work: Path, path: Path) -> None:
    """Rename ``work`` onto ``path``; a folder already there is moved aside first and removed last
    (put back if the rename fails). Callers check that it may be replaced."""
    import shutil

    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(work, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
