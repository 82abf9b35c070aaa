"""User-facing errors: one line naming the problem and the fix, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (file, flag, config). The CLI prints ``edgecnn: error: <msg>``."""

    exit_code = 2


def require(module_name: str, extra: str):
    """Import an optional dependency or raise a UserError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"this needs the Python package '{module_name.split('.')[0]}' ({exc}); "
            f"install it with: pip install 'edgecnn[{extra}]'"
        ) from None
