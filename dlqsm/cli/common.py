"""What every ``dlqsm`` subcommand shares: one help formatter and one definition of the common
options, so that the command line speaks one language.

- :class:`HelpFormatter`: keeps the hand-written description/epilog layout and appends
  ``(default: ...)`` to every option that has a default.
- :func:`add_output`, :func:`add_run_options`: ``-o/--out``, ``--device`` (``auto`` everywhere:
  CUDA when available, else the CPU), ``--force``, ``-q/--quiet``.
- :func:`add_param` and :func:`split_params`: ``--param [TARGET.]KEY=VALUE``, split on the
  *first* dot. TARGET names a pipeline stage (``bfr``, ``unwrap``, ...), a method (``tv``,
  ``pdf``, ...) or, in ``dlqsm evaluate``, a compared method's name; without TARGET the
  parameter belongs to the dipole inversion (every classical inversion in ``dlqsm evaluate``).
  VALUE is read as a Python literal (numbers, lists, true/false/none), else kept as text.
"""

from __future__ import annotations

import argparse
import ast

DEVICE_HELP = "auto (CUDA when available, else the CPU), cpu, cuda or cuda:N"
PARAM_METAVAR = "[TARGET.]KEY=VALUE"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Raw description/epilog; every option with a non-empty default shows it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None
                or default is False or default is argparse.SUPPRESS or default == []):
            return text
        return f"{text} (default: %(default)s)"


def add_output(p, *, required: bool = True, default: str | None = None,
               help: str = "output folder") -> None:
    """``-o/--out OUT``: the output folder (the same flag in every subcommand)."""
    p.add_argument("-o", "--out", metavar="OUT", required=required, default=default, help=help)


def add_run_options(p, *, device: bool = True, title: str = "run"):
    """``--device``, ``--force`` and ``-q/--quiet`` in an argument group; returns the group."""
    g = p.add_argument_group(title)
    if device:
        g.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    g.add_argument("--force", action="store_true", help="overwrite existing outputs")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return g


def add_param(g, *, help: str) -> None:
    """``--param [TARGET.]KEY=VALUE`` (repeatable), see the module docstring."""
    g.add_argument("--param", action="append", default=[], metavar=PARAM_METAVAR, help=help)


def parse_value(text: str):
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"`` -> True, ``"[12,8]"`` -> [12, 8], else str."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def split_params(items) -> list[tuple[str | None, str, object, str]]:
    """``["alpha=1e-3", "bfr.tol=0.01"]`` -> ``[(None, "alpha", 0.001, "alpha=1e-3"),
    ("bfr", "tol", 0.01, "bfr.tol=0.01")]`` (target, key, value, the item as given).

    Raises:
        InputError: an item that is not ``[TARGET.]KEY=VALUE``.
    """
    from dlqsm.errors import InputError

    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        target, dot, name = key.strip().partition(".")
        if not dot:
            target, name = None, target
        if not sep or not name or (dot and not target):
            raise InputError(f"--param {item!r} is not {PARAM_METAVAR}.",
                             fix="write e.g. --param alpha=0.001 or --param bfr.tol=0.01.")
        out.append((target, name, parse_value(value), item))
    return out


def refuse_flags(arguments, *, command: str, allowed=(), keys: dict | None = None) -> None:
    """Commands configured by Hydra take ``key=value`` overrides: a ``--flag`` that is not in
    ``allowed`` is refused in one line that names the override to write instead
    (``--max-epochs 1`` -> ``trainer.max_epochs=1`` with ``keys={"max_epochs": ...}``; other
    flags -> their own name with dashes as underscores).

    Raises:
        InputError: for the first such flag.
    """
    from dlqsm.errors import InputError

    arguments = list(arguments or [])
    for i, arg in enumerate(arguments):
        name, eq, value = arg.partition("=")
        if not arg.startswith("-") or name in allowed:
            continue
        key = name.lstrip("-").replace("-", "_")
        nxt = arguments[i + 1] if i + 1 < len(arguments) else ""
        if not eq and nxt and "=" not in nxt and not nxt.startswith("-"):
            value = nxt
        raise InputError(f"dlqsm {command} takes Hydra overrides (key=value), not the flag "
                         f"{name}.", fix=f"write {(keys or {}).get(key, key)}={value or 'VALUE'} "
                         f"(dlqsm {command} --help lists the groups).")
