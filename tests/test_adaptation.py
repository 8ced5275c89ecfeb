"""fairseq_mswa.experiments.adapt (scripts/adapt.py, the SWAA adaptation study): --smoke end to end through scripts/adaptation.sh,
every row measured and finite, and the two refusals (windowed checkpoint, wrong dictionary)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fairseq_mswa.experiments import adapt

REPO = Path(__file__).resolve().parents[1]

ROWS = ["full (control)", "SWA", "SWA + sinks", "SWA + full layers", "MSWA", "MSWA + sinks",
        "MSWA + full layers"]


def _run(args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHON=sys.executable,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run(["bash", str(REPO / "scripts" / "adaptation.sh"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    proc = _run(["--smoke", "--work", str(root / "work"), "--out", str(root / "out")])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root, proc.stdout, json.loads((root / "out" / "adaptation.json").read_text())


def _local(root, recorded: str) -> Path:
    """A path the result records relative to --work (``<work>/...``) as a path here."""
    assert recorded.startswith("<work>/"), recorded
    return root / "work" / recorded[len("<work>/"):]


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_smoke_every_row_measured(smoke):
    root, stdout, res = smoke
    assert res["smoke"] is True and res["metric"] == "bpc"
    assert [r["name"] for r in res["rows"]] == ROWS
    assert _finite(res["full"]["value"]) and res["full"]["updates"] == res["config"]["train_updates"]
    n_test = res["corpus"]["test_split"]["symbols"]
    for r in res["rows"]:
        for when in ("before", "after"):
            assert _finite(r[when]["value"]) and 0 < r[when]["value"] < 20, (r["name"], when)
            assert r[when]["eval_symbols"] == n_test
        assert r["finetune"]["updates"] == res["config"]["finetune_updates"]
        assert "--finetune-from-model" in r["finetune"]["command"]
        assert _finite(r["relative_cost_vs_full"]) and _finite(r["relative_cost_vs_swa"])
    by = {r["name"]: r for r in res["rows"]}
    # zero-shot rows really ran under their windows; the control is the full model itself
    assert "--model-overrides" in by["MSWA + sinks"]["before"]["command"]
    assert by["full (control)"]["before"]["value"] == res["full"]["value"]
    assert by["SWA"]["relative_cost_vs_swa"] == 1.0
    assert by["MSWA"]["relative_cost_vs_swa"] <= 1.0
    assert by["full (control)"]["relative_cost_vs_full"] == 1.0
    assert res["left_out"][0]["row"] == "SWA + full-attention decode"
    assert len(res["commands"]) == 22 and all(c["exit"] == 0 for c in res["commands"])
    # the logs are recorded relative to --work (outside the repository here)
    assert all(_local(root, c["log"]).is_file() for c in res["commands"])
    assert (root / "out" / "adaptation.png").read_bytes()[:4] == b"\x89PNG"
    md = (root / "out" / "adaptation.md").read_text()
    assert "| MSWA + full layers |" in md and "full-attention decode" in md
    assert "| SWA + sinks |" in stdout  # the summary table on the terminal


def test_refuses_windowed_checkpoint(smoke, tmp_path):
    root, _, res = smoke
    swa = root / "work" / "checkpoints" / "swa" / "checkpoint_last.pt"
    proc = _run(["--checkpoint", str(swa), "--data", str(_local(root, res["corpus"]["data"])),
                 "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")], timeout=120)
    assert proc.returncode == 2
    assert "not a full-attention checkpoint" in proc.stderr
    assert "attn_pattern='swa'" in proc.stderr and "--attn-pattern full" in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_refuses_other_dictionary(smoke, tmp_path):
    root, _, res = smoke
    full = root / "work" / "checkpoints" / "full" / "checkpoint_last.pt"
    other = tmp_path / "other-bin"
    shutil.copytree(_local(root, res["corpus"]["data"]), other)
    lines = (other / "dict.txt").read_text().splitlines()
    (other / "dict.txt").write_text("\n".join(lines + ["zz 1"]) + "\n")  # one symbol more
    proc = _run(["--checkpoint", str(full), "--data", str(other), "--work", str(tmp_path / "w")],
                timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "dictionary mismatch" in proc.stderr
    assert f"{res['model']['vocab']} embedding rows" in proc.stderr
    assert f"{res['model']['vocab'] + 1} symbols" in proc.stderr
    # same size, one symbol renamed: caught by comparing with the checkpoint's own dict.txt
    lines[4] = "zz " + lines[4].split()[1]
    (other / "dict.txt").write_text("\n".join(lines) + "\n")
    proc = _run(["--checkpoint", str(full), "--data", str(other), "--work", str(tmp_path / "w")],
                timeout=120)
    assert proc.returncode == 2 and "dictionary mismatch" in proc.stderr
    assert "'zz' here" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_mswa_base_fits_swa_cost():
    """The MSWA target: the largest base window whose cost is <= SWA's (4 x 4 heads: 225/256)."""
    assert adapt.mswa_base_for(32, 4, 4) == 32
    assert adapt.mswa_base_for(16, 4, 4) == 16
    swa = adapt.schedule_of(adapt.target_overrides("swa", 40), 4, 4).cost()
    base = adapt.mswa_base_for(40, 4, 4)
    assert adapt.schedule_of(adapt.target_overrides("mswa", base), 4, 4).cost() <= swa
    assert base % 16 == 0 and base + 16 > 40
