"""The ``dlqsm`` console script: a thin dispatcher over subcommand modules.

Each subcommand lives in ``dlqsm/cli/<name>.py`` and defines ``add_parser(subparsers)`` (which
registers its argparse parser) and ``run(args) -> int``. Hydra-configured jobs (``train``,
``simulate``) take Hydra overrides after the subcommand name. Modules are imported lazily so that
``dlqsm --help`` stays fast and a broken optional part cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dlqsm.cli.common import HelpFormatter
from dlqsm.errors import DlqsmError

SUBCOMMANDS = {
    "quickstart": "dlqsm.cli.quickstart",
    "reconstruct": "dlqsm.cli.reconstruct",
    "simulate": "dlqsm.cli.simulate",
    "train": "dlqsm.cli.train",
    "infer": "dlqsm.cli.infer",
    "evaluate": "dlqsm.cli.evaluate",
    "study": "dlqsm.cli.study",
}


def _available():
    mods = {}
    for name, modname in SUBCOMMANDS.items():
        try:
            mods[name] = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    import dlqsm

    parser = argparse.ArgumentParser(
        prog="dlqsm", description="Deep-learning quantitative susceptibility mapping (QSM).",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dlqsm {dlqsm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _available().values():
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except DlqsmError as exc:
        print(f"dlqsm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlqsm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
