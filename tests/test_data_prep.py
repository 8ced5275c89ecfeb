"""data_prep: fabricated small archives, no network (a local HTTP server stands in for mirrors)."""

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep import corpus  # noqa: E402
from data_prep.corpus import DataPrepError  # noqa: E402


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip(path: Path, members: dict) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return _sha(buf.getvalue())


def _fake_enwik8(n_lines=60) -> bytes:
    """Bytes of XML-like text with newlines, multi-byte UTF-8 and a carriage return; ends with a
    newline (so the test split does) and has a valid split that does not."""
    lines = []
    for i in range(n_lines):
        lines.append(f"  <page id='{i}'>caf\u00e9 \u00fcber na\u00efve {i * 7919 % 1000}\r</page>")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    return data


def _leftovers(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


@pytest.fixture(scope="module")
def enwik8_prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enwik8")
    data = _fake_enwik8()
    heldout = 700
    # choose heldout so that valid does not end with a newline but test does
    assert not data[: -heldout].endswith(b"\n") and data.endswith(b"\n")
    sha = _zip(tmp / "enwik8.zip", {"enwik8": data})
    info = corpus.prepare_enwik8(tmp / "root", tmp / "enwik8.zip", workers=1,
                                  expect_sha256=sha, heldout=heldout, log=lambda m: None)
    return tmp, data, heldout, info


def test_enwik8_split_sizes_and_format(enwik8_prepared):
    tmp, data, heldout, info = enwik8_prepared
    text = tmp / "root" / "text" / "enwik8"
    parts = {"train": data[: -2 * heldout], "valid": data[-2 * heldout: -heldout],
             "test": data[-heldout:]}
    assert len(parts["train"]) + 2 * heldout == len(data)
    for split, part in parts.items():
        txt = (text / f"{split}.txt").read_text(encoding="ascii")
        # every token is a decimal byte value; newline bytes are line breaks
        decoded = b"\n".join(bytes(int(t) for t in line.split()) for line in txt.split("\n"))
        assert decoded == part
        assert all(t.isdigit() and 0 <= int(t) < 256 for t in txt.split())
        assert "10" not in txt.split()  # byte 10 never appears as a number
        st = info["splits"][split]
        assert st["bytes"] == len(part)
    # the carriage return (13) is a token, not a line break
    assert "13" in (text / "train.txt").read_text().split()


def test_enwik8_scored_symbols_equal_bytes(enwik8_prepared):
    """fairseq's stored stream, with </s> read as byte 10, is exactly the split's bytes."""
    from fairseq.data import Dictionary, indexed_dataset

    tmp, data, heldout, info = enwik8_prepared
    dest = tmp / "root" / "enwik8"
    d = Dictionary.load(str(dest / "dict.txt"))
    test = data[-heldout:]
    ds = indexed_dataset.make_dataset(str(dest / "test"), impl="mmap")
    stream = [int(t) for i in range(len(ds)) for t in ds[i]]
    assert info["splits"]["test"]["symbols"] == len(stream) == len(test)
    rebuilt = bytes(10 if t == d.eos() else int(d[t]) for t in stream)
    assert rebuilt == test
    # a split not ending with a newline gets fairseq's extra </s> on its last line: recorded
    valid = info["splits"]["valid"]
    assert valid["ends_with_newline"] is False
    assert valid["symbols"] == valid["bytes"] + 1
    marker = json.loads((dest / corpus.MARKER).read_text())
    assert marker["splits"]["test"]["symbols"] == marker["splits"]["test"]["bytes"]
    assert marker["official_archive"] is False
    # dictionary: the distinct byte values of train (newline excluded: it is </s>)
    assert marker["dict_types"] == len(set(data[: -2 * heldout]) - {10})


def test_enwik8_second_run_does_nothing(enwik8_prepared, monkeypatch):
    tmp, data, heldout, info = enwik8_prepared
    dest = tmp / "root" / "enwik8"
    before = {p: p.stat().st_mtime_ns for p in dest.iterdir()}

    def boom(*a, **k):
        raise AssertionError("a finished dataset must not be touched again")

    monkeypatch.setattr(corpus, "fetch_archive", boom)
    monkeypatch.setattr(corpus, "run_preprocess", boom)
    msgs = []
    again = corpus.prepare_enwik8(tmp / "root", None, heldout=heldout, log=msgs.append)
    assert again == info
    assert any("nothing to do" in m for m in msgs)
    assert {p: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path):
    _zip(tmp_path / "enwik8.zip", {"enwik8": _fake_enwik8()})
    root = tmp_path / "root"
    with pytest.raises(DataPrepError, match="sha256 .* expected 547994d9"):
        corpus.prepare_enwik8(root, tmp_path / "enwik8.zip", log=lambda m: None)
    leftover = [p for p in root.rglob("*")] if root.exists() else []
    assert leftover == []


def test_interrupt_during_binarize_leaves_no_output(tmp_path, monkeypatch):
    data = _fake_enwik8(20)
    sha = _zip(tmp_path / "enwik8.zip", {"enwik8": data})

    def interrupted(prefixes, dest, workers, log=None):
        (Path(dest) / "train.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "run_preprocess", interrupted)
    root = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        corpus.prepare_enwik8(root, tmp_path / "enwik8.zip", expect_sha256=sha, heldout=100,
                               log=lambda m: None)
    assert not (root / "enwik8").exists()
    assert _leftovers(root) == []
    # the finished split (its own atomic step) is kept and reused
    assert (root / "text" / "enwik8" / corpus.MARKER).is_file()


def test_wikitext103_fabricated(tmp_path):
    train = " = Title = \n\n the cat sat on the mat . \n a dog ran @-@ far . \n"
    valid = " the dog sat . \n\n"
    test = " the cat ran far . \n a mat . \n"
    sha = _zip(tmp_path / "wt.zip", {f"wikitext-103/wiki.{s}.tokens": t.encode()
                                     for s, t in (("train", train), ("valid", valid),
                                                  ("test", test))})
    root = tmp_path / "root"
    info = corpus.prepare_wikitext103(root, tmp_path / "wt.zip", workers=1, expect_sha256=sha,
                                       log=lambda m: None)
    # words + one </s> per line (Merity's <eos>), empty lines included
    assert info["splits"]["test"]["symbols"] == len(test.split()) + test.count("\n")
    assert info["splits"]["valid"]["symbols"] == len(valid.split()) + valid.count("\n")
    assert info["dict_types"] == len(set(train.split()))
    assert (root / "wikitext-103" / "test.bin").is_file()
    assert _leftovers(root) == []


def test_wikitext103_archive_missing_member(tmp_path):
    sha = _zip(tmp_path / "wt.zip", {"wikitext-103/wiki.train.tokens": b"a b\n"})
    with pytest.raises(DataPrepError, match="lacks wikitext-103/wiki.valid.tokens"):
        corpus.prepare_wikitext103(tmp_path / "root", tmp_path / "wt.zip", expect_sha256=sha,
                                    log=lambda m: None)
    assert not (tmp_path / "root" / "wikitext-103").exists()
    assert _leftovers(tmp_path / "root") == []


# --- download ---------------------------------------------------------------------------------

class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges = []

    def do_GET(self):  # noqa: N802
        data = self.payload
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_resumes_from_part_file(tmp_path, server):
    payload = os.urandom(300_000)
    _RangeHandler.payload, _RangeHandler.ranges = payload, []
    url = f"http://127.0.0.1:{server.server_address[1]}/x.zip"
    spec = corpus.ArchiveSpec("x", "x.zip", (url,), _sha(payload), len(payload))
    dl = tmp_path / "downloads"
    dl.mkdir()
    (dl / "x.zip.part").write_bytes(payload[:123_456])
    path = corpus.fetch_archive(spec, dl, log=lambda m: None)
    assert path == dl / "x.zip" and path.read_bytes() == payload
    assert _RangeHandler.ranges == ["bytes=123456-"]
    assert not (dl / "x.zip.part").exists()
    # present and verified: no second request
    corpus.fetch_archive(spec, dl, log=lambda m: None)
    assert len(_RangeHandler.ranges) == 1


def test_download_checksum_mismatch_removes_file(tmp_path, server):
    _RangeHandler.payload, _RangeHandler.ranges = b"not the archive", []
    url = f"http://127.0.0.1:{server.server_address[1]}/x.zip"
    spec = corpus.ArchiveSpec("x", "x.zip", (url,), "0" * 64, None)
    with pytest.raises(DataPrepError, match="--archive PATH"):
        corpus.fetch_archive(spec, tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_names_archive_option(tmp_path):
    spec = corpus.ArchiveSpec("x", "x.zip", ("http://127.0.0.1:9/x.zip",), "0" * 64, 10)
    with pytest.raises(DataPrepError) as e:
        corpus.fetch_archive(spec, tmp_path, log=lambda m: None)
    assert "could not download x.zip" in str(e.value) and "--archive PATH" in str(e.value)


def test_shell_wrapper_end_to_end(tmp_path):
    data = _fake_enwik8(15)
    sha = _zip(tmp_path / "enwik8.zip", {"enwik8": data})
    cmd = ["bash", str(REPO / "data_prep" / "enwik8.sh"), "--root", str(tmp_path / "root"),
           "--archive", str(tmp_path / "enwik8.zip"), "--workers", "1"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--expect-sha256" in bad.stderr and "sha256" in bad.stderr
    ok = subprocess.run(cmd + ["--expect-sha256", sha, "--heldout-bytes", "100"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    marker = json.loads((tmp_path / "root" / "enwik8" / corpus.MARKER).read_text())
    assert marker["splits"]["test"]["bytes"] == 100
    again = subprocess.run(cmd + ["--expect-sha256", sha, "--heldout-bytes", "100"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_unseen_heldout_symbols_are_counted(enwik8_prepared):
    """Held-out byte values missing from train (they become <unk>) are counted and listed."""
    tmp, data, heldout, info = enwik8_prepared
    for split in ("valid", "test"):
        assert info["splits"][split]["unseen_in_train"] == {"values": [], "occurrences": 0}
    parts = {"train": b"abc\nab", "valid": b"abz\nzz\xff", "test": b"c\n\n"}
    assert corpus.unseen_symbols(parts) == {
        "valid": {"values": [ord("z"), 0xFF], "occurrences": 4},
        "test": {"values": [], "occurrences": 0},
    }


# --- bad inputs: one line naming the fix, nothing kept ------------------------------------------

BAD_MEMBERS = {  # kind -> (member content, expected error)
    "empty": (b"", r"member wikitext-103/wiki.train.tokens is empty: the archive is damaged"),
    "binary": (b"\x00\x01\x02\xff" * 50, r"looks binary \(a NUL byte at offset 0\): the archive"),
    "non-utf8": (" caf\u00e9 au lait . \n".encode("latin-1"),
                 r"is not UTF-8 \(byte offset 4: .*download it again"),
}


@pytest.mark.parametrize("kind", list(BAD_MEMBERS))
def test_wikitext103_bad_member_refused_before_binarizing(tmp_path, kind):
    """An empty, binary or non-UTF-8 text in the archive: a DataPrepError naming the fix before
    fairseq-preprocess runs, and no extracted text is kept as finished."""
    bad, match = BAD_MEMBERS[kind]
    ok = b" the cat sat . \n"
    sha = _zip(tmp_path / "wt.zip", {"wikitext-103/wiki.train.tokens": bad,
                                     "wikitext-103/wiki.valid.tokens": ok,
                                     "wikitext-103/wiki.test.tokens": ok})
    root = tmp_path / "root"
    with pytest.raises(DataPrepError, match=match) as e:
        corpus.prepare_wikitext103(root, tmp_path / "wt.zip", expect_sha256=sha,
                                    log=lambda m: None)
    assert "\n" not in str(e.value)
    assert not (root / "text" / "wikitext-103").exists() and not (root / "wikitext-103").exists()
    assert _leftovers(root) == []


def test_enwik8_empty_refused_through_cli(tmp_path):
    sha = _zip(tmp_path / "enwik8.zip", {"enwik8": b""})
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "data_prep.prepare", "enwik8", "--root", str(root),
                           "--archive", str(tmp_path / "enwik8.zip"), "--expect-sha256", sha],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert "is empty (0 bytes)" in err[0] and "download it again" in err[0]
    assert [p for p in root.rglob("*") if p.is_file()] == []
