"""The corpus library: download, verify, extract, split and binarize (Wikitext-103, enwik8, and
the skeleton every byte- or word-level corpus is built with). Its command line is
``python -m data_prep.prepare`` (``data_prep/prepare.py``).

Layout under ``--root`` (default ``data-bin``)::

    downloads/wikitext-103-v1.zip     verified archive (``.part`` while downloading; resumable)
    text/wikitext-103/wiki.*.tokens   extracted text        (text/enwik8/{train,valid,test}.txt)
    wikitext-103/                     fairseq-preprocess output + prepared.json   (enwik8/)

Guarantees:

* resume: an interrupted download continues from its ``.part`` file (HTTP Range);
* integrity: the archive's sha256 must match before anything is extracted; a mismatch is an
  error and the bad file is removed;
* atomic: every output directory is built in a ``.tmp-*`` sibling and renamed into place at the
  end; Ctrl-C removes the temporary directory, so no half-written output ever has the final name;
* idempotent: a finished dataset holds ``prepared.json``; a second run prints that and does
  nothing else;
* offline: ``--archive PATH`` uses an archive downloaded by hand; a failed download says so and
  names that option.

The enwik8 split is the one of awd-lstm-lm's ``prep_enwik8.py`` (used by Transformer-XL): the last
5,000,000 bytes are test, the 5,000,000 before valid, the first 90,000,000 train; every byte is
written as its decimal value, separated by spaces, and a newline byte (10) is kept as a line
break, which fairseq turns into ``</s>``. So every byte is exactly one symbol, and fairseq-eval-lm's
"Loss (base 2)" is bits per character. fairseq appends ``</s>`` to every line, including a last
line that lacks its newline: a split that does not end with byte 10 therefore has one symbol more
than bytes. ``prepared.json`` records ``bytes`` and ``symbols`` of every split (and the check
that ``symbols == bytes + (0 if the split ends with a newline else 1)``); scripts/reproduce.py
turns the eval loss into bits per byte with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

from .records import write_json_atomic

MARKER = "prepared.json"
CHUNK = 1 << 20


class DataPrepError(RuntimeError):
    """A preparation step failed; the message names the fix."""


@dataclass(frozen=True)
class ArchiveSpec:
    """A downloadable archive and what must be true of it."""

    name: str  # dataset name: output folder under --root
    filename: str  # archive file name under downloads/
    urls: Tuple[str, ...]
    sha256: str
    size: Optional[int] = None  # bytes; used to resume and to reject oversize .part files


WIKITEXT103 = ArchiveSpec(
    name="wikitext-103",
    filename="wikitext-103-v1.zip",
    # the original S3 address answers 403 nowadays; Merity's mirror serves the same file
    urls=(
        "https://wikitext.smerity.com/wikitext-103-v1.zip",
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip",
    ),
    sha256="242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590",
    size=190_229_076,
)
WIKITEXT103_MEMBERS = {
    "wikitext-103/wiki.train.tokens": "wiki.train.tokens",
    "wikitext-103/wiki.valid.tokens": "wiki.valid.tokens",
    "wikitext-103/wiki.test.tokens": "wiki.test.tokens",
}
# Checked when the official archive is used (Merity et al. 2016; fairseq-eval-lm prints
# "Evaluated 245569 tokens" on this test split: fairseq's </s> per line is Merity's <eos>).
WIKITEXT103_TEST_TOKENS = 245_569
WIKITEXT103_DICT_TYPES = 267_735  # without fairseq's 4 specials and its padding symbols

ENWIK8 = ArchiveSpec(
    name="enwik8",
    filename="enwik8.zip",
    urls=("http://mattmahoney.net/dc/enwik8.zip",),
    sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
    size=36_445_475,
)
ENWIK8_MEMBER = "enwik8"
ENWIK8_BYTES = 100_000_000
ENWIK8_RAW_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
ENWIK8_HELDOUT_BYTES = 5_000_000  # valid and test each (prep_enwik8.py's num_test_chars)

SPLITS = ("train", "valid", "test")

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[data_prep] {msg}", flush=True)


# --- files ------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(parent: Path, name: str, log: Log = _log) -> None:
    """Remove ``.tmp-<name>-<pid>`` folders left by a run that was killed (its pid is gone)."""
    if not parent.is_dir():
        return
    for p in parent.glob(f".tmp-{name}-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            log(f"removing {p} left by an interrupted run")
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``final``; rename it to ``final`` if the block succeeds,
    remove it if the block raises (Ctrl-C included)."""
    final = Path(final)
    if final.exists():
        raise DataPrepError(f"{final} already exists: remove it to rebuild it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


TEXT_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file (as git and grep do)


def inspect_text_file(path: Path, label: str, fix: Optional[str] = None) -> Dict:
    """Check that ``path`` is a non-empty UTF-8 text file and measure it in one pass:
    ``{"sha256", "bytes", "lines", "words", "ends_with_newline"}`` (``lines``: newline-separated
    lines, a last line without its newline included, as fairseq reads them; ``words``:
    whitespace-separated words). ``label`` names the file in errors (e.g. ``--train x.txt``);
    ``fix`` replaces the default advice for a binary or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"{label}: no such file" + (" (a folder)" if path.is_dir() else ""))
    h = hashlib.sha256()
    size = lines = words = 0
    has_text, last = False, b""
    with open(path, "rb") as f:
        head = f.read(TEXT_SNIFF_BYTES)
        f.seek(0)
        nul = head.find(b"\0")
        if nul >= 0:
            raise DataPrepError(f"{label} looks binary (a NUL byte at offset {nul}): "
                                + (fix or "pass a UTF-8 text file"))
        for raw in f:
            nul = raw.find(b"\0")
            if nul >= 0:
                raise DataPrepError(f"{label} looks binary (a NUL byte at offset {size + nul}): "
                                    + (fix or "pass a UTF-8 text file"))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.start + 4]
                raise DataPrepError(
                    f"{label} is not UTF-8 (byte offset {size + e.start}: {bad!r}): "
                    + (fix or f"convert it, e.g. iconv -f latin1 -t utf-8 {path} > {path}.utf8")
                ) from None
            h.update(raw)
            size += len(raw)
            lines += 1
            n = len(text.split())
            words += n
            has_text = has_text or n > 0
            last = raw
    if size == 0:
        raise DataPrepError(f"{label} is empty: " + (fix or "pass a file with text"))
    if not has_text:
        raise DataPrepError(f"{label} has no text (only whitespace): "
                            + (fix or "pass a file with text"))
    return {"sha256": h.hexdigest(), "bytes": size, "lines": lines, "words": words,
            "ends_with_newline": last.endswith(b"\n")}


# --- download ---------------------------------------------------------------------------------

def download(url: str, part: Path, size: Optional[int] = None, log: Log = _log,
             timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, resuming from its current length with an HTTP Range
    request. A server that ignores Range (status 200) restarts the file from zero."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        log(f"{part} is larger than the expected {size:,} bytes: starting over")
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": "fairseq_mswa-data_prep/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and (size is None or have == size):
            return  # nothing left to fetch
        raise
    with resp:
        status = getattr(resp, "status", 200)
        mode = "ab" if (have and status == 206) else "wb"
        if mode == "wb" and have:
            log("server ignored the resume request: downloading from the start")
            have = 0
        total = size
        length = resp.headers.get("Content-Length")
        if total is None and length is not None:
            total = have + int(length)
        done, last, t0 = have, 0.0, time.time()
        with open(part, mode) as f:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                done += len(block)
                now = time.time()
                if now - last > 5:
                    last = now
                    pct = f" ({100 * done / total:.1f}%)" if total else ""
                    rate = (done - have) / max(now - t0, 1e-9) / 1e6
                    log(f"  {done:,} bytes{pct}, {rate:.1f} MB/s")


def fetch_archive(spec: ArchiveSpec, downloads: Path, archive: Optional[Path] = None,
                  expect_sha256: Optional[str] = None, log: Log = _log) -> Path:
    """Return a verified archive: ``archive`` if given (a file the user downloaded by hand),
    else ``downloads/<filename>``, downloading (with resume) what is missing."""
    want = (expect_sha256 or spec.sha256).lower()
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DataPrepError(f"--archive {archive}: no such file")
        log(f"checking sha256 of {archive}")
        got = sha256_file(archive)
        if got != want:
            raise DataPrepError(
                f"{archive} has sha256 {got}, expected {want} ({spec.filename}): the file is "
                f"damaged or a different release; download it again ({spec.urls[0]}), or pass "
                f"--expect-sha256 {got} if it is a repacked copy you trust"
            )
        return archive
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / spec.filename
    if final.exists():
        log(f"checking sha256 of {final}")
        got = sha256_file(final)
        if got == want:
            return final
        raise DataPrepError(
            f"{final} has sha256 {got}, expected {want}: delete it and run again, or pass a good "
            f"copy with --archive PATH"
        )
    part = downloads / (spec.filename + ".part")
    errors = []
    for url in spec.urls:
        log(f"downloading {url} -> {part} (resumes if interrupted)")
        try:
            download(url, part, None if expect_sha256 else spec.size, log=log)
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
            log(f"download failed: {url}: {e}")
            continue
        got = sha256_file(part)
        if got != want:
            part.unlink()
            errors.append(f"{url}: sha256 {got} != {want} (file removed)")
            log(f"checksum mismatch for {url}; removed the download")
            continue
        os.replace(part, final)
        log(f"verified {final} (sha256 {want})")
        return final
    raise DataPrepError(
        f"could not download {spec.filename}:\n  " + "\n  ".join(errors) + "\n"
        f"Download it by hand (e.g. {spec.urls[0]}; sha256 {want}) and run again with "
        f"--archive PATH"
    )


# --- extraction -------------------------------------------------------------------------------

def extract_members(archive: Path, members: Dict[str, str], out_dir: Path) -> None:
    """Copy the zip members ``members`` (member name -> output file name) into ``out_dir``."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DataPrepError(f"{archive} is not a zip archive ({e})") from None
    with zf:
        names = set(zf.namelist())
        missing = [m for m in members if m not in names]
        if missing:
            raise DataPrepError(f"{archive} lacks {', '.join(missing)}: not the expected archive")
        for member, out_name in members.items():
            with zf.open(member) as src, open(out_dir / out_name, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


# --- enwik8 split -----------------------------------------------------------------------------

_BYTE_STR = [str(b) for b in range(256)]


def bytes_to_tokens(data: bytes) -> str:
    """prep_enwik8 format: bytes as decimal values separated by spaces, byte 10 a line break."""
    return "\n".join(" ".join(map(_BYTE_STR.__getitem__, seg)) for seg in data.split(b"\n"))


def write_tokens(data: bytes, path: Path, lines_per_write: int = 20000) -> None:
    segs = data.split(b"\n")
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for i in range(0, len(segs), lines_per_write):
            block = segs[i:i + lines_per_write]
            text = "\n".join(" ".join(map(_BYTE_STR.__getitem__, seg)) for seg in block)
            if i + lines_per_write < len(segs):
                text += "\n"
            f.write(text)


def enwik8_split(data: bytes, heldout: int = ENWIK8_HELDOUT_BYTES) -> Dict[str, bytes]:
    """awd-lstm-lm's split: test = last ``heldout`` bytes, valid = the ``heldout`` before."""
    if not data:
        raise DataPrepError("the corpus is empty (0 bytes): the archive is damaged or not the "
                            "expected one; download it again or pass a good copy with --archive")
    if len(data) <= 2 * heldout:
        raise DataPrepError(
            f"the corpus has {len(data):,} bytes, too few for two held-out splits of "
            f"{heldout:,} bytes: pass a smaller --heldout-bytes"
        )
    return {
        "train": data[: -2 * heldout],
        "valid": data[-2 * heldout: -heldout],
        "test": data[-heldout:],
    }


def unseen_symbols(splits: Dict[str, bytes]) -> Dict[str, Dict]:
    """Byte values of each held-out split that never occur in train (fairseq maps them to
    ``<unk>``): ``{split: {"values": [...], "occurrences": n}}``. Byte 10 is the line break, not
    a symbol."""
    import numpy as np

    counts = {k: np.bincount(np.frombuffer(v, dtype=np.uint8), minlength=256) for k, v in splits.items()}
    out = {}
    for split in ("valid", "test"):
        values = [b for b in range(256) if b != 10 and counts[split][b] and not counts["train"][b]]
        out[split] = {"values": values, "occurrences": int(sum(counts[split][b] for b in values))}
    return out


def expected_symbols(data: bytes) -> int:
    """Symbols fairseq makes of a split: one per byte, plus the </s> it appends to a last line
    that has no newline byte."""
    return len(data) + (0 if data.endswith(b"\n") else 1)


# --- fairseq ----------------------------------------------------------------------------------

def run_preprocess(prefixes: Dict[str, Path], dest: Path, workers: int, log: Log = _log) -> None:
    """fairseq-preprocess --only-source (the standard language-model recipe) into ``dest``."""
    cmd = [
        sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
        "--trainpref", str(prefixes["train"]), "--validpref", str(prefixes["valid"]),
        "--testpref", str(prefixes["test"]), "--destdir", str(dest),
        "--workers", str(max(1, workers)),
    ]
    log("binarizing: " + " ".join(cmd[2:]))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise DataPrepError(
            f"fairseq-preprocess failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
        )


def binarized_stats(dest: Path) -> Dict:
    """Symbols per split (sum of the sequence sizes fairseq stored) and dictionary types."""
    from fairseq.data import indexed_dataset

    stats = {}
    for split in SPLITS:
        ds = indexed_dataset.make_dataset(str(dest / split), impl="mmap")
        if ds is None:
            raise DataPrepError(f"{dest / split}.bin/.idx missing after fairseq-preprocess")
        stats[split] = {"symbols": int(ds.sizes.sum()), "lines": int(len(ds.sizes))}
    types = 0
    with open(dest / "dict.txt", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("madeupword"):
                types += 1
    return {"splits": stats, "dict_types": types}


# --- datasets ---------------------------------------------------------------------------------

def _already_done(dest: Path, log: Log) -> bool:
    marker = dest / MARKER
    if marker.is_file():
        log(f"{dest} is already prepared ({marker}); nothing to do")
        return True
    if dest.exists():
        raise DataPrepError(
            f"{dest} exists but has no {MARKER} (not made by this script, or an old layout): "
            "remove it and run again"
        )
    return False


def build_corpus(root: Path, name: str, pattern: str, load: Callable[[], object],
                 write_text: Callable[[Path, object], None],
                 describe: Callable[[Dict, Path], Dict], workers: int = 1, log: Log = _log,
                 check_text: Optional[Callable[[Path], None]] = None) -> Dict:
    """The one corpus-building skeleton: ``root/text/<name>`` (the split text, written once by
    ``write_text(tmp, load())`` as the files ``pattern.format(split)`` plus its own MARKER;
    ``load`` fetches and verifies the source before any folder is made), then
    ``root/<name>`` (fairseq-preprocess of those files; ``describe(stats, text_dir)`` gives its
    prepared.json and may refuse the result). Both folders are built under a temporary name and
    renamed, stale temporary folders of a killed run are removed first, and a finished
    ``root/<name>`` is returned as it is. ``check_text(text_dir)`` may refuse split text made
    earlier before anything is binarized."""
    root = Path(root)
    dest = root / name
    for parent in (root, root / "text"):
        remove_stale_tmp(parent, name, log)
    if _already_done(dest, log):
        return json.loads((dest / MARKER).read_text())
    text = root / "text" / name
    if not (text / MARKER).is_file():
        source = load()
        with atomic_dir(text) as tmp:
            write_text(tmp, source)
    if check_text is not None:
        check_text(text)
    with atomic_dir(dest) as tmp:
        run_preprocess({s: text / pattern.format(s) for s in SPLITS}, tmp, workers, log)
        info = describe(binarized_stats(tmp), text)
        write_json_atomic(tmp / MARKER, info)
    return info


def _log_done(log: Log, dest: Path, stats: Dict, unit: str) -> None:
    if unit == "byte":
        log(f"done: {dest} (test {stats['splits']['test']['bytes']:,} bytes, "
            f"{stats['dict_types']} byte values)")
    else:
        log(f"done: {dest} (test {stats['splits']['test']['symbols']:,} tokens, "
            f"{stats['dict_types']:,} types)")


def prepare_wikitext103(root: Path, archive: Optional[Path] = None, workers: int = 1,
                        expect_sha256: Optional[str] = None, log: Log = _log) -> Dict:
    """Wikitext-103 -> ``root/wikitext-103`` (fairseq binarized, word level)."""
    spec = WIKITEXT103
    root = Path(root)
    want = (expect_sha256 or spec.sha256).lower()
    official = want == spec.sha256

    def load() -> Path:
        return fetch_archive(spec, root / "downloads", archive, expect_sha256, log)

    def write_text(tmp: Path, zpath: Path) -> None:
        log(f"extracting {zpath} -> {tmp.parent / spec.name}")
        extract_members(zpath, WIKITEXT103_MEMBERS, tmp)
        for member, out_name in WIKITEXT103_MEMBERS.items():
            inspect_text_file(tmp / out_name, f"{zpath} member {member}",
                              fix="the archive is damaged or not Wikitext-103: download it "
                                  "again (or pass a good copy with --archive PATH)")
        write_json_atomic(tmp / MARKER, {"archive_sha256": want})

    def describe(stats: Dict, text: Path) -> Dict:
        if official:
            got_test = stats["splits"]["test"]["symbols"]
            if got_test != WIKITEXT103_TEST_TOKENS:
                raise DataPrepError(
                    f"test split has {got_test:,} tokens, expected {WIKITEXT103_TEST_TOKENS:,}")
            if stats["dict_types"] != WIKITEXT103_DICT_TYPES:
                raise DataPrepError(f"dictionary has {stats['dict_types']:,} types, expected "
                                    f"{WIKITEXT103_DICT_TYPES:,}")
        _log_done(log, root / spec.name, stats, "word")
        return {"dataset": spec.name, "archive_sha256": want, "official_archive": official,
                "unit": "word", **stats}

    return build_corpus(root, spec.name, "wiki.{}.tokens", load, write_text, describe, workers,
                        log)


def prepare_byte_corpus(root: Path, name: str, get_bytes: Callable[[], bytes],
                        heldout: int, workers: int = 1, source: Optional[Dict] = None,
                        log: Log = _log) -> Dict:
    """Byte-level corpus -> ``root/<name>`` (fairseq binarized, one symbol per byte), split the
    prep_enwik8 way: the last ``heldout`` bytes are test, the ``heldout`` before them valid.

    ``get_bytes`` is only called when the split text is not there yet (so a finished dataset
    needs neither the archive nor the network). ``source`` is recorded in prepared.json.
    """
    def write_text(tmp: Path, data: bytes) -> None:
        log(f"splitting {len(data):,} bytes -> {tmp.parent / name}")
        parts = enwik8_split(data, heldout)
        unseen = unseen_symbols(parts)
        for split in ("valid", "test"):
            log(f"{split}: {len(unseen[split]['values'])} byte values unseen in train "
                f"({unseen[split]['occurrences']:,} occurrences -> <unk>): {unseen[split]['values']}")
        meta = {}
        for split, part in parts.items():
            log(f"writing {split}.txt: {len(part):,} bytes")
            write_tokens(part, tmp / f"{split}.txt")
            meta[split] = {"bytes": len(part), "ends_with_newline": part.endswith(b"\n"),
                           "expected_symbols": expected_symbols(part),
                           **({"unseen_in_train": unseen[split]} if split in unseen else {})}
        write_json_atomic(tmp / MARKER, {"heldout_bytes": heldout, "splits": meta,
                                         "source": source or {}})

    def check_text(text: Path) -> None:
        split_with = json.loads((text / MARKER).read_text()).get("heldout_bytes")
        if split_with != heldout:
            raise DataPrepError(f"{text} was split with --heldout-bytes {split_with}, not "
                                f"{heldout}: remove {text} to split again")

    def describe(stats: Dict, text: Path) -> Dict:
        text_meta = json.loads((text / MARKER).read_text())
        for split in SPLITS:
            want, got = text_meta["splits"][split], stats["splits"][split]
            got["bytes"] = want["bytes"]
            got["ends_with_newline"] = want["ends_with_newline"]
            if "unseen_in_train" in want:
                got["unseen_in_train"] = want["unseen_in_train"]
            if got["symbols"] != want["expected_symbols"]:
                raise DataPrepError(
                    f"{split}: fairseq stored {got['symbols']:,} symbols for {want['bytes']:,} "
                    f"bytes (expected {want['expected_symbols']:,}): the token format is broken")
        _log_done(log, Path(root) / name, stats, "byte")
        return {"dataset": name, "unit": "byte", "heldout_bytes": heldout, **(source or {}),
                **stats}

    return build_corpus(root, name, "{}.txt", get_bytes, write_text, describe, workers, log,
                        check_text)


def prepare_word_corpus(root: Path, name: str, get_texts: Callable[[], Dict[str, str]],
                        workers: int = 1, source: Optional[Dict] = None,
                        log: Log = _log) -> Dict:
    """Word-level corpus (``get_texts()`` -> {"train", "valid", "test"} -> whitespace-tokenized
    text, one sentence or paragraph per line) -> ``root/<name>``, the Wikitext recipe."""
    def write_text(tmp: Path, texts: Dict[str, str]) -> None:
        for split in SPLITS:
            (tmp / f"{split}.tokens").write_text(texts[split], encoding="utf-8")
        write_json_atomic(tmp / MARKER, {"source": source or {}})

    def describe(stats: Dict, text: Path) -> Dict:
        _log_done(log, Path(root) / name, stats, "word")
        return {"dataset": name, "unit": "word", **(source or {}), **stats}

    return build_corpus(root, name, "{}.tokens", get_texts, write_text, describe, workers, log)


def prepare_archived_byte_corpus(root: Path, spec: ArchiveSpec,
                                 read: Callable[[Path, bool], Tuple[bytes, Dict]],
                                 archive: Optional[Path], workers: int,
                                 expect_sha256: Optional[str], heldout: int,
                                 source: Optional[Dict] = None, log: Log = _log) -> Dict:
    """A byte-level corpus read from a verified archive (enwik8, the plays): ``read(path,
    official)`` returns the corpus bytes and what to record of them, and checks them against the
    official archive's figures when ``official`` (the archive's sha256 is the pinned one)."""
    root = Path(root)
    want = (expect_sha256 or spec.sha256).lower()
    official = want == spec.sha256
    source = {**(source or {}), "archive_sha256": want, "official_archive": official}

    def get_bytes() -> bytes:  # only called when the text is not split yet
        path = fetch_archive(spec, root / "downloads", archive, expect_sha256, log)
        data, found = read(path, official)
        source.update(found)
        return data

    return prepare_byte_corpus(root, spec.name, get_bytes, heldout, workers, source, log)


def prepare_enwik8(root: Path, archive: Optional[Path] = None, workers: int = 1,
                   expect_sha256: Optional[str] = None, heldout: int = ENWIK8_HELDOUT_BYTES,
                   log: Log = _log) -> Dict:
    """enwik8 -> ``root/enwik8`` (fairseq binarized, one symbol per byte)."""
    def read(zpath: Path, official: bool) -> Tuple[bytes, Dict]:
        log(f"extracting {zpath}")
        try:
            with zipfile.ZipFile(zpath) as zf:
                data = zf.read(ENWIK8_MEMBER)
        except KeyError:
            raise DataPrepError(f"{zpath} lacks {ENWIK8_MEMBER}: not the expected archive") from None
        except zipfile.BadZipFile as e:
            raise DataPrepError(f"{zpath} is not a zip archive ({e})") from None
        if official:
            if len(data) != ENWIK8_BYTES:
                raise DataPrepError(f"enwik8 has {len(data):,} bytes, expected {ENWIK8_BYTES:,}")
            if hashlib.sha256(data).hexdigest() != ENWIK8_RAW_SHA256:
                raise DataPrepError("enwik8's extracted bytes have the wrong sha256")
        return data, {}

    return prepare_archived_byte_corpus(root, ENWIK8, read, archive, workers, expect_sha256,
                                        heldout, log=log)
