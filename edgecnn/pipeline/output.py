"""The output folder of a run, under the rules of :mod:`edgecnn.outputs`.

Built in ``.<name>.tmp-*`` beside it while a lock on the path is held, marked as edgecnn's
own (its manifest), re-checked and renamed into place at the end, so a failed run leaves
nothing half-written, an existing folder as it was, and a folder edgecnn did not write alone.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Optional

from edgecnn import outputs


class OutputFolder:
    """An output folder written atomically: build beside it, re-check, then rename."""

    def __init__(self, path: Path, force: bool, inputs=()):
        self.path = Path(path)
        self.force = force
        self.inputs = list(inputs)  # what the run reads: never replaced, even with --force
        self.tmp: Optional[Path] = None
        self._lock: Optional[contextlib.ExitStack] = None

    def check(self) -> None:
        """Refuse an existing folder without --force, and one edgecnn did not write even with it."""
        outputs.check_output_dir(self.path, self.force, inputs=self.inputs)

    def open(self) -> Path:
        """Lock the output path (a second run stops here), check again, make the work folder."""
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(outputs.output_lock(self.path))
        try:
            self.check()
            self.tmp = outputs.make_work_dir(outputs.absolute(self.path))
        except BaseException:
            self._lock.close()
            raise
        return self.tmp

    def commit(self) -> None:
        """Mark the result as edgecnn's and swap it into place under the same rules as at the start."""
        outputs.write_manifest(self.tmp, "compress")
        outputs.commit_dir(self.tmp, outputs.absolute(self.path), self.force, shown=self.path)
        self.tmp = None
        self._lock.close()

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self._lock is not None:
            self._lock.close()
