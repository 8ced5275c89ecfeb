"""studies.adapt (scripts/adapt.py, the SWAA adaptation study): --smoke end to end through scripts/adaptation.sh,
every row measured and finite, and the two refusals (windowed checkpoint, wrong dictionary)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studies import adapt

REPO = Path(__file__).resolve().parents[1]

ROWS = ["full (control)", "SWA", "MSWA", "MSWA (base 16)", "SWA + sinks",
        "MSWA + sinks + full layer 3", "MSWA + learned sinks"]  # adapt.SMOKE's subset, in order


def _run(args, timeout=400):
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
    lengths, seeds = res["config"]["finetune_updates"], res["config"]["seeds"]
    n_test = res["corpus"]["test_split"]["symbols"]
    for r in res["rows"]:
        assert _finite(r["before"]["value"]) and 0 < r["before"]["value"] < 20, r["name"]
        assert r["before"]["eval_symbols"] == n_test
        for run in r["runs"]:
            assert _finite(run["after"]["value"]) and 0 < run["after"]["value"] < 20, r["name"]
            assert run["after"]["eval_symbols"] == n_test
            assert run["finetune"]["updates"] == run["updates"]
            assert "--finetune-from-model" in run["finetune"]["command"]
            assert f"--seed {run['seed']}" in run["finetune"]["command"]
            assert _local(root, run["checkpoint"]).is_file()
        assert _finite(r["relative_cost_vs_full"]) and _finite(r["relative_cost_vs_swa"])
    by = {r["name"]: r for r in res["rows"]}
    # SWA and MSWA at every length and seed, summarised; the recipes at the first length
    for name in ("SWA", "MSWA"):
        assert sorted((x["updates"], x["seed"]) for x in by[name]["runs"]) == sorted(
            (u, s) for u in lengths for s in seeds)
        st = by[name]["after"][str(lengths[-1])]
        assert st["n"] == len(seeds) and _finite(st["std"])
        assert abs(st["mean"] - sum(st["values"]) / len(seeds)) < 1e-12
    assert [(x["updates"], x["seed"]) for x in by["SWA + sinks"]["runs"]] == [(lengths[0], seeds[0])]
    assert [x["updates"] for x in by["full (control)"]["runs"]] == lengths
    # learned sinks are trained (the flag reaches fairseq-train) and add no keys
    assert "--learned-sinks" in by["MSWA + learned sinks"]["runs"][0]["finetune"]["command"]
    assert by["MSWA + learned sinks"]["cost"] == by["MSWA"]["cost"]
    # zero-shot rows really ran under their windows; the control is the full model itself
    assert "--model-overrides" in by["MSWA + sinks + full layer 3"]["before"]["command"]
    assert by["full (control)"]["before"]["value"] == res["full"]["value"]
    assert by["SWA"]["relative_cost_vs_swa"] == 1.0
    # MSWA is cost-matched (within 3 %), the same-base MSWA is the paper's 225/256
    assert abs(by["MSWA"]["relative_cost_vs_swa"] - 1) <= 0.03
    assert abs(res["mswa_match"]["relative_cost"] - by["MSWA"]["relative_cost_vs_swa"]) < 1e-12
    assert by["MSWA (base 16)"]["relative_cost_vs_swa"] == 225 / 256
    assert by["full (control)"]["relative_cost_vs_full"] == 1.0
    # SWA vs MSWA paired seed by seed at every length
    paired = {p["updates"]: p for p in res["paired"]}
    assert sorted(paired) == [0] + lengths
    for u in lengths:
        p = paired[u]
        assert p["n_seeds"] == len(seeds)
        assert p["diffs"] == pytest.approx([a - b for a, b in zip(p["swa"], p["mswa"])])
        assert p["verdict"] in ("MSWA better", "MSWA worse", "within noise")
    # decode-time rows: as trained and under full-attention decode, before and after FT
    dec = res["decode"]["rows"]
    assert len(dec) == 1 + 2 * len(adapt.SMOKE["decode_targets"])
    for d in dec[1:]:
        for k in ("as_trained", "full_decode"):
            assert _finite(d[k]["bits_per_token"]) and d[k]["tokens"] == (
                res["decode"]["pairs"] * res["decode"]["continuation_tokens"])
        assert "decode_full_attention" in d["full_decode"]["command"]
    n_runs = sum(len(r["runs"]) for r in res["rows"])
    assert len(res["commands"]) == 1 + 1 + (len(ROWS) - 1) + 2 * n_runs + len(dec) * 2 - 1
    assert all(c["exit"] == 0 for c in res["commands"])
    # the logs are recorded relative to --work (outside the repository here)
    assert all(_local(root, c["log"]).is_file() for c in res["commands"])
    assert (root / "out" / "adaptation.png").read_bytes()[:4] == b"\x89PNG"
    md = (root / "out" / "adaptation.md").read_text()
    assert "| MSWA + sinks + full layer 3 |" in md and "full-attention decode" in md
    assert "SWA vs MSWA (cost-matched), seed by seed" in md
    assert "| SWA + sinks |" in stdout  # the summary table on the terminal


def test_refuses_windowed_checkpoint(smoke, tmp_path):
    root, _, res = smoke
    swa = _local(root, next(r for r in res["rows"] if r["name"] == "SWA")["runs"][0]["checkpoint"])
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


def test_cost_matched_mswa():
    """Within 3 % of SWA's cost: the paper's schedule where a base with integer windows exists
    (12 x 8, w = 128: base 144), else the scaled and rounded windows (4 x 4, w = 32)."""
    m = adapt.cost_matched_mswa(128, 12, 8)
    assert m["base"] == 144 and m["overrides"]["attn_windows"] == ""
    assert abs(m["relative_cost"] - 1) <= 0.03
    m = adapt.cost_matched_mswa(32, 4, 4)
    assert m["overrides"]["attn_windows"] and "no base with integer windows" in m["how"]
    swa = adapt.schedule_of(adapt.target_overrides("swa", 32), 4, 4).cost()
    assert abs(adapt.schedule_of(m["overrides"], 4, 4).cost() / swa - 1) <= 0.03
    assert abs(m["relative_cost"] - 1) <= 0.03


def test_bad_finetune_lengths_named():
    with pytest.raises(SystemExit):
        adapt.build_parser().parse_args(["--finetune-updates", "250,x"])
