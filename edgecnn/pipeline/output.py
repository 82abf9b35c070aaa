"""The output folder of a run, written atomically: built beside it, renamed into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from edgecnn.errors import UserError
from edgecnn.report import current_umask


class OutputFolder:
    """An output folder written atomically: build in ``.<name>.tmp-*`` beside it, then rename."""

    def __init__(self, path: Path, force: bool):
        self.path = Path(path)
        self.force = force
        self.tmp: Optional[Path] = None

    def check(self) -> None:
        """Refuse to overwrite an existing folder (or a file) unless --force."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output path '{self.path}' is a file; choose another -o folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.force:
            raise UserError(f"output folder '{self.path}' already exists; pass --force to replace it or choose another -o")

    def open(self) -> Path:
        self.check()
        parent = self.path.resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=parent))
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the result is a normal folder
        except OSError as exc:
            raise UserError(f"cannot create the output folder next to '{self.path}' ({exc.strerror}); choose another -o") from None
        return self.tmp

    def commit(self) -> None:
        """Swap the finished folder into place; the old one (with --force) is removed last."""
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.tmp = None

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
