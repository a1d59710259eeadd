"""``dlqsm infer``: learned QSM of one scan with a trained network.

Raw data (BIDS, QSM-CI, explicit phase/magnitude) first go through the classical field mapping
and background removal of ``dlqsm reconstruct`` (:func:`dlqsm.inference.local_field_from_scan`);
a local-field input goes straight to the network (:class:`dlqsm.inference.Predictor`). Writes
``chimap.nii.gz`` (ppm, the input's affine, referenced to the mean inside the mask) and
``record.json`` (model, its metadata, geometry, timings) atomically; nothing is overwritten
without ``--force``. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
import datetime
import sys

EXAMPLES = """\
examples:
  dlqsm infer --local-field lf.nii.gz --mask mask.nii.gz -o out/ --checkpoint best.ckpt
  dlqsm infer qsmci_input/ -o out/                    # raw QSM-CI folder, default model
  dlqsm infer bids/ --subject 01 -o out/ --bfr vsharp --device cuda --amp
  dlqsm infer bids/ -o bids/derivatives/dlqsm-infer --participant-label 01 02   # dataset mode
  dlqsm infer --local-field lf.nii.gz --mask m.nii.gz -o out/ --tile 96   # sliding windows

outputs (in OUT/): chimap.nii.gz (ppm, referenced to the mean inside the mask, 0 outside) and
its preview chimap.png, for raw input also totalfield.nii.gz, for raw or total-field input
localfield.nii.gz and mask.nii.gz; record.json with the model and its metadata, the B0
geometry and resampling used, timings and the sha256 of every map written. The inputs, the B0
rule (--b0-dir, --b0-source), --field-unit and --param are those of dlqsm reconstruct.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infer`` on the dispatcher's subparsers."""
    from dlqsm.cli.common import HelpFormatter, add_output
    from dlqsm.cli.reconstruct import add_input_arguments, add_run_arguments, add_stage_arguments

    p = subparsers.add_parser(
        "infer", help="learned QSM of one scan (raw phase or field map -> chi, ppm)",
        description="Learned QSM: classical field mapping and background removal when needed, "
        "then a trained network for the dipole inversion, at any B0 direction and voxel size.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    add_input_arguments(p, after_field="network")
    add_output(p)
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", metavar="PATH", help="trained model (.ckpt from dlqsm train "
                   "or a run folder); default: the model shipped with dlqsm")
    m.add_argument("--tile", nargs="*", type=int, metavar="N", default=None,
                   help="force sliding-window inference; optional window size (1 or 3 ints)")
    m.add_argument("--no-tile", action="store_true", help="force whole-volume inference")
    m.add_argument("--overlap", type=float, default=0.5, help="window overlap (fraction)")
    m.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    m.add_argument("--data-consistency", choices=("none", "l2", "tv"), default="none",
                   help="data-consistency iterations started from the network output so that "
                   "chi obeys the measured field: l2 (CG, proximal to the network), tv "
                   "(TV-ADMM correction) or none; recorded in record.json")
    m.add_argument("--dc-iters", type=int, default=10, metavar="N",
                   help="iterations of the data-consistency step")
    m.add_argument("--estimate-weight", choices=("by-input", "auto", "trained"),
                   default="by-input",
                   help="regularisation weight of the TV estimate that a residual model (the "
                   "shipped one) refines: auto (chosen per scan, as reconstruct's "
                   "tv.alpha=auto), trained (the weight the model was trained with), or by-input: "
                   "auto for a local-field input, trained from raw phase or a total field "
                   "(measured in docs/model_card.md)")
    add_stage_arguments(p.add_argument_group("field mapping (raw or total-field input)"),
                        inversion=False)
    add_run_arguments(p)
    from dlqsm.study.dataset import add_dataset_arguments

    add_dataset_arguments(p)  # dataset mode (dlqsm.study)
    p.set_defaults(func=run)
    return p


def _tile_option(args):
    """(tile, roi_size) from --tile / --no-tile."""
    from dlqsm.errors import InputError

    if args.tile is not None and args.no_tile:
        raise InputError("--tile and --no-tile contradict each other.", fix="give one of them.")
    if args.no_tile:
        return False, None
    if args.tile is None:
        return None, None
    if len(args.tile) not in (0, 1, 3):
        raise InputError(f"--tile takes no value, one or three window sizes, got {args.tile}.")
    return True, (args.tile or None)


def outputs_for(kind: str) -> list[str]:
    """Files written for a scan of ``kind`` ("raw", "total_field", "local_field")."""
    extra = ["totalfield.nii.gz"] if kind == "raw" else []
    if kind != "local_field":
        extra += ["localfield.nii.gz", "mask.nii.gz"]
    return ["chimap.nii.gz", "chimap.png", *extra, "record.json"]


def run(args) -> int:
    """Load the model and the scan, map the field if needed, run the network, write."""
    from dlqsm.study.dataset import is_dataset_mode, run_dataset

    if is_dataset_mode(args):  # a BIDS dataset: every run -> derivatives
        return run_dataset(args, command="infer", run_one=run)
    import time

    from dlqsm.cli.reconstruct import DETREND, scan_arguments, stage_params, write_maps
    from dlqsm.errors import InputError
    from dlqsm.inference import Predictor, local_field_from_scan
    from dlqsm.inference.predictor import estimate_params
    from dlqsm.io.outputs import OutputDir
    from dlqsm.io.scan import load_scan
    from dlqsm.pipeline.reconstruct import check_parameters, detrend_by_default, resolve_device

    t0 = time.perf_counter()
    out = OutputDir(args.out, force=args.force)
    out.check(["chimap.nii.gz", "chimap.png", "record.json"])  # before any work
    if args.mask_erosion < 0:
        raise InputError(f"--mask-erosion must be >= 0 mm, got {args.mask_erosion}.")
    tile, roi = _tile_option(args)
    methods = dict(unwrap=args.unwrap, echo_fit=args.echo_fit, bfr=args.bfr)
    params = stage_params(args.param, {"unwrap": args.unwrap, "echo_fit": args.echo_fit,
                                       "bfr": args.bfr, "inversion": None})
    params = check_parameters(params, **methods, method=None)  # once: trusted below
    resolve_device(args.device)  # a bad --device is refused before the model loads
    predictor = Predictor(args.checkpoint, device=args.device, tile=tile, roi_size=roi,
                          overlap=args.overlap, amp=args.amp, progress=not args.quiet,
                          data_consistency=args.data_consistency, dc_iters=args.dc_iters)
    with out.lock():
        scan = load_scan(args.input, **scan_arguments(args))
        scan.check_maskable()
        names = outputs_for(scan.kind)
        out.check(names)
        fmap = local_field_from_scan(scan, **methods, mask_erosion_mm=args.mask_erosion,
                                     device=predictor.device, progress=not args.quiet,
                                     stage_params=params)
        _say(args, f"network ({predictor.spec.name}) on {predictor.device} ...")
        detrend = DETREND[args.detrend]
        pred = predictor.run(fmap.local_field, fmap.mask, voxel_size=scan.grid.voxel_size,
                             b0_dir=scan.grid.b0_dir, weight=fmap.weight,
                             estimate_params=estimate_params(predictor, args.estimate_weight,
                                                             scan.kind),
                             detrend=detrend_by_default(fmap.parameters or {})
                             if detrend is None else detrend)
        total = time.perf_counter() - t0
        vols = {"chimap.nii.gz": pred.chi, "totalfield.nii.gz": fmap.total_field,
                "localfield.nii.gz": fmap.local_field, "mask.nii.gz": fmap.mask}
        hashes = write_maps(out, scan, vols, names, mask=fmap.mask)
        out.json("record.json", {**build_record(scan, fmap, pred, predictor, args, names,
                                                total), "sha256": hashes})
    for note in fmap.notices:
        _say(args, f"note: {note}")
    weight = estimate_summary(pred.info.get("initial_estimate_info"))
    if weight:
        _say(args, weight)
    _say(args, f"wrote {', '.join(names)} to {out.path} ({total:.1f} s)")
    return 0


def estimate_summary(info: dict | None) -> str | None:
    """One line on the classical estimate the model refined (its weight, and how it was chosen)
    from ``inference.initial_estimate_info``; None for a model without one."""
    from dlqsm.inference.predictor import estimate_weight_used

    used = estimate_weight_used(info)
    if used is None:
        return None
    auto = used["auto_weight"]
    how = (f"chosen for this scan ({auto.get('criterion', 'auto')}, record.json)" if auto
           else "as trained")
    return (f"initial estimate: {used['method'] or '?'} {used['parameter']} "
            f"{used['value']:.2g} {how}")


def _say(args, text: str) -> None:
    if not args.quiet:
        print(f"dlqsm infer: {text}", file=sys.stderr, flush=True)


def build_record(scan, fmap, pred, predictor, args, names, total_s) -> dict:
    """The JSON record: inputs, model and metadata, geometry and resampling, timings."""
    from dlqsm.cli.reconstruct import geometry_record
    from dlqsm.io.outputs import software_versions

    return {
        "command": "dlqsm infer " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else []),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input": {"kind": scan.kind, "sources": scan.sources, "shape": list(scan.shape)},
        "geometry": geometry_record(scan),
        "units": {"chimap": "ppm, referenced to its mean inside the mask (whole brain)",
                  "fields": "ppm"},
        "model": predictor.describe(),
        "inference": {k: v for k, v in pred.info.items() if k != "timings_s"},
        "field_mapping": {"parameters": fmap.parameters, "stage_info": fmap.info},
        "mask": {"voxels": int(fmap.mask.sum())},
        "timings_s": {**fmap.timings, "resample": pred.info["timings_s"]["resample"],
                      "network": pred.info["timings_s"]["network"],
                      "data_consistency": pred.info["timings_s"].get("data_consistency", 0.0),
                      "detrend": pred.info["timings_s"].get("detrend", 0.0),
                      "inference": pred.info["timings_s"]["total"], "total": total_s},
        "software": software_versions(),
        "notices": fmap.notices,
        "outputs": names,
    }
