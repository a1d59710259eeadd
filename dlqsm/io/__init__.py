"""Input and output: NIfTI with affines, atomic result writing, scan discovery."""

from dlqsm.io.nifti import load_nifti, save_nifti
from dlqsm.io.outputs import OutputDir, write_json_atomic
from dlqsm.io.scan import Scan, load_scan

__all__ = ["load_nifti", "save_nifti", "OutputDir", "write_json_atomic", "Scan", "load_scan"]
