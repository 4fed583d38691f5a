"""Runs the lab extension's own unit tests (jest: the sidebar's data handling and chart geometry)."""

import subprocess
import sys
from pathlib import Path

LABEXTENSION = Path(__file__).resolve().parents[2] / "labextension"
JLPM = Path(sys.executable).with_name("jlpm")  # installed with jupyterlab / jupyter-builder


def test_labextension_unit_tests_pass():
    assert (LABEXTENSION / "node_modules").is_dir(), "run `jlpm install` in labextension/ first"
    done = subprocess.run(
        [JLPM, "test", "--ci"], cwd=LABEXTENSION, capture_output=True, text=True, timeout=300
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert " passed" in report and " failed" not in report, report
