"""scripts/device_check.sh keeps working where CI runs it, on a CPU: the GPU parts are skipped with a message, the
tiny pipeline and a one-process torchrun pass, and summary.json records every part; a part that cannot run fails
the check (exit status 1)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["cuda_tests", "bench", "stage1", "stage2", "evaluate", "torchrun"]


def _check(results: Path, **env):
    # no GPU, whatever machine the tests run on: the CPU path is the one under test
    full = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(["bash", "scripts/device_check.sh", str(results)], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=900)
    summary = json.loads((results / "summary.json").read_text())
    return proc, summary


@pytest.mark.slow
def test_on_a_cpu_the_pipeline_and_torchrun_pass_and_the_gpu_parts_are_skipped(tmp_path):
    proc, summary = _check(tmp_path / "dc")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {p["name"]: p["status"] for p in summary["parts"]}
    assert list(status) == PARTS and summary["passed"] and summary["failed"] == []
    assert status == {"cuda_tests": "skip", "bench": "skip", "stage1": "pass", "stage2": "pass", "evaluate": "pass",
                      "torchrun": "pass"}
    assert "no CUDA GPU" in proc.stdout
    m = summary["measured"]
    assert m["stage1"]["step"] == 6 and m["stage2"]["step"] == 2
    assert set(m["evaluate"]) == {"static", "dyneval", "learned"}
    assert m["torchrun"] == {**m["torchrun"], "processes": 1, "backend": "gloo"} and m["torchrun"]["tokens_per_s"] > 0
    for p in summary["parts"]:
        if p["status"] == "pass":
            assert (tmp_path / "dc" / p["log"]).is_file() and p["seconds"] > 0


def test_parts_left_without_time_fail_the_check(tmp_path):
    proc, summary = _check(tmp_path / "dc", DEVICE_CHECK_BUDGET="0")
    assert proc.returncode == 1
    assert not summary["passed"] and summary["failed"] == ["stage1", "stage2", "evaluate", "torchrun"]
    assert all("budget" in p["note"] for p in summary["parts"] if p["status"] == "fail")
