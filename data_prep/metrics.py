"""Bits per byte and per-word perplexity of a prepared corpus, from fairseq-eval-lm's output.

    fairseq-eval-lm ROOT/NAME ... --gen-subset test 2>&1 | tee eval.log
    python -m data_prep.prepare bpb ROOT/NAME --eval-log eval.log [--split test] [--json OUT]

(or pipe fairseq-eval-lm's output in). fairseq-eval-lm prints the mean loss per scored symbol in
bits (``Loss (base 2)``, ``</s>`` included) and how many symbols it scored; a loss per subword
piece, per byte or per word cannot be compared directly. With the counts that data_prep recorded
in the corpus's ``prepared.json``:

* total bits = loss x scored symbols (every symbol of the split must have been scored);
* bits per byte = total bits / the split's UTF-8 bytes (newlines included: the model pays for
  them as ``</s>``);
* per-word perplexity = 2 ** (total bits / word tokens), word tokens = whitespace-separated words
  + one end of line per line: what fairseq-eval-lm would score on a word-level binarization of the
  same file (Wikitext's convention, ``<eos>`` counted).

This lives with data_prep because ``prepared.json`` is data_prep's record: the counts are made
where their meaning is defined. Held-out symbols mapped to ``<unk>`` (characters or bytes never
seen in train) are scored as one symbol each, which makes the figures optimistic; their number is
printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from .corpus import MARKER, DataPrepError
from .records import CommandError, parse_eval_lm, write_json_atomic


def eval_metrics(info: Dict, split: str, ev: Dict) -> Dict:
    """``ev`` (``run_utils.parse_eval_lm``'s fields) with the counts of ``info`` (prepared.json)
    -> total bits, bits per byte and per-word perplexity (None where prepared.json lacks the
    count)."""
    splits = info.get("splits", {})
    if split not in splits:
        raise DataPrepError(f"prepared.json has no split {split!r}: pass --split "
                            f"{' or '.join(sorted(splits))}")
    counts = splits[split]
    symbols = counts["symbols"]
    if ev["eval_symbols"] != symbols:
        same = [s for s, c in splits.items() if c.get("symbols") == ev["eval_symbols"]]
        hint = (f"pass --split {same[0]} (the split it evaluated)" if same else
                "evaluate the whole split (fairseq-eval-lm --gen-subset SPLIT, all batches)")
        raise DataPrepError(
            f"fairseq-eval-lm scored {ev['eval_symbols']:,} symbols but the {split} split has "
            f"{symbols:,}: {hint}"
        )
    bits = ev["loss_base2"] * symbols
    nbytes = counts.get("bytes")
    words = counts.get("word_tokens", symbols if info.get("unit") == "word" else None)
    if nbytes is None and words is None:
        raise DataPrepError(f"prepared.json of {info.get('dataset')} has no byte or word counts: "
                            "prepare the corpus again with this version of data_prep")
    return {
        "split": split, "unit": info.get("unit"), "symbols": symbols, "loss_base2": ev["loss_base2"],
        "total_bits": bits, "bytes": nbytes, "word_tokens": words, "unk": counts.get("unk"),
        "bits_per_byte": None if nbytes is None else bits / nbytes,
        "word_perplexity": None if words is None else 2.0 ** (bits / words),
    }


def summary(m: Dict) -> str:
    lines = [f"{m['split']}: {m['symbols']:,} {m['unit'] or ''} symbols scored, "
             f"{m['loss_base2']:.4f} bits each, {m['total_bits']:,.1f} bits in all"]
    if m["bits_per_byte"] is not None:
        lines.append(f"bits per byte: {m['bits_per_byte']:.4f} ({m['bytes']:,} bytes)")
    if m["word_perplexity"] is not None:
        lines.append(f"per-word perplexity: {m['word_perplexity']:.2f} ({m['word_tokens']:,} "
                     "words, one end of line per line included)")
    if m["unk"]:
        lines.append(f"note: {m['unk']:,} symbols are <unk> (unseen in train), each scored as one "
                     "symbol: the figures are optimistic")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare bpb",
        description="Bits per byte and per-word perplexity from fairseq-eval-lm's output and the "
                    "corpus's prepared.json.",
    )
    p.add_argument("data", type=Path, help="the prepared corpus (ROOT/NAME, holds prepared.json)")
    p.add_argument("--eval-log", type=Path, default=None,
                   help="fairseq-eval-lm's output (default: read it from standard input)")
    p.add_argument("--split", default="test", help="the split evaluated (--gen-subset; default test)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = build_parser().parse_args(argv)
    marker = args.data / MARKER
    if not marker.is_file():
        raise DataPrepError(f"{marker}: no such file: pass the folder data_prep prepared "
                            "(ROOT/NAME)")
    if args.eval_log is not None:
        if not args.eval_log.is_file():
            raise DataPrepError(f"--eval-log {args.eval_log}: no such file")
        text = args.eval_log.read_text(encoding="utf-8", errors="replace")
    elif sys.stdin.isatty():
        raise DataPrepError("no fairseq-eval-lm output: pass --eval-log LOG or pipe it in")
    else:
        text = sys.stdin.read()
    try:
        ev = parse_eval_lm(text)
    except CommandError as e:
        raise DataPrepError(f"{e}: pass the output of a finished fairseq-eval-lm run") from None
    if not math.isfinite(ev["loss_base2"]):
        raise DataPrepError("fairseq-eval-lm's loss is not finite: nothing to convert")
    m = eval_metrics(json.loads(marker.read_text(encoding="utf-8")), args.split, ev)
    print(summary(m), flush=True)
    if args.json is not None:
        write_json_atomic(args.json, {"data": str(args.data), **m})
    return m
