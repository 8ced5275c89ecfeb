"""Result files and fairseq-eval-lm's result lines: the lowest layer the drivers share.

* atomic writes: :func:`write_text_atomic`, :func:`write_json_atomic` (a temporary file in the
  same folder, then ``os.replace``: a reader never sees a half-written file);
* :func:`parse_eval_lm`: ``Evaluated N tokens`` (with fairseq's thousands separator) and
  ``Loss (base 2)``; :class:`CommandError` when a CLI failed or printed something unexpected.

Pure standard library: importing it loads neither torch nor fairseq. ``data_prep`` writes its
``prepared.json`` and reads fairseq-eval-lm's output with it; ``studies.run_utils`` builds on it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Union

PathLike = Union[str, Path]

_NUMBER = r"[\d,]*\.?\d+"  # fairseq prints counts with a thousands separator: 1,234,567
_EVAL_TOKENS = re.compile(
    rf"Evaluated ({_NUMBER}) tokens in ({_NUMBER})s \(({_NUMBER}) tokens/s\)"
)
_EVAL_LOSS = re.compile(rf"Loss \(base 2\): ({_NUMBER}), Perplexity: ({_NUMBER}|inf)")


class CommandError(RuntimeError):
    """A CLI failed or printed something unexpected; the message names the log to read."""


# --- atomic writes -----------------------------------------------------------------------------

def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: PathLike, obj) -> None:
    """``obj`` as indented JSON (sorted keys, final newline), written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --- fairseq-eval-lm ---------------------------------------------------------------------------

def parse_number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_eval_lm(text: str) -> Dict:
    """The result lines of fairseq-eval-lm:

    ``Evaluated 1,234 tokens in 0.9s (1371.11 tokens/s)`` and
    ``Loss (base 2): 6.9264, Perplexity: 121.64`` ->
    ``{eval_symbols, eval_seconds, eval_tokens_per_s, loss_base2, perplexity}``.
    Raises CommandError when either line is missing."""
    m_tok, m_loss = _EVAL_TOKENS.search(text), _EVAL_LOSS.search(text)
    if not m_tok or not m_loss:
        raise CommandError(
            "fairseq-eval-lm printed no 'Evaluated N tokens' / 'Loss (base 2)' line"
        )
    return {
        "eval_symbols": int(parse_number(m_tok.group(1))),
        "eval_seconds": parse_number(m_tok.group(2)),
        "eval_tokens_per_s": parse_number(m_tok.group(3)),
        "loss_base2": parse_number(m_loss.group(1)),
        "perplexity": float("inf") if m_loss.group(2) == "inf" else parse_number(m_loss.group(2)),
    }
