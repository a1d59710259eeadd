"""Load trained networks from checkpoints, export them, and build networks from configs.

The training run stores the resolved network config (a dict with ``_target_`` keys, as written
in ``configs/model/*.yaml``) and the metadata in every checkpoint. :func:`load_model` rebuilds
the network alone from that -- no Lightning, Hydra or training code needed -- so a trained model
can be used for inference anywhere dlqsm and torch are installed. :func:`export_model` writes
the small, inference-only form: a folder with ``model.pt`` (network config and weights) and
``metadata.json``, which :func:`load_model` reads as well.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from dlqsm.errors import InputError
from dlqsm.io.outputs import OutputDir

CHECKPOINT_KEY = "dlqsm"  # entry of a Lightning checkpoint dict that holds config and metadata
EXPORT_NAME = "model.pt"  # the weights file of an exported model folder


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


DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"
"""Where the default model is shipped (an exported model folder)."""


def default_model_installed() -> bool:
    """Whether the shipped default model (:data:`DEFAULT_MODEL_DIR`) is present."""
    return (DEFAULT_MODEL_DIR / EXPORT_NAME).is_file()


class CheckpointPath(type(Path())):
    """A model path that :func:`resolve_checkpoint` has checked (it exists, or it is the
    shipped default model's folder). :func:`resolve_checkpoint` returns it unchanged, so a
    command resolves its checkpoint once and passes this down."""


def resolve_checkpoint(checkpoint=None) -> Path:
    """Which model to use: ``checkpoint`` if given (it must exist), else the shipped default.

    This is the one check of a user-given checkpoint path (:func:`find_model_file` then picks
    the file inside a folder); a :class:`CheckpointPath` (its own result) is not checked again.

    Returns:
        :class:`CheckpointPath`: the path as given (a file or a folder), or
        :data:`DEFAULT_MODEL_DIR`.

    Raises:
        InputError: the given path does not exist, or no checkpoint was given and no default
            model is installed.
    """
    if isinstance(checkpoint, CheckpointPath):
        return checkpoint
    if checkpoint is not None:
        p = Path(checkpoint)
        if not p.exists():
            raise InputError("checkpoint does not exist.", path=p,
                             fix="pass a trained model: a Lightning .ckpt from `dlqsm train` "
                                 "or an exported model folder.")
        return CheckpointPath(p)
    d = DEFAULT_MODEL_DIR
    if default_model_installed():
        return CheckpointPath(d)
    raise InputError(
        f"no checkpoint given and no default model is installed (expected {d}).",
        fix="pass --checkpoint PATH (a .ckpt written by `dlqsm train`, e.g. "
            "logs/train/runs/<date>/checkpoints/last.ckpt, or an exported model folder).")


def find_model_file(path) -> Path:
    """The model file for a path: a file, an exported model folder, a run dir or its checkpoints.

    For a directory: ``model.pt`` (exported) first, then ``best.ckpt``, then ``last.ckpt``
    (directly inside or under ``checkpoints/``).
    """
    p = Path(path)
    if p.is_dir():
        for name in (EXPORT_NAME, "best.ckpt", "checkpoints/best.ckpt", "last.ckpt",
                     "checkpoints/last.ckpt"):
            if (p / name).is_file():
                return p / name
        raise InputError("no model.pt, best.ckpt or last.ckpt found in this folder.", path=p,
                         fix="give a checkpoint file, an exported model or a training run folder.")
    if not p.is_file():
        raise InputError("checkpoint not found.", path=p, fix="check the path.")
    return p


def _safe_load(path: Path, map_location):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    A file that needs pickled classes (a whole pickled model, another project's checkpoint) or
    is not a torch file at all is refused in one line; torch's advice to retry with
    ``weights_only=False`` (which would run the file's code) is never passed on.
    """
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError("not a dlqsm model: the file stores Python objects other than "
                         "tensors (e.g. a pickled network or another tool's checkpoint), which "
                         "dlqsm does not load because loading them could run code.", path=path,
                         fix="use a checkpoint written by 'dlqsm train' or an exported model "
                         "folder (model.pt).") from None
    except Exception as exc:  # torch/pickle raise many types for a file that is not theirs
        raise InputError(f"cannot read this file as a torch checkpoint "
                         f"({exc.__class__.__name__}).", path=path,
                         fix="use a checkpoint written by 'dlqsm train' or an exported model "
                         "folder (model.pt).") from None


def _read(path: Path, map_location) -> tuple[dict, dict]:
    """(net info with "net_config", "state_dict", "metadata"; raw file) of a model file."""
    obj = _safe_load(path, map_location)
    if isinstance(obj, dict) and "net_config" in obj and "state_dict" in obj:  # exported
        return obj, obj
    info = obj.get(CHECKPOINT_KEY) if isinstance(obj, dict) else None
    if not isinstance(info, dict) or not info.get("net_config") \
            or not isinstance(obj.get("state_dict"), dict):
        raise InputError("not a dlqsm model (no stored network config).", path=path,
                         fix="use a checkpoint written by 'dlqsm train' or an exported model.")
    prefix = info.get("state_dict_prefix", "net.")
    state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
    return {"net_config": info["net_config"], "state_dict": state,
            "metadata": info.get("metadata", {})}, obj


def _checkpoint_arg(checkpoint, checkpoint_path):
    """``checkpoint``, or the deprecated keyword ``checkpoint_path``."""
    if checkpoint_path is not None:
        import warnings

        warnings.warn("load_model(checkpoint_path=...) is now load_model(checkpoint=...).",
                      DeprecationWarning, stacklevel=3)
        if checkpoint is not None:
            raise TypeError("give checkpoint or checkpoint_path, not both")
        return checkpoint_path
    if checkpoint is None:
        raise TypeError("load_model() needs a checkpoint (resolve_checkpoint(None) gives the "
                        "default model)")
    return checkpoint


def load_model(checkpoint=None, map_location="cpu", *,
               checkpoint_path=None) -> tuple[nn.Module, dict]:
    """Rebuild a trained network from a dlqsm checkpoint or exported model.

    Args:
        checkpoint: a Lightning checkpoint written by ``dlqsm train`` (``best.ckpt``,
            ``last.ckpt``), a run folder containing ``checkpoints/``, or a folder (or its
            ``model.pt``) written by :func:`export_model`.
        map_location: device for the weights.

    Returns:
        ``(net, metadata)``: the network in eval mode (call it as
        ``net(field_ppm, mask, b0_dir, voxel_size) -> chi_ppm``) and the metadata dict
        (units, training geometry, input normalisation, config, git revision, metrics).
    """
    path = find_model_file(_checkpoint_arg(checkpoint, checkpoint_path))
    info, _ = _read(path, map_location)
    net = build_from_config(info["net_config"])
    net.load_state_dict(info["state_dict"])
    net.eval()
    metadata = dict(info.get("metadata") or {})
    metadata["checkpoint"] = str(path)
    return net, metadata


def load_weights(net: nn.Module, checkpoint, *, map_location="cpu") -> Path:
    """Copy the weights of a trained model into ``net`` (a warm start for fine-tuning).

    ``checkpoint`` is anything :func:`load_model` reads. The network configs must describe the
    same architecture: every weight is matched by name and shape (strict), else an
    :class:`~dlqsm.errors.InputError` names the checkpoint and the first mismatches.

    Returns:
        the model file the weights came from.
    """
    path = find_model_file(checkpoint)
    info, _ = _read(path, map_location)
    state = info["state_dict"]
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("other shape", wrong)) if keys)
        raise InputError(f"these weights do not fit the configured network ({detail}).",
                         path=path, fix="choose the model config the checkpoint was trained "
                         "with (its net_config is in metadata.json / the checkpoint).")
    net.load_state_dict(state)
    return path


def export_model(checkpoint, out_dir, *, force: bool = False,
                 extra_metadata: dict | None = None) -> Path:
    """Write the inference-only form of a trained model: ``out_dir/model.pt`` + metadata.json.

    ``model.pt`` holds the network config, its weights and the metadata (no optimizer state);
    ``metadata.json`` is the same metadata, readable without Python. ``extra_metadata`` entries
    (e.g. ``name``, ``model_card``) are added to both.
    """
    path = find_model_file(checkpoint)
    info, _ = _read(path, "cpu")
    out = OutputDir(out_dir, force=force)
    out.check([EXPORT_NAME, "metadata.json"])
    out.path.mkdir(parents=True, exist_ok=True)
    metadata = dict(info.get("metadata") or {})
    metadata["exported_from"] = str(path)
    metadata.update(extra_metadata or {})
    target = out.path / EXPORT_NAME
    tmp = target.with_name(f".{EXPORT_NAME}.tmp")
    torch.save({"format": "dlqsm-model/1", "net_config": info["net_config"],
                "state_dict": info["state_dict"], "metadata": metadata}, tmp)
    tmp.replace(target)
    out.json("metadata.json", metadata)
    return out.path
