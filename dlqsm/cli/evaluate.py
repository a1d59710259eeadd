"""``dlqsm evaluate``: compare learned and classical dipole inversion on data with ground truth.

A thin layer over :func:`dlqsm.evaluation.run_evaluation`: the flags build (or override) the
same configuration as ``configs/evaluate.yaml``. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  dlqsm evaluate --methods tkd tv --heads 3 -o eval/                # held-out simulated heads
  dlqsm evaluate --methods tkd tv --checkpoint best.ckpt --heads 2 --shape 96 120 120 -o eval/
  dlqsm evaluate --methods tkd tv --data /data/challenge2016 -o eval2016/    # in vivo, COSMOS
  dlqsm evaluate --config configs/evaluate.yaml -o eval/ --force
  --param tv.max_iter=50 sets a parameter of the method named tv (without a prefix: of every
  classical method); --checkpoint NAME=PATH names a learned method ('default' is the model
  shipped with dlqsm).

outputs (in OUT/): metrics.csv, summary.csv, roi_means.csv, summary.md, record.json and
figures/ (slice montages, error maps, ROI scatter); maps/ with --save-maps.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the dispatcher's subparsers."""
    from dlqsm.cli.common import HelpFormatter, add_output, add_param, add_run_options

    p = subparsers.add_parser(
        "evaluate", help="compare learned and classical QSM on data with ground truth",
        description="Run classical inversions and trained networks on held-out simulated heads "
        "and/or folders with reference maps; write metrics tables and figures.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--config", metavar="YAML", help="evaluation config (configs/evaluate.yaml); "
                   "the flags below override it")
    add_output(p, required=False, help="output folder (required without --config)")
    m = p.add_argument_group("methods")
    m.add_argument("--methods", nargs="+", metavar="M", help="inversion names (tkd tv ...) or "
                   "checkpoints; replaces the config's list")
    m.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]PATH",
                   help="add a trained model (repeatable)")
    add_param(m, help="parameter of the compared method named TARGET (e.g. tv.max_iter=50); "
              "without TARGET of every classical method; repeatable")
    m.add_argument("--estimate-weight", choices=("by-input", "auto", "trained"),
                   help="weight of the TV estimate that a residual model (the shipped one) "
                   "refines, as dlqsm infer's option: by-input (default; the per-scan weight, "
                   "since every case here is a local field), auto, or trained; a method's "
                   "options.estimate_weight in the config wins; recorded in record.json")
    d = p.add_argument_group("test data")
    d.add_argument("--heads", type=int, metavar="N", help="number of held-out simulated heads "
                   "(default 3, or 0 with --data)")
    d.add_argument("--shape", nargs=3, type=int, metavar=("X", "Y", "Z"),
                   help="head matrix (default 164 205 205)")
    d.add_argument("--voxel-size", nargs="+", type=float, metavar="MM", help="head voxel size")
    d.add_argument("--seed", type=int, help="first head seed (>= 1000000, default 1000000)")
    d.add_argument("--b0-tilt", type=float, metavar="DEG", help="B0 tilt of the heads")
    d.add_argument("--noise", type=float, metavar="PPM", help="field noise std of the heads")
    d.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="folder of cases with reference maps (repeatable)")
    d.add_argument("--layout", metavar="NAME|FILE", help="layout of the --data folders "
                   "(preset or file; default: detected)")
    s = p.add_argument_group("independent-data suite (needs dlqsm[eval]; docs/evaluation.md)")
    s.add_argument("--suite", choices=("independent",), help="instead of the comparison above: "
                   "dlqsm's default chain and model on qsm-forward heads (scored by qsm-ci), "
                   "its own simulator and real scans")
    s.add_argument("--suite-size", choices=("full", "reduced"), default="full",
                   help="adult heads (full) or small fast ones (reduced)")
    s.add_argument("--suite-methods", nargs="+", metavar="M",
                   help="methods of the suite (default: reconstruct infer local-tv); "
                   "reconstruct-tfi (raw phase -> reconstruct --method tfi) is opt-in; the "
                   "in vivo rows run the methods among these that apply to them")
    s.add_argument("--real-data", metavar="DIR", help="folder with challenge2016/ and "
                   "multiecho_small/ (default ../shared/data beside the repository, if present)")
    s.add_argument("--cache", metavar="DIR", help="cache of generated cases (default "
                   "$DLQSM_CACHE/qsmforward or ~/.cache/dlqsm/qsmforward)")
    r = add_run_options(p)
    r.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    r.add_argument("--save-maps", action="store_true", help="also write every map as NIfTI")
    r.add_argument("--title", help="title of summary.md")
    p.set_defaults(func=run)
    return p


def load_config(path) -> dict:
    """A YAML evaluation config as a plain dict (OmegaConf interpolations resolved)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from dlqsm.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError("config file does not exist.", path=p, fix="check the path.")
    try:
        raw = OmegaConf.load(p)
        if not OmegaConf.is_dict(raw):
            raise InputError("the config must be a mapping.", path=p)
        for key in ("hydra", "defaults"):  # Hydra's own settings (need Hydra's resolvers)
            raw.pop(key, None)
        return OmegaConf.to_container(raw, resolve=True)
    except InputError:
        raise
    except Exception as exc:  # omegaconf and yaml raise many types
        raise InputError(f"cannot read the config ({exc.__class__.__name__}: {exc}).",
                         path=p) from exc


def _apply_params(methods: list, items) -> list:
    """Put ``--param [METHOD.]KEY=VALUE`` items into the method list (strings become dicts)."""
    from dlqsm.cli.common import split_params
    from dlqsm.errors import InputError
    from dlqsm.pipeline.inversion import METHODS

    def name_of(m):
        return m.get("name", m.get("method")) if isinstance(m, dict) else m

    def classical(m):
        return (m in METHODS) if isinstance(m, str) else (
            (m.get("kind") or ("learned" if m.get("checkpoint") else "classical")) == "classical")

    methods = [dict(m) if isinstance(m, dict) else m for m in methods]
    for target, key, value, item in split_params(items):
        hits = [i for i, m in enumerate(methods)
                if (name_of(m) == target if target else classical(m))]
        if not hits:
            raise InputError(f"--param {item!r}: " + (f"no method named {target!r}." if target
                             else "no classical method to apply it to."),
                             fix="name one of the compared methods: "
                             f"{', '.join(str(name_of(m)) for m in methods) or 'none'}.")
        for i in hits[:1] if target else hits:
            m = methods[i]
            if isinstance(m, str):
                methods[i] = m = {"name": m, "kind": "classical", "method": m}
            m["params"] = {**(m.get("params") or {}), key: value}
    return methods


def build_config(args) -> dict:
    """The evaluation configuration from ``--config`` and the flags (flags win)."""
    import copy

    from dlqsm.errors import InputError
    from dlqsm.evaluation.runner import DEFAULT_CONFIG, renamed_config_keys
    from dlqsm.pipeline.reconstruct import resolve_device

    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if args.config:
        cfg.update(renamed_config_keys(load_config(args.config)))
    elif not args.out:
        raise InputError("no output folder.", fix="pass -o OUT (or --config).")
    methods = list(args.methods) if args.methods else list(cfg.get("methods") or [])
    cfg["methods"] = _apply_params(methods + list(args.checkpoint), args.param)
    data = copy.deepcopy(cfg.get("data") or {})
    if args.data:
        data["folders"] = [{"path": d, "layout": args.layout} for d in args.data]
        if args.heads is None:
            data["heads"] = None
    heads = dict(data.get("heads") or DEFAULT_CONFIG["data"]["heads"])
    for key, val in (("count", args.heads), ("shape", args.shape),
                     ("voxel_size", args.voxel_size), ("seed", args.seed),
                     ("b0_tilt_deg", args.b0_tilt), ("noise_std", args.noise)):
        if val is not None:
            heads[key] = val
    if data.get("heads") is not None or args.heads is not None:
        data["heads"] = heads
    cfg["data"] = data
    for key, val in (("out_dir", args.out), ("title", args.title),
                     ("estimate_weight", args.estimate_weight)):
        if val is not None:
            cfg[key] = val
    if args.device != "auto" or not args.config:  # the flag's default leaves a config's device
        cfg["device"] = args.device
    cfg["device"] = str(resolve_device(cfg.get("device") or "auto"))
    cfg["force"] = bool(args.force or cfg.get("force"))
    cfg["figures"] = bool(cfg.get("figures", True)) and not args.no_figures
    cfg["save_maps"] = bool(cfg.get("save_maps")) or args.save_maps
    cfg["progress"] = not args.quiet
    return cfg


def run(args) -> int:
    """Build the configuration, evaluate, report where the results are."""
    import sys

    from dlqsm.evaluation import run_evaluation
    from dlqsm.evaluation.runner import method_runners
    from dlqsm.io.outputs import OutputDir

    if getattr(args, "suite", None):
        return _run_suite(args)
    if getattr(args, "suite_methods", None):
        from dlqsm.errors import InputError

        raise InputError("--suite-methods applies to --suite independent only.",
                         fix="add --suite independent, or use --methods for the comparison.")
    cfg = build_config(args)
    # every checkpoint resolved and loaded once, before any output or test case: a missing,
    # foreign or unsafe checkpoint is refused at once (in one line)
    runners = method_runners(cfg["methods"], device=cfg["device"],
                             estimate_weight=cfg.get("estimate_weight", "by-input"))
    out = OutputDir(cfg["out_dir"], force=cfg["force"])
    out.check(["summary.md", "record.json"])  # writable, not someone else's, before any work
    with out.lock():  # one evaluation writes into a folder at a time
        result = run_evaluation(cfg, runners=runners)
    if not args.quiet:
        print(f"dlqsm evaluate: wrote {len(result.files)} files to {result.out_dir} "
              f"(summary.md)", file=sys.stderr)
    return 0


def _run_suite(args) -> int:
    """``--suite independent``: :func:`dlqsm.evaluation.independent_suite.run_suite`."""
    import sys

    from dlqsm.errors import InputError
    from dlqsm.evaluation.independent_suite import METHODS, run_suite
    from dlqsm.pipeline.reconstruct import resolve_device

    if not args.out:
        raise InputError("no output folder.", fix="pass -o OUT.")
    unused = [flag for flag, given in (
        ("--config", args.config), ("--methods", args.methods), ("--checkpoint", args.checkpoint),
        ("--param", args.param), ("--estimate-weight", args.estimate_weight),
        ("--heads", args.heads is not None), ("--shape", args.shape),
        ("--voxel-size", args.voxel_size), ("--seed", args.seed is not None),
        ("--b0-tilt", args.b0_tilt is not None), ("--noise", args.noise is not None),
        ("--data", args.data), ("--layout", args.layout)) if given]
    if unused:  # the suite runs dlqsm's own defaults on its own cases: say so, never ignore
        raise InputError(f"{', '.join(unused)} do not apply to --suite independent (it runs "
                         "dlqsm's default commands on its own cases).",
                         fix="drop them, choose the suite's methods with --suite-methods, or "
                             "run the comparison without --suite.")
    device = str(resolve_device(args.device or "cpu"))
    result = run_suite(args.out, size=args.suite_size, real_data=args.real_data or "auto",
                       cache_dir=args.cache, device=device, force=args.force,
                       methods=tuple(args.suite_methods or METHODS),
                       progress=not args.quiet, figures=not args.no_figures)
    if not args.quiet:
        print(f"dlqsm evaluate: wrote {len(result.files)} files to {result.out_dir} "
              f"(summary.md)", file=sys.stderr)
    return 0
