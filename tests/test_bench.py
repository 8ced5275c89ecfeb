"""The benchmarks (fairseq_mswa.experiments.bench_*) run (--quick) and write every key their
issue asks for."""

import json
import math

from fairseq_mswa.experiments import bench_decode
from fairseq_mswa.experiments import bench_train as bench


def test_bench_train_quick(tmp_path):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    bench.main(["--quick", "--reps", "1", "--warmup", "1", "--threads", "1",
                "--json", str(out_json), "--md", str(out_md)])
    result = json.loads(out_json.read_text())
    for key in ("attn_layers_mswa_over_swa_time", "mswa_over_swa_64", "mswa_over_swa_128",
                "swa_over_transformer_lm_64", "full_over_transformer_lm_128", "attn_core_mswa_over_swa_time",
                "attn_layers_mswa_over_swa_flops",
                "full_over_transformer_lm_128_inherent", "mswa_over_full_128"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["machine"]["cpu_count"] >= 1 and result["command"].startswith("python scripts/")
    assert "attn_layers_mswa_over_swa_time" in out_md.read_text()


def test_step_flops_orders_the_variants():
    """The needed-FLOPs model: full XL > transformer_lm at long segments; MSWA < SWA (sum of
    windows 225/256 of SWA's in the attention terms)."""
    shape = dict(bench.PAPER_SHAPE)
    f = {v: bench.step_flops(v, shape, 2048, 256) for v in bench.VARIANTS}
    assert f["xl_full"] > f["transformer_lm"] > f["xl_swa"] > f["xl_mswa"]


def test_bench_decode_quick(tmp_path):
    """scripts/bench_decode.py --quick: every configuration measured, the KV ratio of the paper."""
    out = bench_decode.main(["--quick", "--json", str(tmp_path / "d.json"), "--md", str(tmp_path / "d.md")])
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["kv_bytes_mswa_over_swa"] == out["kv_bytes_mswa_over_swa"]
    assert abs(saved["kv_bytes_mswa_over_swa"] - 225 / 256) < 1e-9  # context > every window
    assert saved["kv_bytes_full_over_mswa_16k"] > 1
    assert all(r["tokens_per_s"] > 0 and r["kv_bytes"] > 0 for r in saved["rows"])
    assert saved["decode_tps_mswa_over_swa"] > 0 and saved["decode_tps_full_over_mswa_16k"] > 0
    assert "| kv_bytes_mswa_over_swa | 0.879 |" in (tmp_path / "d.md").read_text()
    # the minimum over the context sweep is one of its points' ratios
    ratios = [r["tokens_per_s"] for r in saved["rows"] if r["sweep"] == "context"]
    swa = {r["context"]: r["tokens_per_s"] for r in saved["rows"] if r["sweep"] == "context" and r["pattern"] == "swa"}
    mswa = {r["context"]: r["tokens_per_s"] for r in saved["rows"] if r["sweep"] == "context" and r["pattern"] == "mswa"}
    assert ratios and saved["decode_tps_mswa_over_swa_min"] == min(mswa[c] / swa[c] for c in swa)
    assert saved["ratio_points"]["decode_tps_mswa_over_swa_min"]["context"] in swa
