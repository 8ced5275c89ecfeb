"""The benchmarks (studies.bench_*) run (--quick) and write every key their
issue asks for."""

import json
import math
import statistics
from types import SimpleNamespace

from studies import bench_decode, stats
from studies import bench_train as bench


def test_bench_train_quick(tmp_path):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    bench.main(["--quick", "--reps", "1", "--warmup", "1", "--threads", "1",
                "--json", str(out_json), "--md", str(out_md)])
    result = json.loads(out_json.read_text())
    for key in ("attn_layers_mswa_over_swa_time", "mswa_over_swa_64", "mswa_over_swa_128",
                "swa_over_transformer_lm_64", "full_over_transformer_lm_128", "attn_core_mswa_over_swa_time",
                "attn_layers_mswa_over_swa_flops",
                "full_over_transformer_lm_128_inherent", "mswa_over_full_128", "mswa_over_swa_128_flops"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    spread = result["ratios"]["mswa_over_swa_128"]  # median of the per-rep ratios, with its spread
    assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
    assert result["mswa_over_swa_128"] == spread["median"]
    layers = result["layouts"]["quick@128"]  # each distinct MSWA layer, grouped vs merged
    assert len(layers) == 4 and all(x["faster"] in x["median_s"] and x["auto"] in x["median_s"]
                                    for x in layers)
    assert {"grouped", "merged", "2+1+1"} <= set(layers[0]["median_s"])  # every partition timed
    assert result["layouts_auto_over_fastest"] >= 1.0
    assert result["layouts_auto_picks_faster"][1] == 8
    assert result["machine"]["cpu_count"] >= 1 and result["command"].startswith("python scripts/")
    assert "attn_layers_mswa_over_swa_time" in out_md.read_text()


def test_paired_ratio_is_the_median_of_per_rep_ratios():
    r = stats.paired_ratio([1.0, 2.0, 1.0], [2.0, 2.0, 4.0])  # tokens/s ratios 2, 1, 4
    assert (r["median"], r["min"], r["max"], r["reps"]) == (2.0, 1.0, 4.0, 3)


def test_small_shapes_report_train_mswa_over_swa(tmp_path):
    """--shapes demo gives the key train_mswa_over_swa_demo (shrunk here to run in seconds)."""
    shape = dict(bench.SHAPES["demo"], dim=32, ffn=64, segments="16", batch=2)
    rows = bench.run_shape(SimpleNamespace(vocab=40, seed=1, adam="fused", device="cpu", warmup=1,
                                           reps=2, profile=0), "demo", shape)["rows"]
    values, targets = bench.ratios(rows, "demo", shape)
    assert set(values) == {"train_mswa_over_swa_demo"} and targets["train_mswa_over_swa_demo"] == ">= 1.0"
    assert values["train_mswa_over_swa_demo"]["median"] > 0
    assert {r["batch"] for r in rows} == {2}


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
    # the minimum over the context sweep is the smallest of its points' paired ratios (median of
    # the per-rep ratios of the interleaved timings)
    ctx = [r for r in saved["rows"] if r["sweep"] == "context"]
    swa = {r["context"]: r["rep_s"] for r in ctx if r["pattern"] == "swa"}
    mswa = {r["context"]: r["rep_s"] for r in ctx if r["pattern"] == "mswa"}
    assert all(len(v) == saved["setup"]["reps"] for v in swa.values())
    per_point = {c: statistics.median(s / m for m, s in zip(mswa[c], swa[c])) for c in swa}
    assert saved["decode_tps_mswa_over_swa_min"] == min(per_point.values())
    assert saved["ratio_points"]["decode_tps_mswa_over_swa_min"]["context"] in swa
