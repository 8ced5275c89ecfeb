"""Command line of data_prep: download, verify, split and binarize a corpus for fairseq.

    python -m data_prep.prepare wikitext103 [--archive PATH] [--root data-bin] [--workers N]
    python -m data_prep.prepare enwik8      [--archive PATH] [--root data-bin] [--workers N]
    python -m data_prep.prepare shakespeare [--archive PATH] [--root data-bin]  (data_prep/shakespeare.py)

Your own text (``data_prep/text.py``) and the evaluation of any prepared corpus in bits per byte
(``data_prep/metrics.py``) are commands of this entry point too (``COMMANDS``)::

    python -m data_prep.prepare text --name NAME --train F --valid F --test F [--spm-vocab N | --bytes]
    python -m data_prep.prepare bpb ROOT/NAME [--eval-log LOG]

The library behind it is :mod:`data_prep.corpus` (layout, guarantees, the enwik8 split).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from .corpus import ENWIK8_HELDOUT_BYTES, DataPrepError, prepare_enwik8, prepare_wikitext103
from .shakespeare import HELDOUT_BYTES, prepare_shakespeare

# --- CLI --------------------------------------------------------------------------------------

# Commands with options of their own, each implemented in its own module: name -> (module with
# ``main(argv) -> None``, one-line summary). ``main`` below hands them their arguments and reports
# their errors like the datasets' own.
COMMANDS = {
    "text": ("data_prep.text", "your own corpus: sentencepiece (or bytes) + fairseq-preprocess"),
    "bpb": ("data_prep.metrics", "bits per byte and per-word perplexity from fairseq-eval-lm"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Download, verify, split and binarize Wikitext-103 or enwik8 for fairseq.",
        epilog="more commands (python -m data_prep.prepare COMMAND --help): "
               + "; ".join(f"{name}: {summary}" for name, (_, summary) in COMMANDS.items()),
    )
    p.add_argument("dataset", choices=("wikitext103", "enwik8", "shakespeare"))
    p.add_argument("--root", default="data-bin", type=Path,
                   help="output root: downloads/, text/ and the binarized <dataset>/ "
                        "(default: data-bin)")
    p.add_argument("--archive", type=Path, default=None,
                   help="use this archive (downloaded by hand) instead of downloading")
    p.add_argument("--expect-sha256", default=None,
                   help="accept an archive with this sha256 instead of the official one (a "
                        "repacked mirror); the official size/count checks are then skipped")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                   help="fairseq-preprocess workers (default: all cores)")
    p.add_argument("--heldout-bytes", type=int, default=None,
                   help="enwik8 / shakespeare: bytes of the valid and of the test split (default "
                        "5000000 / 100000)")
    return p


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    args = None if command else build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # kill: clean up like Ctrl-C
    try:
        if command:
            importlib.import_module(command[0]).main(argv[1:])
        elif args.dataset == "wikitext103":
            prepare_wikitext103(args.root, args.archive, args.workers, args.expect_sha256)
        elif args.dataset == "shakespeare":
            prepare_shakespeare(args.root, args.archive, args.workers, args.expect_sha256,
                                args.heldout_bytes or HELDOUT_BYTES)
        else:
            prepare_enwik8(args.root, args.archive, args.workers, args.expect_sha256,
                           args.heldout_bytes or ENWIK8_HELDOUT_BYTES)
    except DataPrepError as e:
        print(f"[data_prep] error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[data_prep] interrupted: no partial output was kept (a partial download stays "
              "as .part and resumes next time)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
