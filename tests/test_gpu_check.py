"""scripts/gpu_check.sh: its CPU rehearsal runs every step of the GPU check (so the one device
call is known to work before a GPU is lent), it refuses to pretend without CUDA, and its wheel
manifest pins what this environment runs."""

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STEPS = ["install", "tests", "attention", "tiles", "train", "decode"]


def _run(*args, env=None, timeout=300):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def test_rehearsal_runs_every_step_on_cpu(tmp_path):
    before = sorted(p.name for p in (REPO / "results" / "bench").iterdir())
    proc = _run("--rehearse", env={"GPU_CHECK_DIR": str(tmp_path)})
    log = (tmp_path / "gpu_check.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
    bench = tmp_path / "results" / "bench"
    summary = json.loads((bench / "gpu_check_rehearsal.json").read_text())
    assert summary["rehearsal"] and summary["all_ok"]
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert summary["machine"]["device"] == "cpu" and "gpu" not in summary["machine"]
    assert summary["attention_backends"]["float32_plain"]["blocked"] == "ok"
    for name in ("attention", "tiles", "train", "decode"):
        result = json.loads((bench / f"{name}_rehearsal.json").read_text())
        assert result["machine"]["device"] == "cpu", name
        assert (bench / f"{name}_rehearsal.md").read_text().strip(), name
    assert not list(tmp_path.rglob("*_gpu*")), "a rehearsal must not write GPU-named results"
    # tests/gpu ran in its CPU mode, the fairseq-train/eval-lm runs included
    passed = re.search(r"(\d+) passed", log)
    assert passed and int(passed.group(1)) >= 10, log[-2000:]
    assert re.search(r"test_train_and_eval_lm_bf16\[transformer_xl_mswa\] .*PASSED", log)
    assert re.search(r"test_train_and_eval_lm_bf16\[linear_mswa\] .*PASSED", log)
    assert sorted(p.name for p in (REPO / "results" / "bench").iterdir()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_mode_refuses_without_cuda():
    proc = _run(timeout=60)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--rehearse" in proc.stderr


def test_wheel_manifest_pins_this_environment():
    """Every manifest line is NAME==VERSION (optionally `sdist` or `gpu`), with the version
    installed here where the test suite runs (the GPU machine gets the fairseq stack that was
    tested); `gpu` lines (not in the CPU environment) carry the versions the Triton interpreter
    test checks (scripts/install_triton_interpreter.sh); flash-attn is recorded as not
    installable (sdist only)."""
    text = (REPO / "scripts" / "gpu_wheels.txt").read_text()
    lines = [line.split("#")[0].split() for line in text.splitlines()]
    specs = [fields for fields in lines if fields]
    interp = (REPO / "scripts" / "install_triton_interpreter.sh").read_text()
    names = set()
    for fields in specs:
        assert len(fields) in (1, 2) and fields[1:] in ([], ["sdist"], ["gpu"]), fields
        name, _, version = fields[0].partition("==")
        assert version, f"{fields[0]}: pin an exact version"
        if fields[1:] == ["gpu"]:
            assert fields[0] in interp, f"{fields[0]}: not the interpreter test's pin"
        else:
            assert metadata.version(name) == version, f"{name}: {metadata.version(name)} here"
        names.add(name)
    assert {"fla-core", "einops"} <= names
    assert "flash-attn" not in names and "NOT INSTALLABLE" in text and "sdist only" in text
    assert {"ve-fairseq", "hydra-core", "omegaconf"} <= names
