"""``dlqsm study``: the cohort table of deep grey matter susceptibility from dlqsm derivatives.

A thin layer over :func:`dlqsm.study.table.write_study`.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  dlqsm reconstruct bids/ -o bids/derivatives/dlqsm --jobs 2        # every run (dataset mode)
  dlqsm study bids/derivatives/dlqsm --labels 'fs/sub-{sub}/mri/aseg.nii.gz'
  dlqsm study deriv/ --labels bids/derivatives/seg --label-names nuclei.tsv --reference csf

--labels: a path template with the run's entities ({sub}, {ses}, {acq}, {run}, ... and {key},
the whole run prefix such as sub-01_ses-1), one file for all runs, or a BIDS-derivatives folder
with sub-*/[ses-*/]anat/*_dseg.nii[.gz] (names from the dseg.tsv beside each). Label names: a
BIDS dseg.tsv (index, name) or a FreeSurfer colour table; default: FreeSurfer aseg numbers,
which FSL FIRST shares (10/49 thalamus, 11/50 caudate, 12/51 putamen, 13/52 pallidum).
Substantia nigra, red nucleus and dentate need a segmentation that names them. The label
image may be on another grid: it is resampled to the map's grid by nearest neighbour in world
coordinates (both affines).

outputs (in OUT, default DERIV/study/): chi_regions.csv (one row per run, nucleus and side:
voxels, volume, mean/median/SD in ppm, reference values, participants.tsv columns) and
chi_regions.png (each nucleus across runs).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``study`` on the dispatcher's subparsers."""
    from dlqsm.cli.common import HelpFormatter, add_output, add_run_options

    p = subparsers.add_parser(
        "study",
        help="cohort table of deep grey matter chi from dlqsm derivatives",
        description="Mean/median/SD of chi in the deep grey nuclei of every run, from a "
        "segmentation you give, with participants.tsv joined; a CSV and a figure.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "derivatives",
        metavar="DERIV",
        help="folder written by dlqsm reconstruct/infer in dataset mode",
    )
    p.add_argument(
        "--labels",
        required=True,
        metavar="PATTERN",
        help="segmentation per run: template, file or BIDS-derivatives folder",
    )
    p.add_argument("--label-names", metavar="TSV", help="label index -> name table")
    p.add_argument(
        "--participants",
        metavar="TSV",
        help="participants.tsv to join (default: "
        "the raw dataset's, from dataset_description DatasetLinks)",
    )
    p.add_argument(
        "--reference",
        choices=("brain", "csf"),
        default="brain",
        help="region the relative values subtract (brain: the whole-brain mean; csf: the "
        "labelled CSF/ventricles)",
    )
    add_output(p, required=False, help="output folder (default DERIV/study)")
    add_run_options(p, device=False)  # the same --force and -q as every subcommand
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Write the table and figure; 0, or 1 when some runs could not be measured."""
    from dlqsm.study.table import write_study

    result = write_study(
        args.derivatives,
        labels=args.labels,
        label_names=args.label_names,
        participants=args.participants,
        out=args.out,
        reference=args.reference,
        force=args.force,
        quiet=args.quiet,
    )
    return 1 if result["failed"] else 0
