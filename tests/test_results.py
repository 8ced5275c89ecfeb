"""The committed results under results/: records a user can repeat and trace: no absolute path of
the machine they ran on, plain ``python`` in commands, the measured git commit (or an honest note),
and run_utils.machine_info's one machine layout."""

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDS = sorted(p for p in RESULTS.rglob("*.json") if p.name != "paper.json")
MACHINE_KEYS = {"platform", "python", "torch", "fairseq", "cpu_model", "cpu_count",
                "torch_threads", "device", "load_average_at_start"}
ABSOLUTE = re.compile(r"(^|[\s='\"(])/(work|tmp|root|home|usr|opt|mnt|data)/")


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _machines(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "machine" and isinstance(v, dict):
                yield v
            else:
                yield from _machines(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _machines(v)


def test_there_are_records():
    assert len(RECORDS) > 30


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_record_is_portable_and_traceable(path):
    rec = json.loads(path.read_text())
    for s in _strings(rec):
        assert not ABSOLUTE.search(s), f"absolute path in {path.name}: {s[:120]}"
        assert not re.search(r"\S*/bin/python", s), f"interpreter path in {path.name}: {s[:120]}"
    if "git_commit" in rec or "rows" not in rec or "run_info" not in rec:  # not a table summary
        assert "git_commit" in rec, path.name
        commit = rec["git_commit"]
        assert (commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit)) or \
            "not recorded" in rec.get("git_commit_note", ""), path.name
    machines = list(_machines(rec))
    assert machines, f"{path.name} records no machine"
    for m in machines:
        assert MACHINE_KEYS <= set(m), (path.name, sorted(MACHINE_KEYS - set(m)))


def test_markdown_beside_the_records_is_portable():
    for md in RESULTS.rglob("*.md"):
        text = md.read_text()
        assert not ABSOLUTE.search(text), md.name
