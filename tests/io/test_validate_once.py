"""Validate once, pass typed values down (issue 13): the scan's geometry is checked where it
enters (the loader / the ``Scan``) and trusted by every stage below; ``check_parameters`` runs
once per command; the deprecated field-strength names still work, with a warning.

The counting tests wrap the one validator of each value (``geometry._validated_voxel_size``,
``geometry._validated_b0_dir``, ``reconstruct.check_parameters``): a stage that re-checks the
scan's values again (e.g. by turning them into a plain tuple and normalising that) fails them.
"""

import dataclasses
import math
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

import dlqsm.physics.geometry as geometry
from dlqsm.cli.main import main
from dlqsm.errors import InputError
from dlqsm.io.scan import Scan, field_to_ppm, load_scan
from dlqsm.physics.dipole import DipoleOperator, dipole_kernel
from dlqsm.physics.geometry import (
    B0Dir,
    Geometry,
    VoxelSize,
    as_b0_dir,
    as_voxel_size,
    b0_dir_from_affine,
    rotation_matrix,
)
from dlqsm.pipeline import reconstruct as rec
from tests.cli.test_infer_cli import save_tiny_checkpoint

SHAPE = (32, 32, 32)
VOX = (1.0, 1.2, 1.5)


def _affine():
    a = np.eye(4)
    a[:3, :3] = rotation_matrix([1, 0.2, 0], math.radians(15)) * np.array(VOX)
    return a


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 32^3 oblique, anisotropic total field (a sphere's field plus a linear background)."""
    d = tmp_path_factory.mktemp("once")
    aff = _affine()
    idx = np.indices(SHAPE).astype(np.float32) - 15.5
    mask = np.sqrt((idx ** 2).sum(0)) < 11
    chi = 0.1 * (np.sqrt(((idx - 3) ** 2).sum(0)) < 3)
    field = DipoleOperator(SHAPE, VOX, b0_dir_from_affine(aff), padding=8).forward(
        torch.from_numpy(chi.astype(np.float32))).numpy()
    total = (field + 0.02 * idx[0] / 32) * mask
    nib.save(nib.Nifti1Image(total.astype(np.float32), aff), str(d / "tf.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(d / "mask.nii.gz"))
    save_tiny_checkpoint(d / "tiny.ckpt", voxel_mm=1.2)
    return d


class _Calls:
    """Wraps the validators of voxel sizes and B0 directions and records what they check."""

    def __init__(self, monkeypatch):
        self.args = {"voxel_size": [], "b0_dir": []}
        for key in self.args:
            name = f"_validated_{key}"
            orig = getattr(geometry, name)

            def spy(value, _orig=orig, _key=key):
                self.args[_key].append(np.asarray(value, dtype=float).reshape(-1))
                return _orig(value)

            monkeypatch.setattr(geometry, name, spy)

    def of(self, key, value) -> int:
        """How often ``value`` (or the same numbers) was checked."""
        v = np.asarray(value, dtype=float).reshape(-1)
        return sum(a.shape == v.shape and np.allclose(a, v) for a in self.args[key])

    def reset(self):
        for v in self.args.values():
            v.clear()


def test_a_reconstruction_checks_the_scans_geometry_once(files, monkeypatch):
    calls = _Calls(monkeypatch)
    scan = load_scan(total_field=files / "tf.nii.gz", mask=files / "mask.nii.gz",
                     voxel_size=list(VOX))
    assert calls.of("voxel_size", VOX) == 1  # the --voxel-size value, where it enters
    assert calls.of("b0_dir", scan.b0_dir) == 1  # the affine's direction, in the Scan
    assert isinstance(scan.grid, Geometry) and scan.grid.shape == SHAPE
    assert scan.grid.voxel_size == VOX and isinstance(scan.grid.b0_dir, B0Dir)
    calls.reset()
    for bfr, method in (("pdf", "tkd"), ("vsharp", "tv")):
        params = {"bfr": {"max_iter": 5}} if bfr == "pdf" else {"inversion": {"max_iter": 5}}
        res = rec.reconstruct(scan, bfr=bfr, method=method, progress=False, stage_params=params)
        assert res.chimap is not None
    assert calls.args == {"voxel_size": [], "b0_dir": []}  # every stage trusted scan.grid


def test_check_parameters_runs_once_per_command(files, tmp_path, monkeypatch):
    n = []
    orig = rec.check_parameters

    def spy(*a, **k):
        n.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(rec, "check_parameters", spy)
    assert main(["reconstruct", "--total-field", str(files / "tf.nii.gz"), "--mask",
                 str(files / "mask.nii.gz"), "--method", "tkd", "--param", "bfr.max_iter=5",
                 "-o", str(tmp_path / "r"), "--device", "cpu", "-q"]) == 0
    assert len(n) == 1
    calls = _Calls(monkeypatch)
    assert main(["infer", "--total-field", str(files / "tf.nii.gz"), "--mask",
                 str(files / "mask.nii.gz"), "--checkpoint", str(files / "tiny.ckpt"),
                 "--param", "bfr.max_iter=5", "--no-tile", "-o", str(tmp_path / "i"),
                 "--device", "cpu", "-q"]) == 0
    assert len(n) == 2
    assert calls.of("voxel_size", VOX) == 1  # from the affine, in the Scan; not again
    assert calls.of("b0_dir", b0_dir_from_affine(_affine())) == 1


def test_one_reconstruction_is_unchanged_by_trusting(files):
    """Trusting the typed values gives the same numbers as plain tuples checked again."""
    scan = load_scan(total_field=files / "tf.nii.gz", mask=files / "mask.nii.gz")
    a = rec.reconstruct(scan, method="tkd", progress=False, stage_params={"bfr": {"max_iter": 5}})
    plain = dataclasses.replace(scan, voxel_size=np.asarray(scan.voxel_size).copy())
    b = rec.reconstruct(plain, method="tkd", progress=False, stage_params={"bfr": {"max_iter": 5}})
    assert torch.equal(a.chimap, b.chimap)
    k1 = dipole_kernel((8, 8, 8), scan.grid.voxel_size, scan.grid.b0_dir)
    k2 = dipole_kernel((8, 8, 8), tuple(scan.voxel_size), list(scan.b0_dir))
    assert torch.allclose(k1, k2, atol=1e-7)


def test_typed_geometry_values():
    v = as_voxel_size(0.8)
    assert v == (0.8, 0.8, 0.8) and isinstance(v, VoxelSize) and as_voxel_size(v) is v
    b = as_b0_dir((0, 3, 4))
    assert b == pytest.approx((0, 0.6, 0.8)) and as_b0_dir(b) is b
    for bad in ((1, 0, 1), (1, 1), (1, np.nan, 1), (-1, 1, 1)):
        with pytest.raises(InputError, match="voxel size"):
            as_voxel_size(bad)
    with pytest.raises(InputError, match="zero vector"):
        as_b0_dir((0, 0, 0))
    with pytest.raises(InputError, match="three finite"):
        as_b0_dir((0, 1))
    g = Geometry.create((1, 16, 12, 10), 1.5, (0, 0, 2), affine=np.diag([1.5, 1.5, 1.5, 1]))
    assert g.shape == (16, 12, 10) and g.b0_dir == (0.0, 0.0, 1.0)
    assert not g.affine.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.voxel_size = (1, 1, 1)
    with pytest.raises(InputError, match="4x4"):
        Geometry.create((4, 4, 4), 1, affine=np.eye(3))
    with pytest.raises(InputError, match="grid sizes"):
        Geometry.create((4, 0, 4), 1)
    assert pickle.loads(pickle.dumps(g)) == g
    assert dataclasses.asdict(g)["voxel_size"] == (1.5, 1.5, 1.5)


def test_scan_geometry_is_read_only_and_consistent():
    f = np.zeros((6, 6, 6), np.float32)
    m = np.ones((6, 6, 6), bool)
    scan = Scan(local_field=f, mask=m, voxel_size=(1, 1, 2), b0_dir=(0, 0, 3))
    assert scan.grid.voxel_size == (1.0, 1.0, 2.0) and scan.grid.b0_dir == (0.0, 0.0, 1.0)
    np.testing.assert_array_equal(scan.voxel_size, scan.grid.voxel_size)
    np.testing.assert_array_equal(scan.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError):
        scan.voxel_size[0] = 5.0
    with pytest.raises(InputError, match="voxel size"):
        Scan(local_field=f, mask=m, voxel_size=(1, -1, 1))


def test_field_strength_aliases():
    f = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.warns(DeprecationWarning, match="field_strength"):
        scan = Scan(phase=f, magnitude=f + 1, te=[0.01], b0_tesla=7.0)
    assert scan.field_strength == 7.0
    with pytest.warns(DeprecationWarning, match="field_strength"):
        assert scan.b0_tesla == 7.0
    with pytest.raises(TypeError):
        Scan(phase=f, te=[0.01], field_strength=3.0, b0_tesla=7.0)
    with pytest.warns(DeprecationWarning, match="field_strength"):
        out = field_to_ppm(np.full((4, 4, 4), 127.7), "hz", kind="local_field", b0_tesla=3.0)
    np.testing.assert_allclose(out, field_to_ppm(np.full((4, 4, 4), 127.7), "hz",
                                                 kind="local_field", field_strength=3.0))


def test_simulation_configs_take_field_strength():
    from dlqsm.simulation.brains import BrainConfig
    from dlqsm.simulation.datasets import SimulationConfig
    from dlqsm.simulation.disk import _upgrade_settings

    for cls in (SimulationConfig, BrainConfig):
        assert cls(field_strength=[3.0, 7.0]).field_strength == [3.0, 7.0]
        with pytest.warns(DeprecationWarning, match="field_strength"):
            cfg = cls(b0_tesla=7.0)
        assert cfg.field_strength == 7.0
        d = cfg.as_dict()
        assert d["field_strength"] == 7.0 and "b0_tesla" not in d
        # a dataset stored with the old key resumes
        old = dict(d)
        old["b0_tesla"] = old.pop("field_strength")
        assert _upgrade_settings(old, d) == d


def test_evaluation_methods_trust_the_cases_geometry(monkeypatch):
    from dlqsm.evaluation.cases import simulated_heads
    from dlqsm.evaluation.methods import MethodRunner, parse_method

    (case,) = simulated_heads(1, shape=(24, 28, 26), voxel_size=8, b0_tilt_deg=20)
    assert isinstance(case.voxel_size, VoxelSize) and isinstance(case.b0_dir, B0Dir)
    calls = _Calls(monkeypatch)
    for m in ("tkd", {"name": "tv", "method": "tv", "params": {"max_iter": 5}}):
        chi, _, _ = MethodRunner(parse_method(m))(case)
        assert np.isfinite(chi).all()
    assert calls.args == {"voxel_size": [], "b0_dir": []}


def test_raw_stages_trust_the_scans_geometry(files, monkeypatch):
    """Raw phase through coil combination, Laplacian unwrapping, the nonlinear echo fit and
    the other background methods: no stage checks the scan's geometry again."""
    from dlqsm.physics.units import ppm_to_phase, wrap_phase

    total = nib.load(str(files / "tf.nii.gz"))
    te = np.array([0.004, 0.008, 0.012])
    phase = np.stack([wrap_phase(ppm_to_phase(total.get_fdata(), t, 3.0)) for t in te])
    brain = nib.load(str(files / "mask.nii.gz")).get_fdata() > 0
    mag = np.broadcast_to(np.where(brain, 1.0, 0.05), phase.shape)
    coils = Scan(phase=np.stack([phase, phase]).astype(np.float32),
                 magnitude=np.stack([mag, mag]).astype(np.float32), te=te, field_strength=3.0,
                 affine=total.affine)
    calls = _Calls(monkeypatch)
    for kw in (dict(unwrap="laplacian", bfr="lbv", method="tkd"),
               dict(echo_fit="nonlinear", bfr="sharp", method="tsvd")):
        assert rec.reconstruct(coils, progress=False, **kw).chimap is not None
    assert calls.args == {"voxel_size": [], "b0_dir": []}
