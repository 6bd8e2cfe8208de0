"""The prepared GPU check's dry run: every script, option and GPU test it would run exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path, script: Path):
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = tmp_path / "gpu_check.log"
    proc = subprocess.run(["bash", str(script), "--dry-run", "--log", str(log), "--work",
                           str(tmp_path / "work")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc, log.read_text() if log.is_file() else ""


def test_dry_run_checks_the_plan_and_logs_it(tmp_path):
    proc, log = _dry_run(tmp_path, ROOT / "benchmarks" / "gpu_check.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("pytest -m gpu: planned", "bench_losses gpu: planned",
                 "bench_losses sweep: planned", "bench_fit cuda 1e7: planned",
                 "losses --executor local: planned"):
        assert step in log
    # the GPU tests were collected: the fused kernel's among them, and the count pytest reports
    fused = "tests/fit/test_fit_triton.py::test_fused_kernel_on_a_gpu_matches_scipy_in_float32"
    assert fused in log
    collected = re.search(r"^(\d+)/\d+ tests? collected", log, re.MULTILINE)
    assert collected is not None and int(collected.group(1)) >= 3, log
    assert not (tmp_path / "work" / "micro").exists()  # nothing was trained or evaluated


@pytest.mark.slow
def test_dry_run_fails_on_an_option_a_script_does_not_have(tmp_path):
    broken = tmp_path / "benchmarks" / "gpu_check.sh"
    broken.parent.mkdir()
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    broken.write_text(text.replace('HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"',
                                   f'HERE="{ROOT}"').replace("--scipy-n 200", "--scipy-rows 200"))
    proc, log = _dry_run(tmp_path, broken)
    assert proc.returncode == 1
    assert "unknown option --scipy-rows" in log and "bench_fit cuda 1e7: BROKEN" in log
