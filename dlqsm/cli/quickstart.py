"""``dlqsm quickstart``: dlqsm's main job on built-in (simulated) data, on the CPU, in minutes.

1. simulates a few whole training heads (``--train-heads``, plus one for validation) with their
   TKD estimate, and trains TKD plus a small 3D U-Net correction on random 32^3 patches of them
   (``experiment=quickstart_residual``; the correction's gain starts at 0, so the untrained
   model is TKD itself); the heads are deleted afterwards unless ``--keep-data``;
2. reconstructs held-out simulated heads (164x205x205, 1 mm; seeds never used in training) with
   that model (``tkd+unet``), with dlqsm's shipped default model (TV-ADMM plus a learned
   correction, ``dlqsm/assets/default_model``) and with classical inversions (TKD, TV-ADMM);
3. writes ``OUT/evaluation/summary.md`` (NRMSE, HFEN, XSIM, DGM linearity, time per volume),
   CSV tables and figures, and prints the table.

``--no-train`` skips step 1 (classical methods and the default model, or ``--checkpoint`` for a
trained model); ``--no-default-model`` leaves the shipped model out. Hydra overrides after the
flags go to the training run (e.g. ``trainer.max_epochs=2``).
"""

from __future__ import annotations

import argparse
import shutil
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
                   help="matrix of the held-out and the training heads (1 mm voxels)")
    p.add_argument("--train-heads", type=int, default=TRAIN_HEADS, metavar="N",
                   help="simulated training heads (patches of them are the training data)")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the simulated training heads (OUT/train/data, ~100 MB a head)")
    p.add_argument("--no-train", action="store_true", help="skip training")
    p.add_argument("--checkpoint", metavar="PATH", help="evaluate this trained model too")
    p.add_argument("--methods", nargs="+", default=["tkd", "tv"], metavar="M",
                   help="classical methods")
    p.add_argument("--no-default-model", action="store_true",
                   help="leave the shipped default model out of the comparison")
    add_run_options(p)
    p.set_defaults(func=run, accepts_overrides=True)
    return p


TRAIN_HEADS = 4
EXPERIMENT = "quickstart_residual"
LEARNED_NAME = "tkd+unet"


def simulate_training_heads(data_dir: Path, shape, count: int, *, force: bool,
                            progress: bool) -> None:
    """Write ``count`` training heads and one validation head, each with its TKD estimate, to
    ``data_dir/heads/{train,val}`` (``simulation=head_cases``, uncompressed, as
    ``configs/experiment/quickstart_residual.yaml`` reads them).

    Args:
        data_dir: folder (created). shape: head matrix (X, Y, Z), 1 mm voxels.
        count: training heads (>= 1). force: overwrite an earlier set.
    """
    from dlqsm.cli.simulate import compose_config, simulate_from_config
    from dlqsm.errors import InputError

    if count < 1:
        raise InputError(f"--train-heads must be >= 1, got {count}.")
    for split, n, seed in (("train", count, 0), ("val", 1, 1)):
        simulate_from_config(compose_config([
            "simulation=head_cases", "simulation.method=tkd",
            f"simulation.dataset.shape=[{','.join(str(int(v)) for v in shape)}]",
            f"out_dir={data_dir / 'heads' / split}", f"n_samples={n}", f"seed={seed}",
            "compress=false", f"progress={str(progress).lower()}",
            f"force={str(force).lower()}"]))


def train_quickstart(out: Path, overrides: list[str], force: bool) -> Path:
    """Train ``experiment=quickstart_residual`` into ``out``; returns its best checkpoint.

    ``overrides`` must say where the training heads are (``paths.data_dir=...``, see
    :func:`simulate_training_heads`).
    """
    from dlqsm.errors import OutputExistsError
    from dlqsm.lit.train import run_hydra

    ckpt_dir = out / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.glob("*.ckpt")) and not force:
        raise OutputExistsError(f"{out} holds an earlier training run. Fix: choose another "
                                "output folder or pass --force.")
    run_hydra([f"experiment={EXPERIMENT}", "logger=csv", f"hydra.run.dir={out}",
               f"paths.log_dir={out.parent}", *overrides])
    ckpts = sorted(p for p in ckpt_dir.glob("*.ckpt") if p.name != "last.ckpt")
    return ckpts[-1] if ckpts else ckpt_dir / "last.ckpt"


READING = """\
How to read this table: `tkd+unet` is TKD plus a small U-Net correction that this quickstart
just trained for a few minutes on the CPU, on patches of a few simulated heads (other seeds
than the held-out heads). The correction starts at zero (the untrained model is TKD itself),
so the gap between its row and `tkd` is what those minutes of training bought: it shows that
simulation, training and inference work end to end, not what a trained model reaches.
`dlqsm-default` is the model dlqsm ships (TV-ADMM with a per-scan weight plus a learned
correction, trained for hours on simulated adult heads and brain-like anatomy;
docs/model_card.md): it shows the accuracy, on heads from dlqsm's own simulator. For data
dlqsm did not simulate see `dlqsm evaluate --suite independent`."""


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
            data_dir = out / "train" / "data"
            say(f"[1/3] simulating {args.train_heads} training heads (+1 for validation) with "
                f"their TKD estimate into {data_dir}")
            simulate_training_heads(data_dir, args.shape, args.train_heads, force=args.force,
                                    progress=not args.quiet)
            say(f"[2/3] training TKD + a small U-Net correction (CPU) into {out / 'train'}")
            ckpt = str(train_quickstart(out / "train", [f"paths.data_dir={data_dir}",
                                                        *overrides], args.force))
            if not args.keep_data:
                shutil.rmtree(data_dir, ignore_errors=True)
        if ckpt:
            name = LEARNED_NAME if not args.no_train else "checkpoint"
            methods.append({"name": name, "kind": "learned", "checkpoint": ckpt})
        if not args.no_default_model and default_model_installed():
            methods.append({"name": "dlqsm-default", "kind": "learned", "checkpoint": None})
        say(f"[{'3/3' if not args.no_train else '1/1'}] reconstructing {args.heads} held-out "
            "simulated heads")
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
