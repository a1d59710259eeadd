"""Moved and renamed modules: the new homes hold the code, the old paths still work for one
release (with a DeprecationWarning where the old name itself is deprecated)."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize("old,new", [
    ("dlqsm.models.build", "dlqsm.models.loading"),
    ("dlqsm.models.physics", "dlqsm.models.batched_dipole"),
    ("dlqsm.simulation.random", "dlqsm.simulation.rng"),
])
def test_deprecated_module_paths_warn_and_work(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new):
        mod = importlib.import_module(old)
    target = importlib.import_module(new)
    for name in getattr(target, "__all__", ["load_model"]):
        if hasattr(mod, name):
            assert getattr(mod, name) is getattr(target, name), name
    assert any(hasattr(mod, n) for n in getattr(target, "__all__", ["load_model"]))


def test_old_resolve_checkpoint_is_the_folder_lookup(tmp_path):
    build = importlib.import_module("dlqsm.models.build")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.warns(DeprecationWarning, match="find_model_file"):
        assert build.resolve_checkpoint(tmp_path) == tmp_path / "model.pt"


def test_moved_datasets():
    from dlqsm.lit.datamodule import MixtureDataset as OldMixture
    from dlqsm.simulation.wrappers import MixtureDataset, WithInitialEstimate

    assert OldMixture is MixtureDataset
    import dlqsm.models
    import dlqsm.models.residual

    for mod in (dlqsm.models.residual, dlqsm.models):
        with pytest.warns(DeprecationWarning, match="simulation.wrappers"):
            assert mod.WithInitialEstimate is WithInitialEstimate
    with pytest.raises(AttributeError):
        _ = dlqsm.models.NoSuchThing


def test_split_modules_keep_every_old_name():
    """inference.py and simulation/head.py were split; their names still import from there."""
    import dlqsm.inference as inference
    import dlqsm.simulation.anatomy as anatomy
    import dlqsm.simulation.head as head
    import dlqsm.simulation.phantom as phantom

    for name in ("Predictor", "Prediction", "ModelSpec", "GridResampler", "GeometryPlan",
                 "plan_geometry", "rotation_to_axis", "available_memory_bytes",
                 "bytes_per_voxel", "call_network", "load_network", "resolve_checkpoint",
                 "default_model_installed", "DEFAULT_MODEL_DIR", "DEFAULT_ROI", "FieldMap",
                 "local_field_from_scan"):
        assert hasattr(inference, name), name
    for name in ("LABELS", "DGM_LABELS", "AIR_PPM", "CHI_RANGES", "TISSUE_M0_R2STAR_3T",
                 "tissue_parameters", "INTRACRANIAL_LABELS", "FIT_HALF_EXTENT"):
        assert getattr(head, name) is getattr(anatomy, name), name
    for name in ("HeadPhantom", "head_phantom", "fit_scale"):
        assert getattr(head, name) is getattr(phantom, name), name
    for name in ("HeadCase", "partial_volume", "simulate_head_case", "PARTIAL_VOLUME_SIGMA"):
        assert hasattr(head, name), name


def test_model_spec_pad_multiple_and_its_old_name():
    from dlqsm.inference import ModelSpec

    spec = ModelSpec.from_metadata({"size_divisor": 8})
    assert spec.pad_multiple == 8
    assert ModelSpec.from_metadata({"pad_multiple": 4}).pad_multiple == 4
    with pytest.warns(DeprecationWarning, match="pad_multiple"):
        assert spec.size_divisor == 8


def test_load_model_checkpoint_keyword_and_its_old_name():
    from dlqsm.models.loading import DEFAULT_MODEL_DIR, default_model_installed, load_model

    if not default_model_installed():
        pytest.skip("no default model")
    net, meta = load_model(checkpoint=DEFAULT_MODEL_DIR)
    with pytest.warns(DeprecationWarning, match="checkpoint="):
        net2, _ = load_model(checkpoint_path=DEFAULT_MODEL_DIR)
    assert type(net) is type(net2)
    with pytest.raises(TypeError):
        load_model()
