"""``dlqsm quickstart``: dlqsm's main job on built-in (simulated) data, on the CPU, in minutes.

1. trains a small 3D U-Net on simulated susceptibility maps (``experiment=quickstart_cpu``);
2. reconstructs adult-sized held-out simulated heads (164x205x205, 1 mm; seeds never used in
   training) with that network, with dlqsm's shipped default model (TV-ADMM plus a learned
   correction, ``dlqsm/assets/default_model``) and with classical inversions (TKD, TV-ADMM);
3. writes ``OUT/evaluation/summary.md`` (NRMSE, HFEN, XSIM, DGM linearity, time per volume),
   CSV tables and figures, and prints the table.

``--no-train`` skips step 1 (classical methods and the default model, or ``--checkpoint`` for a
trained model); ``--no-default-model`` leaves the shipped model out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    from dlqsm.cli.common import HelpFormatter, add_output, add_run_options

    p = subparsers.add_parser(
        "quickstart", help="train a small model on simulated data and compare it with "
        "classical inversion (CPU, minutes)", description=__doc__,
        formatter_class=HelpFormatter)
    add_output(p, required=False, default="quickstart_out")
    p.add_argument("--max-steps", type=int, default=None,
                   help="training steps (default: the quickstart_cpu experiment's)")
    p.add_argument("--heads", type=int, default=2, help="held-out simulated heads")
    p.add_argument("--shape", nargs=3, type=int, default=(164, 205, 205), metavar=("X", "Y", "Z"),
                   help="matrix of the held-out heads (1 mm voxels)")
    p.add_argument("--no-train", action="store_true", help="skip training")
    p.add_argument("--checkpoint", metavar="PATH", help="evaluate this trained model too")
    p.add_argument("--methods", nargs="+", default=["tkd", "tv"], metavar="M",
                   help="classical methods")
    p.add_argument("--no-default-model", action="store_true",
                   help="leave the shipped default model out of the comparison")
    add_run_options(p)
    p.set_defaults(func=run, accepts_overrides=True)
    return p


def train_quickstart(out: Path, overrides: list[str], force: bool) -> Path:
    """Train ``experiment=quickstart_cpu`` into ``out``; returns its best checkpoint."""
    from dlqsm.errors import OutputExistsError
    from dlqsm.lit.train import run_hydra

    ckpt_dir = out / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.glob("*.ckpt")) and not force:
        raise OutputExistsError(f"{out} holds an earlier training run. Fix: choose another "
                                "output folder or pass --force.")
    run_hydra(["experiment=quickstart_cpu", "logger=csv", f"hydra.run.dir={out}",
               f"paths.log_dir={out.parent}", *overrides])
    ckpts = sorted(p for p in ckpt_dir.glob("*.ckpt") if p.name != "last.ckpt")
    return ckpts[-1] if ckpts else ckpt_dir / "last.ckpt"


READING = """\
How to read this table: `unet` is the small U-Net this quickstart just trained for a few
minutes on the CPU on small simulated volumes: it shows that simulation, training and inference
work end to end, not what a trained model reaches (expect it to trail TKD on adult heads).
`dlqsm-default` is the model dlqsm ships (TV-ADMM plus a learned correction, trained on 96
simulated adult heads; docs/model_card.md): it shows the accuracy, on heads from dlqsm's own
simulator. For data dlqsm did not simulate see `dlqsm evaluate --suite independent`."""


def run(args) -> int:
    from dlqsm.evaluation.runner import run_evaluation
    from dlqsm.inference import default_model_installed
    from dlqsm.io.outputs import OutputDir
    from dlqsm.pipeline.reconstruct import resolve_device

    out = Path(args.out)
    device = str(resolve_device(args.device))  # the evaluation's; training stays on the CPU
    overrides = list(args.overrides or [])
    if args.max_steps is not None:
        overrides.append(f"++trainer.max_steps={args.max_steps}")
    if args.quiet:
        overrides.append("++trainer.enable_progress_bar=false")

    def say(text):
        if not args.quiet:
            print(text, file=sys.stderr)

    OutputDir(out, force=args.force).check([])  # writable, before any work
    with OutputDir(out).lock():  # one quickstart writes into a folder at a time
        methods: list = list(args.methods)
        ckpt = args.checkpoint
        if not args.no_train:
            say(f"[1/2] training a small U-Net on simulated data (CPU) into {out / 'train'}")
            ckpt = str(train_quickstart(out / "train", overrides, args.force))
        if ckpt:
            methods.append({"name": "unet", "kind": "learned", "checkpoint": ckpt})
        if not args.no_default_model and default_model_installed():
            methods.append({"name": "dlqsm-default", "kind": "learned", "checkpoint": None})
        say(f"[2/2] reconstructing {args.heads} held-out simulated heads")
        result = run_evaluation({
            "methods": methods, "out_dir": str(out / "evaluation"), "force": args.force,
            "device": device, "progress": not args.quiet,
            "title": "dlqsm quickstart: learned vs classical on held-out simulated heads",
            "data": {"heads": {"count": args.heads, "shape": list(args.shape),
                               "voxel_size": [1.0, 1.0, 1.0], "noise_std": 0.0,
                               "b0_tilt_deg": 0.0}, "folders": []},
        })
    summary = out / "evaluation" / "summary.md"
    if summary.exists():
        print(summary.read_text())
        print(READING)
    say(f"results: {out / 'evaluation'}")
    return 0 if result is not None else 1
