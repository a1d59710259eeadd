"""The benchmark scripts keep working: every suite runs at reduced size and writes its table."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_benchmark_suite_runs_at_reduced_size(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick",
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for suite in ("inversion", "background", "fieldmap", "pipeline", "simulation", "training",
                  "inference", "dataset"):
        text = (out / f"{suite}.md").read_text()
        assert "| " in text and "---" in text, suite  # a markdown table
        assert "cores" in text.splitlines()[0]  # the hardware line the runner adds
