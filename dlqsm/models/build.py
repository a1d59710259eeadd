"""Build networks from plain ``_target_`` configs and load trained ones from checkpoints.

The training run stores the resolved network config (a dict with ``_target_`` keys, as written
in ``configs/model/*.yaml``) and ``metadata.json`` in every checkpoint. :func:`load_model`
rebuilds the network alone from that -- no Lightning, Hydra or training code needed -- so a
trained model can be used for inference anywhere dlqsm and torch are installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from dlqsm.errors import InputError

CHECKPOINT_KEY = "dlqsm"  # entry of a Lightning checkpoint dict that holds config and metadata


def locate(path: str):
    """Import ``package.module.Name`` and return the attribute."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"_target_ must be a dotted path, got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import _target_ {path!r}: {exc}") from exc


def build_from_config(cfg):
    """Instantiate a (nested) ``_target_`` config given as plain dicts and lists.

    Keys starting with ``_`` other than ``_target_`` (``_recursive_``, ``_convert_``) are
    ignored; ``_partial_: true`` is not supported (networks are built whole).
    """
    if isinstance(cfg, list | tuple):
        return [build_from_config(v) for v in cfg]
    if not isinstance(cfg, dict):
        return cfg
    if cfg.get("_partial_"):
        raise ValueError("build_from_config does not build _partial_ configs")
    kwargs = {k: build_from_config(v) for k, v in cfg.items() if not k.startswith("_")}
    if "_target_" not in cfg:
        return kwargs
    return locate(cfg["_target_"])(**kwargs)


def resolve_checkpoint(path) -> Path:
    """A checkpoint file from a path: a ``.ckpt``/``.pt`` file, a run dir or its checkpoints dir.

    For a directory, ``best.ckpt`` is preferred, then ``last.ckpt``.
    """
    p = Path(path)
    if p.is_dir():
        for cand in (p / "best.ckpt", p / "checkpoints" / "best.ckpt", p / "last.ckpt",
                     p / "checkpoints" / "last.ckpt"):
            if cand.is_file():
                return cand
        raise InputError("no best.ckpt or last.ckpt found in this folder.", path=p,
                         fix="give a checkpoint file or a training run folder.")
    if not p.is_file():
        raise InputError("checkpoint not found.", path=p, fix="check the path.")
    return p


def load_model(checkpoint_path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained network from a dlqsm checkpoint.

    Args:
        checkpoint_path: a Lightning checkpoint written by ``dlqsm train`` (``best.ckpt``,
            ``last.ckpt``), or a run folder containing ``checkpoints/``.
        map_location: device for the weights.

    Returns:
        ``(net, metadata)``: the network in eval mode (call it as
        ``net(field_ppm, mask, b0_dir, voxel_size) -> chi_ppm``) and the metadata dict
        (units, training geometry, input normalisation, config, git revision, metrics).
    """
    path = resolve_checkpoint(checkpoint_path)
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    info = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not info or "net_config" not in info:
        raise InputError("not a dlqsm checkpoint (no stored network config).", path=path,
                         fix="use a checkpoint written by 'dlqsm train'.")
    net = build_from_config(info["net_config"])
    prefix = info.get("state_dict_prefix", "net.")
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    net.eval()
    metadata = dict(info.get("metadata", {}))
    metadata["checkpoint"] = str(path)
    return net, metadata
