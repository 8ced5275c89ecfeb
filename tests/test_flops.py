"""The needed-FLOPs model (fairseq_mswa/cost/flops.py) against hand counts of tiny configurations,
and the paper-scale plan built on it (``python scripts/plan.py``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fairseq_mswa.cost import flops
from studies import plan
from studies.run_utils import git_commit
from fairseq_mswa.schedule import WindowSchedule

REPO = Path(__file__).resolve().parents[1]


def test_xl_step_matches_a_hand_count():
    """1 layer, 2 heads (windows 1 and 2), dim 4 (head dim 2), FFN 8, segment 3, vocab 5: the
    layer keeps max window - 1 = 1 memory state."""
    sched = WindowSchedule(windows=((1, 2),))
    hand = (
        3 * 4 * 4 * 4      # q, k, v, out of the 3 segment tokens
        + 2 * 3 * 4 * 8    # FFN, two matrices
        # head w=1: no memory (w - 1 = 0), 1 position encoding through W_r (4 -> 2), each query
        # sees 1 key: 3 keys x (content + position + value) x 2
        + 0 + 1 * 4 * 2 + 3 * 3 * 2
        # head w=2: 1 memory state to k and v (4 -> 2 each), 2 position encodings, each query
        # sees 2 keys (memory included): 6 keys x 3 x 2
        + 1 * 4 * 2 * 2 + 2 * 4 * 2 + 6 * 3 * 2
    )
    assert hand == 478
    assert flops.xl_forward_macs(sched, dim=4, ffn=8, seg=3) == hand
    # training step: (layers + output layer 3 tokens x 4 x 5) x 2 FLOPs per multiply-add x 3 passes
    assert flops.train_flops(hand, 4 * 5, 3) == (478 + 60) * 2 * 3 == 3228


def test_linear_mswa_step_matches_a_hand_count():
    """Layers "LA": 2 heads, dim 4 (head dim 2), SwiGLU FFN 8, sequence 3, feature dim 2
    (F = 1 + 2 + 3 = 6 Taylor features); the local layer has windows 1 and 2."""
    sched = WindowSchedule(windows=((1, 2),))
    linear = (3 * 3 * 4 * 8            # SwiGLU: 3 matrices
              + 3 * 4 * (2 * 2 * 2 + 2 * 4)  # q, k to 2 x feature dim 2; v, out 4 x 4
              + 3 * 2 * 2 * 6 * (2 + 1))     # per token and head: state 6 x (2 + 1) written, read
    local = (3 * 3 * 4 * 8 + 3 * 4 * 4 * 4
             + 2 * 3 * 2                 # w=1: 3 keys x (score + value) x head dim 2
             + 2 * (1 + 2 + 2) * 2)      # w=2: 1, 2, 2 keys
    assert (linear, local) == (696, 512)
    assert flops.linear_mswa_forward_macs("LA", sched, dim=4, ffn=8, heads=2, seg=3,
                                          feature_dim=2) == linear + local


def test_adaptive_io_matches_a_hand_count():
    """dim 8, cutoffs 4, 6, vocab 10, factor 2: input projection 8 x 8, head 8 x (4 + 2 clusters),
    tail 1: 8 -> 4 -> 2 words, tail 2: 8 -> 2 -> 4 words."""
    hand = 8 * 8 + 8 * 6 + (8 * 4 + 4 * 2) + (8 * 2 + 2 * 4)
    assert flops.adaptive_io_macs(8, [4, 6], 10, factor=2) == hand == 176


def test_plan_rows_follow_the_configs_and_add_up():
    result = plan.plan(mfu=0.4)
    rows = result["rows"]
    # Tables 2 and 3 on two datasets, 5 and 6 on Wikitext-103 (configs/tables/table<N>.yaml)
    assert [result["totals"][t]["runs"] for t in ("2", "3", "5", "6")] == [12, 10, 8, 3]
    by = {(r["table"], r["dataset"], r["row"]): r for r in rows}
    mswa = by[(2, "wikitext-103", "MSWA")]
    assert mswa["train_tokens"] == 16384 * 150000 and mswa["segment"] == 512
    assert by[(2, "enwik8", "MSWA")]["tokens_per_update"] == 49152
    # more attention, more compute; MSWA below SWA; at 40 % of 312 TFLOP/s
    assert (by[(2, "wikitext-103", "Standard Self-Attention (n=2048)")]["train_flops"]
            > by[(2, "wikitext-103", "SWA")]["train_flops"] > mswa["train_flops"])
    assert mswa["gpu_hours"] == pytest.approx(mswa["train_flops"] / (0.4 * 312e12) / 3600)
    assert result["all_tables"]["train_flops"] == pytest.approx(sum(r["train_flops"] for r in rows))
    with pytest.raises(plan.PlanError, match="--mfu"):
        plan.plan(mfu=1.5)


def test_plan_cli_writes_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "compute.json", tmp_path / "compute.md"
    proc = subprocess.run([sys.executable, "scripts/plan.py", "--json", str(out_json),
                           "--md", str(out_md)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert result["estimate"] and result["assumptions"]["mfu"] == 0.4
    assert result["command"].startswith("python scripts/plan.py")
    assert result["git_commit"] == git_commit(REPO)  # `git rev-parse HEAD` (or "unknown" outside git)
    assert result["machine"]["device"] == "cpu" and result["date"]
    assert "(estimate)" in out_md.read_text()
    bad = subprocess.run([sys.executable, "scripts/plan.py", "--mfu", "x"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "--mfu" in bad.stderr
