#!/usr/bin/env python
"""Copy a simulated dataset with a new classical estimate (chi_init) per sample.

Training a refining network (``model=tv_resunet``) on estimates made with other inversion
settings than those stored by ``dlqsm simulate``, without simulating again: the new folder
hard-links every other file. Example (the per-scan TV weight of ``reconstruct --local-field``):

    python scripts/reestimate_initial.py data/brains/train data/brains_auto/train --param alpha=auto

Train with the same settings on the model (``model.params={alpha: auto}``): the network then
sees at inference the estimate it was trained on.
"""

from __future__ import annotations

import argparse
import json
import sys

from dlqsm.errors import DlqsmError
from dlqsm.simulation.wrappers import reestimate_dataset


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # e.g. auto


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="dataset folder written by `dlqsm simulate`")
    ap.add_argument("dst", help="new folder (created; other files hard-linked)")
    ap.add_argument("--method", default="tv", help="classical inversion (default tv)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="inversion parameter, repeatable (e.g. alpha=auto, alpha=1e-3)")
    ap.add_argument("--force", action="store_true", help="replace existing estimates in dst")
    args = ap.parse_args(argv)
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--param needs NAME=VALUE, got {item!r}")
        params[name.strip()] = _value(value.strip())
    try:
        result = reestimate_dataset(args.src, args.dst, method=args.method, params=params,
                                    force=args.force)
    except DlqsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
