"""Field units, mask values, conflicting inputs and output folders: the checks behind the
one-line errors of the command line, tested on the functions."""

import errno
import os

import numpy as np
import pytest

from dlqsm.errors import InputError, OutputBusyError, OutputNotWritableError
from dlqsm.io.outputs import LOCK_NAME, OutputDir, check_writable_folder, sha256_file
from dlqsm.io.scan import field_to_ppm, load_scan, mask_from_values
from dlqsm.physics.units import GAMMA_HZ_PER_T, ppm_to_hz, ppm_to_phase

FIELD = np.linspace(-0.1, 0.1, 64, dtype=np.float32).reshape(4, 4, 4)


def test_field_units_convert_to_ppm():
    hz = ppm_to_hz(FIELD.astype(np.float64), 3.0)
    np.testing.assert_allclose(field_to_ppm(hz, "hz", kind="local_field", field_strength=3.0),
                               FIELD, rtol=1e-5, atol=1e-7)
    rad = ppm_to_phase(FIELD.astype(np.float64), 0.02, 7.0)
    np.testing.assert_allclose(
        field_to_ppm(rad, "rad", kind="local_field", te=[20], field_strength=7), FIELD,
        rtol=1e-5, atol=1e-7)  # TE 20 read as ms
    assert field_to_ppm(FIELD * 100, "ppm", kind="local_field") is not None  # as given
    with pytest.raises(InputError, match="needs the field strength"):
        field_to_ppm(hz, "hz", kind="local_field")
    with pytest.raises(InputError, match="exactly one echo time"):
        field_to_ppm(rad, "rad", kind="local_field", te=[0.01, 0.02], field_strength=3)


def test_plausibility_of_ppm_fields():
    mask = np.ones(FIELD.shape, bool)
    notices = []
    assert field_to_ppm(FIELD, None, kind="local_field", mask=mask, notices=notices) is FIELD
    assert not notices
    field_to_ppm(FIELD * 5, None, kind="local_field", mask=mask, notices=notices)  # 0.5 ppm
    assert "large for ppm: if the file is in rad or Hz, pass --field-unit" in notices[0]
    hz = FIELD * GAMMA_HZ_PER_T * 3e-6  # the same field in Hz at 3 T (x127.7)
    with pytest.raises(InputError, match=r"implausible for ppm.*--field-unit hz"):
        field_to_ppm(hz, None, kind="local_field", mask=mask)
    # a total field may reach a few ppm (air-tissue interfaces); Hz of it may not
    assert field_to_ppm(FIELD * 40, None, kind="total_field", mask=mask) is not None
    with pytest.raises(InputError, match="total field values reach"):
        field_to_ppm(FIELD * 40 * 127.7, None, kind="total_field", mask=mask)
    outside = FIELD.copy()
    outside[0] = 500.0  # huge values outside the mask are not looked at
    assert field_to_ppm(outside, None, kind="local_field", mask=np.arange(4)[:, None, None]
                        .repeat(4, 1).repeat(4, 2) > 0) is outside


@pytest.mark.parametrize("values, expect_notice", [((0, 1), False), ((0, 255), False),
                                                   ((0.0, 0.5), True), ((0.2, 0.9), False)])
def test_mask_values(values, expect_notice):
    data = np.full((4, 4, 4), values[0], np.float32)
    data[1:3, 1:3, 1:3] = values[1]
    notices = []
    m = mask_from_values(data, path="m.nii.gz", notices=notices)
    assert m.dtype == bool
    assert m.sum() == (8 if values[0] <= 0.5 else 64)
    assert bool(notices) == expect_notice
    with pytest.raises(InputError, match="m.nii.gz: the mask is empty"):
        mask_from_values(np.zeros((2, 2, 2)), path="m.nii.gz")


def test_conflicting_starting_points(tmp_path):
    with pytest.raises(InputError, match="--total-field and --local-field given together"):
        load_scan(total_field="a.nii.gz", local_field="b.nii.gz")
    with pytest.raises(InputError, match="unknown field unit"):
        load_scan(local_field="b.nii.gz", field_unit="gauss")


def test_output_folder_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputNotWritableError, match="the output path is a file"):
        check_writable_folder(f)
    with pytest.raises(OutputNotWritableError, match="is a file"):
        check_writable_folder(f / "sub" / "out")
    assert check_writable_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "o" / "chimap.nii.gz").mkdir(parents=True)
    with pytest.raises(OutputNotWritableError, match="is a folder"):
        OutputDir(tmp_path / "o", force=True).check(["chimap.nii.gz"])


def test_unwritable_folder_message(tmp_path, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputNotWritableError, match=r"\(read-only file system\)"):
        check_writable_folder(tmp_path / "out")


def test_lock_is_exclusive_and_released(tmp_path):
    out = OutputDir(tmp_path / "o")
    with out.lock():
        assert (tmp_path / "o" / LOCK_NAME).exists()
        with pytest.raises(OutputBusyError, match=f"run {os.getpid()} on"):
            with OutputDir(tmp_path / "o").lock():
                pass
        (tmp_path / "o" / "kept.txt").write_text("x")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["kept.txt"]
    with pytest.raises(RuntimeError):
        with OutputDir(tmp_path / "failed").lock():
            raise RuntimeError("a run that failed before writing")
    assert not (tmp_path / "failed").exists()


def test_sha256_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
