"""User-facing errors: one line naming the problem and the fix, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (file, flag, config). The CLI prints ``edgecnn: error: <msg>``."""

    exit_code = 2
