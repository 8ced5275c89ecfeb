"""The benchmark scripts run (--quick) and write every key their issue asks for."""

import importlib.util
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_quick(tmp_path):
    bench = load_script("bench_train")
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
    bench = load_script("bench_train")
    shape = dict(bench.PAPER_SHAPE)
    f = {v: bench.step_flops(v, shape, 2048, 256) for v in bench.VARIANTS}
    assert f["xl_full"] > f["transformer_lm"] > f["xl_swa"] > f["xl_mswa"]
