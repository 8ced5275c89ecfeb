"""Small real-text corpora that need no download: CPython's documentation topics.

``pydoc_data/topics.py`` ships with every CPython installation: the text of the language
reference's topics that ``help()`` shows (~465 KB of English prose and code examples). Two
corpora are built from it, both with the same pipeline as the real benchmarks:

* ``pydoc-chars``: byte level, split and binarized exactly like enwik8 (bytes as decimal
  symbols, newline = ``</s>``): the demo's corpus, scored in bits per character;
* ``pydoc-words``: word level, whitespace-tokenized like Wikitext (punctuation split off): the
  stand-in for Wikitext-103 in the table scripts' ``--smoke`` runs.

The topics are concatenated in sorted key order, so the corpus is a function of the Python
version only (recorded in prepared.json).
"""

from __future__ import annotations

import hashlib
import platform
import re
from pathlib import Path
from typing import Dict, Optional

from .corpus import Log, _log, prepare_byte_corpus, prepare_word_corpus


def pydoc_text() -> str:
    """All documentation topics, sorted by name, each followed by a blank line."""
    try:
        from pydoc_data import topics
    except ImportError as e:  # some distributions strip it
        raise RuntimeError(
            "this Python lacks pydoc_data.topics (stripped by the distribution); install the "
            "full standard library (e.g. the python3-doc / libpython3-stdlib package)"
        ) from e
    return "".join(topics.topics[k].rstrip("\n") + "\n\n" for k in sorted(topics.topics))


def _source(data: bytes, max_bytes: Optional[int]) -> Dict:
    return {"source": f"pydoc_data.topics of CPython {platform.python_version()}",
            "source_sha256": hashlib.sha256(data).hexdigest(), "max_bytes": max_bytes}


def prepare_pydoc_chars(root: Path, heldout_fraction: float = 0.05,
                        max_bytes: Optional[int] = None, workers: int = 1,
                        name: str = "pydoc-chars", log: Log = _log) -> Dict:
    """Byte-level corpus of the topics text (first ``max_bytes`` bytes if given) in
    ``root/<name>``; valid and test are each ``heldout_fraction`` of the bytes."""
    data = pydoc_text().encode("utf-8")
    if max_bytes is not None:
        data = data[:max_bytes]
    heldout = max(1, int(len(data) * heldout_fraction))
    return prepare_byte_corpus(root, name, lambda: data, heldout, workers,
                               _source(data, max_bytes), log)


_WORD = re.compile(r"\w+|[^\w\s]")


def word_lines(text: str):
    """One line per non-empty input line: words and punctuation separated by single spaces."""
    for line in text.split("\n"):
        toks = _WORD.findall(line)
        if toks:
            yield " ".join(toks)


def prepare_pydoc_words(root: Path, heldout_fraction: float = 0.05,
                        max_lines: Optional[int] = None, workers: int = 1,
                        name: str = "pydoc-words", log: Log = _log) -> Dict:
    """Word-level corpus (Wikitext-like) of the topics text in ``root/<name>``."""
    text = pydoc_text()
    lines = list(word_lines(text))
    if max_lines is not None:
        lines = lines[:max_lines]
    n_held = max(1, int(len(lines) * heldout_fraction))
    if len(lines) <= 2 * n_held:
        raise ValueError(f"{len(lines)} lines are too few for two held-out splits")
    splits = {"train": lines[: -2 * n_held], "valid": lines[-2 * n_held: -n_held],
              "test": lines[-n_held:]}
    texts = {k: "\n".join(v) + "\n" for k, v in splits.items()}
    return prepare_word_corpus(root, name, lambda: texts, workers,
                               _source(text.encode("utf-8"), None) | {"max_lines": max_lines},
                               log)
