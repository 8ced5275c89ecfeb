"""studies.run_utils: fairseq log parsing (real log lines), atomic writes, logged runs."""

import io
import json
import sys

import pytest

from studies.run_utils import (
    REPO_ROOT,
    CommandError,
    TrainProgress,
    git_commit,
    machine_info,
    parse_eval_lm,
    parse_train_inner,
    parse_train_summary,
    parse_valid,
    portable_command,
    provenance,
    run_logged,
    script_command,
    write_json_atomic,
    write_result,
)

# lines as fairseq 0.12 prints them (--log-format simple / json)
INNER = ("2026-11-23 13:42:48 | INFO | train_inner | epoch 001:      2 / 563 loss=6.485, "
         "ppl=89.56, wps=5834.9, ups=91.16, wpb=64, bsz=2, num_updates=2, lr=0.000707107, "
         "gnorm=2.367, clip=100, train_wall=0, wall=1")
INNER_JSON = ('2026-11-23 13:42:48 | INFO | train_inner | {"epoch": 1, "update": 0.004, '
              '"loss": "6.485", "wps": "5834.9", "num_updates": "1200"}')
SUMMARY = ("2026-11-23 13:42:48 | INFO | train | epoch 001 | loss 7.317 | ppl 159.43 | "
           "wps 3151.1 | ups 48.93 | wpb 64 | bsz 2 | num_updates 3 | lr 0.00057735 | "
           "train_wall 0 | wall 1")


def test_parse_eval_lm_thousands_separator(eval_lm_output):
    assert eval_lm_output(1234567, 6.9264, 121.64) .count("1,234,567") == 1
    ev = parse_eval_lm(eval_lm_output(1234567, 6.9264, 121.64))
    assert ev["eval_symbols"] == 1_234_567
    assert ev["loss_base2"] == 6.9264 and ev["perplexity"] == 121.64
    assert parse_eval_lm(eval_lm_output(999, 1.5, 2.83))["eval_symbols"] == 999
    with pytest.raises(CommandError, match="Evaluated N tokens"):
        parse_eval_lm("INFO:fairseq_cli.eval_lm:nothing here")


def test_parse_train_lines():
    assert parse_train_inner(INNER) == [{"update": 2, "loss": 6.485, "wps": 5834.9}]
    assert parse_train_inner(INNER_JSON) == [{"update": 1200, "loss": 6.485, "wps": 5834.9}]
    assert parse_train_inner(SUMMARY + "\nunrelated") == []
    s = parse_train_summary("\n".join([INNER, SUMMARY]))
    assert s == {"train_loss_base2": 7.317, "train_tokens_per_s": 3151.1, "updates": 3,
                 "train_wall_s": 0.0}


def test_train_progress_follows_the_log():
    bar = TrainProgress("x", total=10, file=io.StringIO())
    for line in (INNER, INNER.replace("num_updates=2", "num_updates=5"), SUMMARY):
        bar(line)
    assert bar.updates == 5 and bar.bar.n == 5
    bar(SUMMARY.replace("num_updates 3", "num_updates 7"))  # the final summary wins
    assert bar.updates == 7
    bar.close()


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left


def test_write_result_prints_then_writes_json_and_markdown(tmp_path, capsys):
    record = {"b": 1, "a": [1.5, None]}  # keys stay in the record's order
    write_result(record, tmp_path / "r.json", tmp_path / "r.md", "# table\n")
    assert capsys.readouterr().out == "# table\n\n"
    assert (tmp_path / "r.json").read_text() == '{\n "b": 1,\n "a": [\n  1.5,\n  null\n ]\n}\n'
    assert (tmp_path / "r.md").read_text() == "# table\n"
    write_result(record, None, "", "quiet", echo=False)  # no path: nothing written
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_run_logged_tees_to_the_log(tmp_path):
    seen = []
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    rc, out = run_logged([sys.executable, "-c", code], tmp_path / "x.log", on_line=seen.append)
    assert rc == 3 and sorted(out.split()) == ["err", "out"] and len(seen) == 2
    log = (tmp_path / "x.log").read_text()
    assert log.startswith("$ ") and "out\n" in log and "err\n" in log


def test_portable_command_repo_relative_plain_python(tmp_path):
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data / "pydoc-chars"), "--user-dir",
           str(REPO_ROOT / "fairseq_mswa"), "--save-dir", str(REPO_ROOT / "runs" / "x"),
           f"--json={REPO_ROOT / 'results' / 'a.json'}", "--lr", "0.001", "/elsewhere/file"]
    assert portable_command(cmd, {"data-dir": data}) == [
        "python", "-m", "fairseq_cli.train", "<data-dir>/pydoc-chars", "--user-dir",
        "fairseq_mswa", "--save-dir", "runs/x", "--json=results/a.json", "--lr", "0.001",
        "/elsewhere/file"]
    # a data dir inside the repository stays repository-relative
    assert portable_command([str(REPO_ROOT / "runs" / "d" / "c")],
                            {"data-dir": REPO_ROOT / "runs" / "d"}) == ["runs/d/c"]
    assert script_command("bench_train.py", ["--json", str(REPO_ROOT / "r.json")]) == \
        "python scripts/bench_train.py --json r.json"


def test_provenance_records_commit_date_and_one_machine_layout():
    rec = provenance("python scripts/x.py", "cpu", 1)
    assert set(rec) == {"command", "git_commit", "git_dirty", "date", "machine"}
    assert rec["git_commit"] == git_commit() and rec["date"].endswith(" UTC")
    if (REPO_ROOT / ".git").exists():
        assert len(rec["git_commit"]) == 40
    assert set(rec["machine"]) == set(machine_info("cpu", 1)) >= {
        "platform", "python", "torch", "fairseq", "cpu_model", "cpu_count", "torch_threads",
        "device", "load_average_at_start"}
    assert rec["machine"]["torch_threads"] == 1


def test_progress_lines_of_fairseq_train():
    """The train_inner and valid lines a progress bar and the table driver read."""
    inner = ("2026-11-23 06:26:07 | INFO | train_inner | epoch 001:      2 / 6555 loss=6.886, "
             "ppl=118.3, wps=11660.7, ups=182.16, wpb=64, bsz=2, num_updates=2, lr=2e-05")
    assert [(r["update"], r["loss"]) for r in parse_train_inner(inner)] == [(2, 6.886)]
    valid = ("2026-11-23 06:26:07 | INFO | valid | epoch 001 | valid on 'valid' subset | "
             "loss 4.819 | ppl 28.2 | wps 1 | wpb 64 | bsz 2 | num_updates 40")
    assert parse_valid(valid) == [{"update": 40, "loss": 4.819}]
    assert parse_valid("| train | epoch 001 | loss 6.935") == []
    assert parse_train_inner("| train | epoch 001 | loss 6.935") == []
