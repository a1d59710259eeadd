"""ROI columns are named by anatomy, never roi_N: the 2016 challenge's evaluation_mask labels
and the simulated heads' deep grey nuclei both carry names."""

import nibabel as nib
import numpy as np

from dlqsm.evaluation.cases import CHALLENGE2016_ROI_NAMES, LAYOUTS, folder_cases
from dlqsm.simulation.head import DGM_LABELS


def test_challenge2016_layout_names_every_label(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 12, 12), np.int16)
    for i in range(1, 12):
        labels[i, 2:4, 2:4] = i
    files = {"phs_tissue": rng.normal(0, 0.01, labels.shape), "msk": np.ones(labels.shape),
             "chi_cosmos": rng.normal(0, 0.05, labels.shape), "evaluation_mask": labels}
    for name, data in files.items():
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)),
                 str(tmp_path / f"{name}.nii.gz"))
    (case,) = folder_cases(tmp_path, layout="challenge2016")
    names = [case.roi_name(i) for i in case.roi_ids]
    assert case.roi_ids == list(range(1, 12))
    assert names == [CHALLENGE2016_ROI_NAMES[i] for i in range(1, 12)]
    assert not [n for n in names if n.startswith("roi_")] and len(set(names)) == 11
    assert LAYOUTS["challenge2016"]["roi_names"] is CHALLENGE2016_ROI_NAMES
    # the deep grey nuclei share their names with the simulated heads'
    assert {CHALLENGE2016_ROI_NAMES[i] for i in range(1, 7)} - set(DGM_LABELS) == set()
