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


class OutputBusyError(DlqsmError):
    """Another dlqsm run is writing into the same output folder."""


class OutputNotWritableError(DlqsmError, PermissionError):
    """The output path cannot be written (a file, a read-only folder or file system)."""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_parameter_types(given: dict, defaults: dict, *, what: str) -> None:
    """Refuse parameter values whose type cannot stand in for the default's.

    A number is needed where the default is a number (an int is accepted for a float and the
    reverse), true/false where it is a boolean, a list where it is a list or tuple (a single
    number is accepted there too). Defaults of None or other types accept anything.

    Args:
        given: ``{name: value}`` as the user gave them.
        defaults: ``{name: default}`` of the function they are passed to.
        what: the owner for messages, e.g. ``"inversion (tkd)"``.

    Raises:
        InputError: naming the parameter, its value and the expected type.
    """
    for name, value in given.items():
        default = defaults.get(name)
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif _is_number(default):
            ok, want = _is_number(value), "a number"
        elif isinstance(default, (list, tuple)):
            ok, want = _is_number(value) or isinstance(value, (list, tuple)), "a number or a list"
        else:
            continue
        if not ok:
            raise InputError(f"parameter {name!r} of {what} must be {want} (default "
                             f"{default!r}), got {value!r}.",
                             fix=f"write e.g. --param {name}={default!r}".replace("'", "")
                             .replace("True", "true").replace("False", "false") + ".")
