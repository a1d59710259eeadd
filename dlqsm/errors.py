"""Exceptions with messages meant for users: they name the file and the fix."""


class DlqsmError(Exception):
    """Base class of dlqsm's user-facing errors."""


class InputError(DlqsmError, ValueError):
    """Bad input data or arguments. The message names the file (if any) and how to fix it."""

    def __init__(self, message: str, path=None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}: ")
        parts.append(message)
        if fix:
            parts.append(f" Fix: {fix}")
        super().__init__("".join(parts))
        self.path = path
        self.fix = fix


class OutputExistsError(DlqsmError, FileExistsError):
    """An output would overwrite an existing result without ``--force``."""
