"""scripts/: reproduce.py planning and parsing, make_tables.py rendering, the demo's equal-updates
logic and what-the-shape-allows numbers, the table scripts' --smoke runs end to end, and the
demo's --quick mode."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from studies import demo, make_tables, reproduce
from studies.run_utils import CommandError

REPO = Path(__file__).resolve().parents[1]


def _opts(**kw):
    base = dict(datasets=None, rows=None, smoke=False, data_dir="/data", gpus=1,
                batch_per_gpu=None, max_update=None, runs_dir="/runs", save_root="/ckpt",
                results_dir="/res", train_args="", eval_args="", scale=None, seed=None)
    base.update(kw)
    return SimpleNamespace(**base)


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


# --- reproduce.py: plan -----------------------------------------------------------------------

def test_every_config_row_is_a_cost_row():
    """Row names in configs/tables match fairseq_mswa.cost and results/paper.json."""
    from fairseq_mswa.cost import table_rows

    paper = json.loads((REPO / "results" / "paper.json").read_text())
    for t in reproduce.TABLES:
        cfg = reproduce.load_table(t)
        names = [r["row"] for r in cfg["rows"]]
        assert names == [r.row for r in table_rows(t)]
        assert names == [r["row"] for r in paper["tables"][str(t)]["rows"]]
        assert len({r["id"] for r in cfg["rows"]}) == len(names)


def test_paper_values_table6_unknown():
    paper = json.loads((REPO / "results" / "paper.json").read_text())
    for r in paper["tables"]["6"]["rows"]:
        assert r["wikitext-103"] is None and r["enwik8"] is None
    t2 = {r["row"]: r for r in paper["tables"]["2"]["rows"]}
    assert t2["MSWA"]["wikitext-103"] == 29.56 and t2["SWA"]["enwik8"] == 1.22


def test_plan_paper_setup_and_memory():
    setup = reproduce.load_setup()
    runs = reproduce.plan_runs(2, _opts(), setup)
    assert len(runs) == 12  # 6 rows x 2 datasets
    by = {(r.dataset, r.row["id"]): r for r in runs}
    wt = by[("wikitext-103", "mswa")].train_cmd
    assert _flag(wt, "--max-update") == "150000" and _flag(wt, "--lr") == "0.0002"
    assert _flag(wt, "--adam-betas") == "(0.9, 0.98)"
    assert _flag(wt, "--lr-scheduler") == "cosine" and _flag(wt, "--warmup-updates") == "1000"
    assert int(_flag(wt, "--batch-size")) * int(_flag(wt, "--tokens-per-sample")) == 16384
    en = by[("enwik8", "swa")].train_cmd
    assert int(_flag(en, "--batch-size")) * int(_flag(en, "--tokens-per-sample")) == 49152
    # memory: the model's per-layer default (largest window - 1), recorded in the plan
    assert all("--mem-len" not in r.train_cmd for r in runs)
    assert by[("wikitext-103", "mswa")].meta["max_memory"] == 511
    assert by[("enwik8", "swa")].meta["max_memory"] == 127
    assert by[("enwik8", "full-n2048")].meta["max_memory"] == 2047
    assert _flag(by[("enwik8", "full-n2048")].train_cmd, "--base-window") == "2048"
    t5 = {r.row["id"]: r for r in reproduce.plan_runs(5, _opts(), setup)}
    assert t5["mswa-512"].meta["max_memory"] == 2047
    t6 = {r.row["id"]: r for r in reproduce.plan_runs(6, _opts(), setup)}
    assert t6["arithmetic"].meta["max_memory"] == 199
    assert _flag(t6["decreasing"].train_cmd, "--window-variation") == "decreasing"
    t3 = reproduce.plan_runs(3, _opts(datasets="enwik8"), setup)
    assert [_flag(r.train_cmd, "--arch") for r in t3] == [
        "linear_mswa_transformer", "linear_mswa_linear", "linear_mswa_la_swa",
        "linear_mswa_la_mswa", "linear_mswa_mswa"]
    assert all("--mem-len" not in r.train_cmd for r in t3)
    assert all(int(_flag(r.train_cmd, "--batch-size")) == 8 for r in t3)
    assert all(_flag(r.train_cmd, "--tokens-per-sample") == "2048" for r in t3)


def test_dropout_per_dataset_in_every_table():
    """setup.yaml's choice, in code and config alike: dropout 0.2 on Wikitext-103, 0.1 on enwik8,
    for the XL rows (their presets) and Table 3's linear rows (setup.yaml's flag) alike."""
    from studies.arch import resolve_arch_config

    setup = reproduce.load_setup()
    for t in reproduce.TABLES:
        for run in reproduce.plan_runs(t, _opts(), setup):
            cmd = run.train_cmd
            flags = {"dropout": float(_flag(cmd, "--dropout"))} if "--dropout" in cmd else {}
            cfg = resolve_arch_config(_flag(cmd, "--arch"), flags)
            want = {"wikitext-103": 0.2, "enwik8": 0.1}[run.dataset]
            assert cfg.dropout == want, (t, run.dataset, run.row["id"], cfg.dropout)


def test_plan_gpus_keep_tokens_per_update():
    setup = reproduce.load_setup()
    for gpus, per_gpu, want_bs, want_uf in ((4, None, 24, 1), (4, 8, 8, 3), (1, 16, 16, 6)):
        run = reproduce.plan_runs(2, _opts(gpus=gpus, batch_per_gpu=per_gpu, datasets="enwik8",
                                           rows="mswa"), setup)[0]
        cmd = run.train_cmd
        assert int(_flag(cmd, "--batch-size")) == want_bs
        assert int(_flag(cmd, "--update-freq")) == want_uf
        assert gpus * want_bs * want_uf * int(_flag(cmd, "--tokens-per-sample")) == 49152
        assert ("--distributed-world-size" in cmd) == (gpus > 1)
    with pytest.raises(reproduce.ReproError, match="cannot be split over 5 GPU"):
        reproduce.plan_runs(2, _opts(gpus=5, datasets="enwik8"), setup)


def test_plan_row_selection_and_overrides():
    setup = reproduce.load_setup()
    runs = reproduce.plan_runs(5, _opts(rows="swa-64,MSWA (base 64)", max_update=10), setup)
    assert [r.row["id"] for r in runs] == ["swa-64", "mswa-64"]
    assert all(_flag(r.train_cmd, "--max-update") == "10" for r in runs)
    with pytest.raises(reproduce.ReproError, match="unknown row"):
        reproduce.plan_runs(5, _opts(rows="nope"), setup)
    with pytest.raises(reproduce.ReproError, match="unknown dataset"):
        reproduce.plan_runs(5, _opts(datasets="ptb"), setup)


def test_plan_evaluates_the_best_checkpoint():
    setup = reproduce.load_setup()
    for t in reproduce.TABLES:
        for r in reproduce.plan_runs(t, _opts(), setup):
            assert _flag(r.eval_cmd, "--path").endswith("/checkpoint_best.pt")
            assert "--disable-validation" not in r.train_cmd


def test_memory_is_the_schedules_largest_window(monkeypatch):
    """Memory = the schedule's largest window (``window_range``) at the row's real shape; a layer with
    full attention makes it the segment (no longer an error)."""
    from fairseq_mswa.schedule import build_schedule

    assert build_schedule(12, 8, 128, "mswa").window_range()[1] == 512
    assert build_schedule(6, 4, 16, "swa").window_range()[1] == 16
    assert build_schedule(4, 4, 16, "mswa", full_attn_layers=[2]).window_range()[1] is None
    setup = reproduce.load_setup()
    cfg = reproduce.load_table(2)
    row = dict(cfg["rows"][-1], args={"attn-pattern": "mswa", "base-window": 128,
                                      "full-attn-layers": "3"})
    monkeypatch.setattr(reproduce, "load_table", lambda t: dict(cfg, rows=[row]))
    run = reproduce.plan_runs(2, _opts(datasets="enwik8"), setup)[0]
    assert run.meta["max_memory"] == 512  # the segment
    row["args"] = {"attn-pattern": "mswa", "base-window": 128, "decoder-layers": 8}
    run = reproduce.plan_runs(2, _opts(datasets="enwik8"), setup)[0]
    assert run.meta["layers"] == 8 and run.meta["max_memory"] == 511


def test_plan_cpu_scale_is_the_paper_shrunk():
    """--scale cpu: one corpus, one shape, seed, update count and tokens per update per table;
    segment, windows and full-attention lengths divided by one factor, so the relative costs
    (cost model at the run's shape) are the paper's; Table 3's linear layers keep the order."""
    from fairseq_mswa.cost import table_rows

    setup = reproduce.load_setup()
    scale = setup["scales"]["cpu"]
    f = scale["factor"]
    for t in reproduce.TABLES:
        runs = reproduce.plan_runs(t, _opts(scale="cpu", data_dir="/d"), setup)
        paper = {r.row: r for r in table_rows(t)}
        assert [r.row["row"] for r in runs] == list(paper)
        assert {r.dataset for r in runs} == {"pydoc-chars"}
        for key in ("max_update", "seed", "tokens_per_update", "segment", "layers", "heads",
                    "embed_dim"):
            assert len({r.meta[key] for r in runs}) == 1, key
        assert runs[0].meta["max_update"] == scale["tables"][t]["max-update"]
        for r in runs:
            cmd = r.train_cmd
            assert "--cpu" in cmd and "--cpu" in r.eval_cmd
            assert _flag(cmd, "--seed") == "1" and cmd[3] == "/d/pydoc-chars"
            assert int(_flag(cmd, "--tokens-per-sample")) * f in (512, 2048)
            if "--base-window" in cmd:
                assert int(_flag(cmd, "--base-window")) * f == r.row["args"]["base-window"]
            p = paper[r.row["row"]]
            if t != 3:
                assert r.meta["cost"]["relative_cost"] == pytest.approx(p.relative_cost)
        if t == 3:
            got = [r.meta["cost"]["relative_cost"] for r in runs]
            want = [paper[r.row["row"]].relative_cost for r in runs]
            assert sorted(range(5), key=got.__getitem__) == sorted(range(5), key=want.__getitem__)
            assert got[0] == pytest.approx(want[0])  # full attention: n = segment
    t2 = {r.row["id"]: r for r in reproduce.plan_runs(2, _opts(scale="cpu"), setup)}
    assert t2["full-n2048"].meta["max_memory"] == 511 and t2["mswa"].meta["max_memory"] == 127
    assert t2["mswa"].meta["cost"]["windows"] == [2, 128]
    out = reproduce.cost_report(2, list(t2.values()))
    assert "18.204" in out and "2..128" in out


def test_plan_seed_and_scale_errors():
    setup = reproduce.load_setup()
    run = reproduce.plan_runs(2, _opts(scale="cpu", seed=2, rows="mswa"), setup)[0]
    assert _flag(run.train_cmd, "--seed") == "2" and run.result.name == "mswa-seed2.json"
    assert run.save_dir.name == "mswa-seed2"
    with pytest.raises(reproduce.ReproError, match="unknown --scale 'gpu'.*cpu"):
        reproduce.plan_runs(2, _opts(scale="gpu"), setup)
    with pytest.raises(reproduce.ReproError, match="drop --datasets"):
        reproduce.plan_runs(2, _opts(scale="cpu", datasets="enwik8"), setup)
    with pytest.raises(reproduce.ReproError, match="exclude each other"):
        reproduce.plan_runs(2, _opts(scale="cpu", smoke=True), setup)
    with pytest.raises(reproduce.ReproError, match="not divisible by the scale factor 4"):
        reproduce.scale_args({"base-window": 30}, 4, "row x")


def test_missing_data_names_the_prep_script(tmp_path, capsys):
    rc = reproduce.main(["--table", "6", "--data-dir", str(tmp_path), "--results-dir",
                         str(tmp_path / "res"), "--no-tables"])
    assert rc == 1
    assert "data_prep/wikitext103.sh" in capsys.readouterr().err


# --- reproduce.py: parsing and metrics --------------------------------------------------------

EVAL_OUT = """2026-11-23 06:26:11 | INFO | fairseq_cli.eval_lm | num. model params: 1234
INFO:fairseq_cli.eval_lm:Evaluated 23,309 tokens in 0.9s (25993.96 tokens/s)
INFO:fairseq_cli.eval_lm:Loss (base 2): 6.9264, Perplexity: 121.64
"""
TRAIN_OUT = """2026-11-23 06:26:07 | INFO | train_inner | epoch 001:      2 / 6555 loss=6.886, ppl=118.3, wps=11660.7, ups=182.16, wpb=64, bsz=2, num_updates=2, lr=2e-05, gnorm=1.903, train_wall=0, wall=1
2026-11-23 06:26:07 | INFO | train | epoch 001 | loss 6.935 | ppl 122.35 | wps 150 | ups 2.34 | wpb 64 | bsz 2 | num_updates 2 | lr 2e-05 | gnorm 1.992 | train_wall 0 | wall 1
"""


def test_parse_fairseq_output():
    """reproduce.py reads fairseq's output with the shared parsers (studies.run_utils)."""
    ev = reproduce.parse_eval_lm(EVAL_OUT)
    assert ev == {"eval_symbols": 23309, "eval_seconds": 0.9, "eval_tokens_per_s": 25993.96,
                  "loss_base2": 6.9264, "perplexity": 121.64}
    tr = reproduce.parse_train_summary(TRAIN_OUT)
    assert tr["updates"] == 2 and tr["train_tokens_per_s"] == 150.0
    with pytest.raises(reproduce.CommandError, match="Evaluated N tokens"):
        reproduce.parse_eval_lm("nothing here")


def test_bpc_is_bits_per_byte_and_checks_symbol_count():
    ev = reproduce.parse_eval_lm(EVAL_OUT)
    split = {"unit": "byte", "symbols": 23309, "bytes": 23309}
    v = reproduce.metric_value("enwik8", "bpc", ev, split)
    assert v["value"] == pytest.approx(6.9264)
    # one extra </s> (split without a final newline): total bits spread over the bytes
    v = reproduce.metric_value("enwik8", "bpc", dict(ev, eval_symbols=23310),
                               {"unit": "byte", "symbols": 23310, "bytes": 23309})
    assert v["value"] == pytest.approx(6.9264 * 23310 / 23309)
    with pytest.raises(reproduce.ReproError, match="scored 23,309 symbols but the test split"):
        reproduce.metric_value("enwik8", "bpc", ev, dict(split, symbols=23310))
    assert reproduce.metric_value("wikitext-103", "ppl", ev, {})["value"] == 121.64


# --- make_tables.py ---------------------------------------------------------------------------

def _result(table, row, dataset, value, smoke=False):
    return {"table": table, "row": row, "dataset": dataset, "value": value, "smoke": smoke,
            "train": {"updates": 7, "tokens_per_update": 64}, "eval_symbols": 100}


def test_make_tables_renders_ours_next_to_paper(tmp_path):
    res = tmp_path / "results"
    for t, row, d, v in ((5, "SWA (w=128)", "wikitext-103", 31.5),
                         (5, "MSWA (base 128)", "wikitext-103", 30.25),
                         (5, "SWA (w=64)", "wikitext-103", 33.0),
                         (5, "MSWA (base 64)", "wikitext-103", 31.0),
                         (2, "MSWA", "enwik8", 1.234)):
        p = res / f"table{t}" / d / f"{abs(hash(row))}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_result(t, row, d, v, smoke=(t == 2))))
    out = tmp_path / "tables.md"
    written = make_tables.render(res, REPO / "results" / "paper.json", out)
    md = out.read_text()
    assert "| SWA (w=128) | w = 128 | 1.14 | 1.14 | 31.50 | 30.70 |" in md
    assert "| MSWA (base 128) | w_ij from 8 to 512 | 1.00 | 1.00 | 30.25 | 29.56 |" in md
    assert "| SWA (w=512) | w = 512 | 4.55 | 4.55 | - | 29.20 |" in md
    assert "| MSWA | w_ij from 8 to 512 | 1.00 | 1.00 | - | 29.56 | 1.23 (smoke) | 1.11 |" in md
    assert "| Arithmetic Progression | w_ij from 32 to 200 | 0.87 | unknown |" in md
    png = tmp_path / "table5_wikitext-103.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


def _scaled(table, row, rid, value, seed=1, cost=None):
    return {"table": table, "row": row, "row_id": rid, "dataset": "pydoc-chars", "value": value,
            "seed": seed, "scale": "cpu", "data": "/d/pydoc-chars", "run_relative_cost": cost,
            "test_split": {"bytes": 23309}, "train_tokens_per_s": 1000.0, "eval_wall_s": 5.0,
            "finished": "2026-11-23 14:00:00 UTC", "machine": {"cpu_model": "test", "cpu_count": 2},
            "train": {"updates": 500, "max_update": 500, "wall_s": 60.0, "layers": 4,
                      "heads": 4, "embed_dim": 64, "segment": 128, "tokens_per_update": 1024,
                      "factor": 4, "cost": {"windows": [2, 128]}}}


def test_render_scaled_table_beside_the_paper(tmp_path):
    res = tmp_path / "cpu"
    rows = (("SWA", "swa", 2.10, 1.14), ("MSWA", "mswa", 2.00, 1.0), ("MSWA-h", "mswa-h", 2.05,
            1.07), ("MSWA", "mswa-seed2", 2.04, 1.0))
    for name, rid, v, c in rows:
        p = res / "table2" / "pydoc-chars" / f"{rid}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        seed = 2 if "seed2" in rid else 1
        p.write_text(json.dumps(_scaled(2, name, rid, v, seed, c)))
    written = make_tables.render_scaled(2, res, REPO / "results" / "paper.json",
                                        run_info={"command": "table2.sh --scale cpu",
                                                  "rows_run_now": 6})
    assert [w.name for w in written] == ["table2.json", "table2.md", "table2.png"]
    md = (res / "table2.md").read_text()
    assert "CPU scale" in md and "not the paper's setup" in md
    assert "| MSWA | 2..128 | 1.00 | 1.00 | 2.000 | seed 2: 2.040 | 29.56 | 1.11 | 500 |" in md
    assert "| MSWA-l | - | - | 1.07 | - |" in md
    # paper (enwik8): MSWA 1.11 < MSWA-h 1.16 < SWA 1.22; ours 2.00 < 2.05 < 2.10: 3 of 3 hold
    assert "hold at CPU scale: 3 of 3" in md
    assert "MSWA: seed 1 2.000, seed 2 2.040 (spread 0.040)" in md
    assert "Command: `table2.sh --scale cpu`" in md
    summary = json.loads((res / "table2.json").read_text())
    assert summary["ordering"]["cpu"] == ["MSWA", "MSWA-h", "SWA"]
    assert summary["noise"] == [{"row": "MSWA", "seeds": {"1": 2.0, "2": 2.04}}]
    assert (res / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(res.glob(".*tmp*"))
    # a partial second-seed invocation is recorded beside the main run, not instead of it
    make_tables.render_scaled(2, res, REPO / "results" / "paper.json",
                              run_info={"command": "table2.sh --scale cpu --seed 2 --rows mswa",
                                        "rows_run_now": 1, "invocation_wall_s": 40.0})
    md = (res / "table2.md").read_text()
    assert "Command: `table2.sh --scale cpu`" in md
    assert "Also run: `table2.sh --scale cpu --seed 2 --rows mswa` (1 rows, 40 s)" in md
    # Table 6: the paper's values are unknown, the CPU order is still given
    p = res / "table6" / "pydoc-chars" / "geometric.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(_scaled(6, "MSWA (geometric)", "geometric", 2.0, cost=1.0)))
    make_tables.render_scaled(6, res, REPO / "results" / "paper.json")
    md6 = (res / "table6.md").read_text()
    assert "Paper values unknown" in md6 and "| unknown | unknown |" in md6


# --- the demo: equal updates, what the shape allows --------------------------------------------

def test_demo_plan_updates_one_count_for_both():
    """The count fits the budget for both models together, within [min, max]; the message says
    how long it takes, and that a slow machine gets fewer updates or a longer wait."""
    fast = demo.plan_updates({"SWA": 0.07, "MSWA": 0.08}, 480, 2000, 100)
    assert fast["updates"] == 2000 and fast["train_s"] == pytest.approx(300)
    assert demo.plan_message(fast).startswith("2000 updates each, about 5.0 minutes")
    busy = demo.plan_updates({"SWA": 0.25, "MSWA": 0.25}, 480, 2000, 100)
    assert busy["updates"] == 960 and "slower than usual now: 960 updates each instead of " \
        "2000 (the same count for both), about 8.0 minutes" in demo.plan_message(busy)
    slow = demo.plan_updates({"SWA": 3.0, "MSWA": 3.0}, 480, 2000, 100)
    assert slow["updates"] == 100 and slow["train_s"] == 600
    assert "take about 10.0 minutes of training, longer than the usual 8" in \
        demo.plan_message(slow)
    fixed = demo.plan_updates({"SWA": 0.1, "MSWA": 0.1}, 480, 5000, 5000)  # --updates 5000
    assert fixed["updates"] == 5000 and demo.plan_message(fixed).startswith(
        "5000 updates each (--updates) take about 16.7 minutes of training on this machine now, "
        "longer than the usual 8")
    with pytest.raises(ValueError, match="rerun the speed probe"):
        demo.plan_updates({"SWA": 0.0, "MSWA": 0.1}, 480, 2000, 100)
    with pytest.raises(ValueError, match="min_updates"):
        demo.plan_updates({"SWA": 0.1}, 480, 50, 100)
    # the first model's safety cap never cuts what the start announced
    assert demo.first_run_cap(6.0, None) == 6.0 and demo.first_run_cap(6.0, 60) == 6.0
    assert demo.first_run_cap(6.0, 300 * 60) == demo.FIRST_CAP_FACTOR * 300


def _fake_trainer(done_by_name):
    """train_one for demo.train_both: records its calls; a model trains the updates asked, or
    ``done_by_name[name](asked)`` (a time cap, or a bug)."""
    calls = []

    def train_one(name, pattern, updates, stop_minutes):
        calls.append((name, updates, stop_minutes))
        done = done_by_name.get(name, lambda n: n)(updates)
        return {"name": name, "pattern": pattern, "updates": done}
    return train_one, calls


PAIRS = (("SWA", "swa"), ("MSWA", "mswa"))


def test_demo_train_both_equal_updates():
    """The audit's case: the first model's cap stops it at 1,493 of 2,000 updates; the second
    then trains exactly 1,493 with no cap, and the cut is recorded. A second model that trains
    another count (a bug, or a cap on it) is an error, never a result."""
    train_one, calls = _fake_trainer({})
    models, cut = demo.train_both(PAIRS, 2000, 6.0, train_one)
    assert calls == [("SWA", 2000, 6.0), ("MSWA", 2000, None)] and cut is None
    assert [m["updates"] for m in models] == [2000, 2000]

    train_one, calls = _fake_trainer({"SWA": lambda n: 1493})
    models, cut = demo.train_both(PAIRS, 2000, 6.0, train_one)
    assert calls == [("SWA", 2000, 6.0), ("MSWA", 1493, None)]
    assert [m["updates"] for m in models] == [1493, 1493]
    assert cut == {"model": "SWA", "cap_minutes": 6.0, "planned": 2000, "trained": 1493}

    for bad in ({"MSWA": lambda n: n - 507}, {"SWA": lambda n: 1493, "MSWA": lambda n: 2000}):
        train_one, _ = _fake_trainer(bad)
        with pytest.raises(CommandError, match="unequal runs .* rerun with --updates"):
            demo.train_both(PAIRS, 2000, 6.0, train_one)
    train_one, _ = _fake_trainer({"SWA": lambda n: None})
    with pytest.raises(CommandError, match="SWA reports None updates of 2000"):
        demo.train_both(PAIRS, 2000, 6.0, train_one)


def test_demo_check_equal_updates():
    assert demo.check_equal_updates([{"name": "SWA", "updates": 7},
                                     {"name": "MSWA", "updates": 7}]) == 7
    for counts in ((2000, 1493), (2000, None), (0, 0)):
        with pytest.raises(CommandError, match="equal updates only"):
            demo.check_equal_updates([{"name": n, "updates": c}
                                      for n, c in zip(("SWA", "MSWA"), counts)])


def test_demo_train_command_caps_only_when_asked():
    cfg = dict(demo.QUICK, updates=5)
    plain = demo.train_command(cfg, Path("d"), "mswa", Path("s"), Path("t"))
    capped = demo.train_command(cfg, Path("d"), "swa", Path("s"), Path("t"), stop_minutes=6.0)
    assert "--stop-time-hours" not in plain and _flag(capped, "--stop-time-hours") == "0.1000"
    assert _flag(plain, "--max-update") == _flag(capped, "--max-update") == "5"


def test_demo_shape_allows():
    """At the demo's shape MSWA needs 0.98 of SWA's FLOPs per update (the issue's audit figure;
    step_flops as bench_train counts it) and holds its sum of windows in keys/values when
    decoding: 450 against SWA's 512 (4 layers x 4 heads x 32), 2 x head dim 32 x 4 bytes each."""
    allows = demo.shape_allows(demo.FULL, vocab=112)
    assert allows["flops_mswa_over_swa"] == pytest.approx(0.981, abs=0.001)
    assert allows["tokens_per_s_mswa_over_swa_at_most"] == pytest.approx(
        1 / allows["flops_mswa_over_swa"])
    per = allows["per_model"]
    assert per["SWA"]["decode_kv_cache_bytes"] == 512 * 2 * 32 * 4 == 131072
    assert per["MSWA"]["decode_kv_cache_bytes"] == 450 * 2 * 32 * 4
    assert allows["kv_cache_mswa_over_swa"] == pytest.approx(450 / 512)
    from fairseq_mswa.cost.flops import step_flops

    shape = dict(layers=4, dim=128, ffn=512, heads=4, base_window=32)
    assert per["SWA"]["train_flops_per_update"] == 16 * step_flops("xl_swa", shape, 64, 112)


def _demo_result(counts, cut=None):
    allows = demo.shape_allows(demo.FULL, vocab=112)
    models = [{"name": n, "windows": w, "updates": c, "test_bpc": 1.7, "relative_cost": rc,
               "train_tokens_per_s": tps, "eval_tokens_per_s": 3 * tps}
              for n, w, c, rc, tps in zip(("SWA", "MSWA"), ([32, 32], [2, 128]), counts,
                                          (1.14, 1.0), (12000.0, 11000.0))]
    return {"models": models, "config": dict(demo.FULL, updates=counts[0]), "cut": cut,
            "shape_allows": allows, "total_wall_s": 600.0}


def test_demo_report_lines():
    """The table shows the needed GFLOPs and the KV cache beside tokens/s, says the updates are
    equal (and why, when a cap cut them), and that equal speed is MSWA's best here; a result of
    unequal runs has no table."""
    text = "\n".join(demo.report_lines(_demo_result((2000, 2000)), 2, Path("w"), Path("o")))
    assert "| SWA | 32..32 | 2000 | 1.7000 | 1.14 | 5.813 | 12,000 | 36,000 | 128.0 KiB |" in text
    assert "| MSWA | 2..128 | 2000 | 1.7000 | 1.00 | 5.704 | 11,000 | 33,000 | 112.5 KiB |" in text
    assert "Equal updates: both models trained 2000 updates, as planned." in text
    assert ("MSWA needs 0.98x SWA's FLOPs per training step here (5.704 vs 5.813 GFLOP per "
            "update), so at equal hardware efficiency its tokens/s can be at most 1.02x SWA's; "
            "equal speed is the best it can show here (measured: training 0.92x, evaluation "
            "0.92x).") in text
    assert "112.5 KiB of keys/values per sequence against SWA's 128.0 KiB (0.88x" in text
    cut = {"model": "SWA", "cap_minutes": 6.0, "planned": 2000, "trained": 1493}
    text = "\n".join(demo.report_lines(_demo_result((1493, 1493), cut), 2, Path("w"), Path("o")))
    assert ("SWA stopped at its 6.0-minute safety cap after 1493 of the 2000 planned updates, "
            "and MSWA then trained exactly 1493, so both compare at 1493 updates.") in text
    with pytest.raises(CommandError, match="unequal runs \\(SWA 2000, MSWA 1493 updates\\)"):
        demo.report_lines(_demo_result((2000, 1493)), 2, Path("w"), Path("o"))


def test_demo_main_cut_first_run_gives_equal_updates(tmp_path, monkeypatch, capsys):
    """demo.main's wiring, fairseq-train faked: SWA's safety cap stops it after 2 of the 3
    planned updates; MSWA is asked for exactly 2 with no cap, and demo.json and the table say
    both trained 2 and why."""
    asked = []

    def fake_run_model(name, pattern, cfg, data, split, work, step, verbose=False,
                       stop_minutes=None):
        asked.append((name, cfg["updates"], stop_minutes))
        done = 2 if stop_minutes is not None else cfg["updates"]
        cost, (lo, hi) = demo.schedule_cost(cfg, pattern)
        return {"name": name, "pattern": pattern, "windows": [lo, hi], "max_memory": hi - 1,
                "updates": done, "cost": cost, "test_bpc": 5.0, "eval_symbols": 10,
                "eval_tokens_per_s": 100.0, "train_tokens_per_s": 50.0, "train_wall_s": 1.0,
                "curve": [{"update": u, "train_loss_base2": 6.0} for u in range(1, done + 1)],
                "commands": {"train": []}}

    monkeypatch.setattr(demo, "run_model", fake_run_model)
    assert demo.main(["--quick", "--work", str(tmp_path / "work"),
                      "--out", str(tmp_path / "out")]) == 0
    assert asked == [("SWA", 3, 5.0), ("MSWA", 2, None)]
    res = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert [m["updates"] for m in res["models"]] == [2, 2] == [res["config"]["updates"]] * 2
    assert res["config"]["updates_planned"] == 3
    assert res["cut"] == {"model": "SWA", "cap_minutes": 5.0, "planned": 3, "trained": 2}
    out = capsys.readouterr().out
    assert "SWA stopped at its 5.0-minute safety cap after 2 of the 3 planned updates" in out
    assert "| SWA | 16..16 | 2 |" in out and "| MSWA | 1..64 | 2 |" in out


# --- end to end: the table scripts' --smoke mode and the demo's --quick mode --------------------

def _run(cmd, timeout):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _check_smoke(tmp_path, table, datasets, rows=None):
    res = tmp_path / "results"
    cmd = ["bash", str(REPO / "scripts" / f"table{table}.sh"), "--smoke",
           "--data-dir", str(tmp_path / "data-bin"), "--results-dir", str(res),
           "--runs-dir", str(tmp_path / "runs"), "--save-root", str(tmp_path / "ckpt")]
    if rows:
        cmd += ["--rows", ",".join(rows)]
    cmd += ["--datasets", ",".join(datasets)]
    out = _run(cmd, timeout=600)
    cfg = reproduce.load_table(table)
    ids = rows or [r["id"] for r in cfg["rows"]]
    for d in datasets:
        for rid in ids:
            r = json.loads((res / f"table{table}" / d / f"{rid}.json").read_text())
            assert r["smoke"] is True and r["train"]["updates"] == 2
            assert r["value"] > 0 and r["eval_symbols"] == r["test_split"]["symbols"]
            assert r["checkpoint"].endswith("checkpoint_best.pt") and r["valid_curve"]
            tb = tmp_path / "runs" / f"table{table}" / d / rid / "tb"
            assert list(tb.rglob("events.out.tfevents*")), "TensorBoard logs are on by default"
    md = (res / "tables.md").read_text()
    assert "(smoke)" in md
    # a second run finds every result and skips it
    again = _run(cmd, timeout=120)
    assert again.count("exists: skipped") == len(ids) * len(datasets)
    return out


def test_table3_smoke_end_to_end(tmp_path):
    """Table 3 rows (linear_mswa presets, language_modeling task) on the byte-level corpus:
    two rows keep the suite fast (tests/test_linear_mswa.py trains every preset; the full smoke
    of every row of every table is test_full_smoke)."""
    _check_smoke(tmp_path, 3, ["enwik8"], rows=["transformer", "la-mswa"])


def test_table6_smoke_end_to_end(tmp_path):
    """Every Table 6 row (Transformer-XL with the three window variations) end to end, on the
    word-level stand-in for Wikitext-103 (adaptive softmax)."""
    _check_smoke(tmp_path, 6, ["wikitext-103"])


@pytest.mark.skipif(not os.environ.get("MSWA_FULL_SMOKE"),
                    reason="set MSWA_FULL_SMOKE=1 to smoke-run every row of every table (~8 min)")
@pytest.mark.parametrize("table,datasets", [(2, ["wikitext-103", "enwik8"]),
                                            (3, ["wikitext-103", "enwik8"]),
                                            (5, ["wikitext-103"]),
                                            (6, ["enwik8"])])
def test_full_smoke(tmp_path, table, datasets):
    _check_smoke(tmp_path, table, datasets)


def test_demo_quick(tmp_path):
    out = _run([sys.executable, str(REPO / "scripts" / "demo.py"), "--quick",
                "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")], timeout=600)
    res = json.loads((tmp_path / "out" / "demo.json").read_text())
    names = [m["name"] for m in res["models"]]
    assert names == ["SWA", "MSWA"]
    for m in res["models"]:
        assert 0 < m["test_bpc"] < 20 and m["eval_symbols"] > 0
        assert m["updates"] == res["config"]["updates"] == len(m["curve"]) == 3
    mswa = next(m for m in res["models"] if m["name"] == "MSWA")
    assert mswa["relative_cost"] == 1.0
    # equal updates, as planned; only the first model had a time cap
    assert res["config"]["updates_planned"] == 3 and res["cut"] is None
    swa_cmd, mswa_cmd = (m["commands"]["train"] for m in res["models"])
    assert "--stop-time-hours" in swa_cmd and "--stop-time-hours" not in mswa_cmd
    assert "[1/4] 3 updates each (--quick: no speed probe" in out
    assert "Equal updates: both models trained 3 updates, as planned." in out
    # what the shape allows, recorded and printed beside tokens/s
    allows = res["shape_allows"]
    assert 0.9 < allows["flops_mswa_over_swa"] < 1.0
    assert allows["vocab"] >= res["corpus"]["dict_types"] + 4  # fairseq's specials
    for m in res["models"]:
        own = allows["per_model"][m["name"]]
        assert m["train_flops_per_update"] == own["train_flops_per_update"] > 0
        # 4 layers x 4 heads, head dim 8, float32: every head holds its window
        assert m["decode_kv_cache_bytes"] == m["cost"] * 2 * 8 * 4
    assert f"MSWA needs {allows['flops_mswa_over_swa']:.2f}x SWA's FLOPs per training step" in out
    assert "equal speed is the best it can show here" in out
    assert (tmp_path / "out" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "| SWA |" in out and "| MSWA |" in out
    # quiet: fairseq's logs go to files (named at the end), not to the terminal
    assert "| INFO |" not in out and "train_inner" not in out
    assert "Full fairseq logs:" in out
    for name in ("SWA", "MSWA"):
        assert "| train_inner |" in (tmp_path / "work" / f"{name}.train.log").read_text()
        assert "Evaluated" in (tmp_path / "work" / f"{name}.eval.log").read_text()
