"""Your own corpus: three UTF-8 text files -> a fairseq data-bin with its tokenizer.

    python -m data_prep.prepare text --name NAME --train F --valid F --test F [--root data-bin]
        [--spm-vocab N [--spm-model-type unigram|bpe] | --bytes] [--workers N]

* sentencepiece (default, ``--spm-vocab 8000 --spm-model-type unigram``): a model trained on the
  **training file only** with deterministic settings (``SPM_SETTINGS``: one thread, every line in
  file order, no sampling, every character of the training text covered), saved as
  ``ROOT/NAME/spm.model``; each split is encoded into pieces, one line per input line;
* ``--bytes``: byte level, exactly as enwik8 (every byte one symbol written as its decimal value,
  a newline byte the line break that fairseq turns into ``</s>``).

Then fairseq-preprocess ``--only-source`` binarizes the three splits (the dictionary from train),
and ``prepared.json`` records the vocabulary, per split the symbols fairseq stored, lines, words,
UTF-8 bytes and ``<unk>`` symbols (held-out characters or bytes never seen in train), the sha256 of
every input file and the tokenizer's settings; ``python -m data_prep.prepare bpb`` turns
fairseq-eval-lm's loss into bits per byte and per-word perplexity with these counts.

Text normalisation (sentencepiece only): none, except that every Unicode whitespace character other
than the space and the newline (tab, carriage return, no-break space, ...) becomes a space, inside
the sentencepiece model itself (its normalisation rule), so training data, fairseq-interactive's
``--bpe sentencepiece`` and the hub encode alike. fairseq splits its lines at any whitespace, so a
piece must not contain one. Runs of spaces and leading spaces are kept (``remove_extra_whitespaces``
off): decoding gives the text back.

The guarantees of the other datasets hold: the output is built in a temporary sibling folder and
renamed at the end (an error or Ctrl-C leaves nothing); a second run with the same inputs and
options finds ``prepared.json`` and does nothing; an input whose sha256 changed, or other options,
are refused with the fix named; a missing, empty, binary or non-UTF-8 input, and a vocabulary the
training text cannot fill, are one-line errors.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from .corpus import (
    MARKER, SPLITS, DataPrepError, Log, _log, atomic_dir, binarized_stats, expected_symbols,
    inspect_text_file, remove_stale_tmp, run_preprocess, sha256_file, write_json_atomic,
    write_tokens,
)

SPM_MODEL = "spm.model"
DEFAULT_SPM_VOCAB = 8000
SPM_MODEL_TYPES = ("unigram", "bpe")
# fairseq's dictionary specials: a piece spelled like one (an unknown run of characters of a
# held-out split can be) would be read as that symbol, so it is written as <unk>
FAIRSEQ_SPECIALS = frozenset(("<s>", "<pad>", "</s>", "<unk>"))
# deterministic sentencepiece training (recorded in prepared.json)
SPM_SETTINGS = {
    "character_coverage": 1.0,  # every character of the training text is a piece
    "remove_extra_whitespaces": False,  # keep runs of spaces: decoding gives the text back
    "add_dummy_prefix": True,  # sentencepiece's default: a word at a line start looks like others
    "input_sentence_size": 0,  # every line, no sampling
    "shuffle_input_sentence": False,
    "max_sentence_length": 65536,  # bytes; longer lines are encoded but not trained on
    "num_threads": 1,  # one thread: the same model on every machine
    "byte_fallback": False,
    "pad_id": 3,  # <pad> a meta piece too, so no learned piece is spelled like fairseq's padding
    "hard_vocab_limit": True,  # exactly --spm-vocab pieces, else an error
}
# Unicode whitespace (what fairseq's line splitting splits at) except newline and space
OTHER_WHITESPACE = tuple(c for c in range(sys.maxunicode + 1)
                         if chr(c).isspace() and c not in (0x0A, 0x20))
ENCODE_BATCH = 4096  # lines per sentencepiece encode call


def _lines(path: Path) -> Iterator[str]:
    """The lines of a checked UTF-8 file, without their newline (split at ``\\n`` only: a
    carriage return is text, normalised to a space by the model)."""
    with open(path, "rb") as f:
        for raw in f:
            yield raw.decode("utf-8").removesuffix("\n")


def _reword_spm_error(err: RuntimeError, vocab: int, model_type: str, train_label: str) -> str:
    msg = str(err)
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if m:
        return (f"--spm-vocab {vocab} is larger than {train_label} supports for a {model_type} "
                f"model (at most {m.group(2)} pieces): pass --spm-vocab {m.group(2)} or less, or "
                "train on more text")
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return (f"--spm-vocab {vocab} is smaller than the {m.group(2)} pieces {train_label} needs "
                f"(each of its characters and sentencepiece's meta pieces): pass --spm-vocab "
                f"{m.group(2)} or more")
    return f"sentencepiece could not train on {train_label}: {msg.splitlines()[-1]}"


def train_sentencepiece(train: Path, vocab: int, model_type: str, train_label: str,
                        work: Path) -> bytes:
    """The serialized sentencepiece model trained on ``train`` with ``SPM_SETTINGS``."""
    import sentencepiece as spm

    rules = work / "whitespace.tsv"  # custom normalisation: other whitespace -> U+0020
    rules.write_text("".join(f"{c:X}\t20\n" for c in OTHER_WHITESPACE), encoding="ascii")
    trainable = sum(1 for line in _lines(train)
                    if line.strip() and len(line.encode("utf-8")) <= SPM_SETTINGS["max_sentence_length"])
    if trainable == 0:
        raise DataPrepError(
            f"every line of {train_label} is longer than {SPM_SETTINGS['max_sentence_length']:,} "
            "bytes, too long to train sentencepiece on: break the text into lines (paragraphs)"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(train), model_writer=model, vocab_size=vocab,
            model_type=model_type, normalization_rule_tsv=str(rules), minloglevel=2,
            **SPM_SETTINGS,
        )
    except RuntimeError as e:
        raise DataPrepError(_reword_spm_error(e, vocab, model_type, train_label)) from None
    finally:
        rules.unlink()
    return _without_rule_path(model.getvalue())


def _without_rule_path(proto: bytes) -> bytes:
    """The model with the (temporary) path of its normalisation rule file cleared: the compiled
    rules are in the model, the path only made the file depend on where it was trained."""
    try:
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf (tensorboard's too)
    except ImportError:  # the model works as it is
        return proto
    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(proto)
    m.normalizer_spec.ClearField("normalization_rule_tsv")
    return m.SerializeToString()


def encode_split(sp, src: Path, dst: Path, threads: int) -> int:
    """Write ``src`` as sentencepiece pieces (space separated, one line per input line) to
    ``dst``; returns the number of pieces."""
    pieces = 0
    with open(dst, "w", encoding="utf-8", newline="\n") as out:
        batch: List[str] = []

        def flush():
            nonlocal pieces
            for line in sp.encode(batch, out_type=str, num_threads=threads):
                line = ["<unk>" if p in FAIRSEQ_SPECIALS else p for p in line]
                pieces += len(line)
                out.write(" ".join(line) + "\n")
            batch.clear()

        for line in _lines(src):
            batch.append(line)
            if len(batch) == ENCODE_BATCH:
                flush()
        if batch:
            flush()
    return pieces


def count_symbol(prefix: Path, index: int) -> int:
    """Occurrences of dictionary ``index`` in a binarized split (``prefix``.bin/.idx)."""
    import numpy as np
    from fairseq.data import indexed_dataset

    dtype = indexed_dataset.MMapIndexedDataset.Index(indexed_dataset.index_file_path(str(prefix))).dtype
    data = Path(indexed_dataset.data_file_path(str(prefix)))
    if data.stat().st_size == 0:
        return 0
    return int((np.memmap(data, dtype=dtype, mode="r") == index).sum())


def _options(spm_vocab: Optional[int], spm_model_type: Optional[str], byte_level: bool) -> Dict:
    if byte_level:
        return {"bytes": True, "spm_vocab": None, "spm_model_type": None}
    return {"bytes": False, "spm_vocab": spm_vocab or DEFAULT_SPM_VOCAB,
            "spm_model_type": spm_model_type or "unigram"}


def _describe(options: Dict) -> str:
    if options["bytes"]:
        return "--bytes"
    return f"--spm-vocab {options['spm_vocab']} --spm-model-type {options['spm_model_type']}"


def _check_finished(dest: Path, inputs: Dict[str, Dict], options: Dict, log: Log) -> Optional[Dict]:
    """prepared.json of a finished ``dest`` made from these inputs with these options (None if
    ``dest`` does not exist); a DataPrepError naming the fix if anything differs."""
    marker = dest / MARKER
    if not marker.is_file():
        if dest.exists():
            raise DataPrepError(f"{dest} exists but has no {MARKER} (not made by this command): "
                                "remove it, or pass another --name")
        return None
    info = json.loads(marker.read_text(encoding="utf-8"))
    was = info.get("options")
    if was != options:
        raise DataPrepError(
            f"{dest} was prepared with {_describe(was) if was else 'another command'}, not "
            f"{_describe(options)}: remove {dest} to prepare it again, or pass another --name"
        )
    for split in SPLITS:
        old = info["inputs"][split]["sha256"]
        new = inputs[split]["sha256"]
        if old != new:
            raise DataPrepError(
                f"--{split} {inputs[split]['path']} changed since {dest} was prepared (sha256 "
                f"{new[:12]}..., recorded {old[:12]}...): remove {dest} to prepare it again, or "
                "pass another --name"
            )
    log(f"{dest} is already prepared from these files ({marker}); nothing to do")
    return info


def _check_options(name: str, spm_vocab, spm_model_type, byte_level: bool) -> None:
    """Refuse options that cannot make a dataset; each message names the fix."""
    if byte_level and (spm_vocab is not None or spm_model_type is not None):
        raise DataPrepError("--bytes takes no sentencepiece options: drop --spm-vocab / "
                            "--spm-model-type, or drop --bytes")
    if spm_model_type is not None and spm_model_type not in SPM_MODEL_TYPES:
        raise DataPrepError(f"--spm-model-type {spm_model_type}: choose one of {SPM_MODEL_TYPES}")
    if spm_vocab is not None and spm_vocab < 1:
        raise DataPrepError(f"--spm-vocab {spm_vocab}: pass a positive number of pieces")
    if not name or "/" in name or name.startswith("."):
        raise DataPrepError(f"--name {name!r}: pass a plain folder name (no '/', no leading '.')")


def _encode_bytes(files: Dict[str, Path], work: Path):
    """Each split as enwik8's byte tokens in ``work/<split>.txt``; returns (tokenizer record,
    symbols per split)."""
    counts = {}
    for split in SPLITS:
        data = Path(files[split]).read_bytes()
        write_tokens(data, work / f"{split}.txt")
        counts[split] = expected_symbols(data)
    tokenizer = {"type": "bytes",
                 "format": "each byte its decimal value, a newline byte the line break "
                           "(fairseq's </s>), as enwik8"}
    return tokenizer, counts


def _encode_pieces(files: Dict[str, Path], inputs: Dict, options: Dict, tmp: Path, work: Path,
                   workers: int, log: Log):
    """Train sentencepiece on the train split (model saved as ``tmp/spm.model``) and encode each
    split into ``work/<split>.txt``; returns (tokenizer record, symbols per split)."""
    import sentencepiece as spm

    log(f"training sentencepiece ({_describe(options)}) on {files['train']}")
    proto = train_sentencepiece(Path(files["train"]), options["spm_vocab"],
                                options["spm_model_type"], f"--train {files['train']}", work)
    (tmp / SPM_MODEL).write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    counts = {}
    for split in SPLITS:
        log(f"encoding {split}: {files[split]}")
        pieces = encode_split(sp, Path(files[split]), work / f"{split}.txt", workers)
        counts[split] = pieces + inputs[split]["lines"]  # one </s> per line
    tokenizer = {
        "type": "sentencepiece", "model": SPM_MODEL,
        "model_sha256": sha256_file(tmp / SPM_MODEL),
        "vocab_size": options["spm_vocab"], "model_type": options["spm_model_type"],
        "trained_on": "train", "settings": dict(SPM_SETTINGS),
        "normalization": "none, except Unicode whitespace other than space and "
                         "newline -> space",
        "sentencepiece_version": spm.__version__,
    }
    return tokenizer, counts


def _checked_stats(tmp: Path, inputs: Dict, counts: Dict):
    """fairseq-preprocess's binarized splits in ``tmp``, checked against the encoding's symbol
    counts; returns (stats with the inputs' byte / word counts and <unk>s, dictionary)."""
    from fairseq.data import Dictionary

    stats = binarized_stats(tmp)
    dictionary = Dictionary.load(str(tmp / "dict.txt"))
    for split in SPLITS:
        got = stats["splits"][split]
        if got["symbols"] != counts[split]:
            raise DataPrepError(
                f"{split}: fairseq stored {got['symbols']:,} symbols, the encoding has "
                f"{counts[split]:,}: a piece holds whitespace fairseq splits at (please "
                "report this with the file)"
            )
        got.update({k: inputs[split][k] for k in ("bytes", "words", "ends_with_newline")},
                   unk=count_symbol(tmp / split, dictionary.unk()))
        got["word_tokens"] = inputs[split]["words"] + got["lines"]
    return stats, dictionary


def prepare_text(root: Path, name: str, files: Dict[str, Path], spm_vocab: Optional[int] = None,
                 spm_model_type: Optional[str] = None, byte_level: bool = False,
                 workers: int = 1, log: Log = _log) -> Dict:
    """``files`` ({"train", "valid", "test"} -> UTF-8 text file) -> ``root/name``: sentencepiece
    (``spm_vocab`` pieces, ``spm_model_type``) or bytes, binarized by fairseq-preprocess, with
    ``spm.model`` and ``prepared.json``. Returns prepared.json's content."""
    _check_options(name, spm_vocab, spm_model_type, byte_level)
    options = _options(spm_vocab, spm_model_type, byte_level)
    root = Path(root)
    dest = root / name
    remove_stale_tmp(root, name, log)
    inputs = {split: {"path": str(Path(files[split])),
                      **inspect_text_file(Path(files[split]), f"--{split} {files[split]}")}
              for split in SPLITS}
    done = _check_finished(dest, inputs, options, log)
    if done is not None:
        return done

    with atomic_dir(dest) as tmp:
        work = tmp / ".encoded"
        work.mkdir()
        tokenizer, counts = (_encode_bytes(files, work) if byte_level else
                             _encode_pieces(files, inputs, options, tmp, work, workers, log))
        run_preprocess({s: work / f"{s}.txt" for s in SPLITS}, tmp, workers, log)
        stats, dictionary = _checked_stats(tmp, inputs, counts)
        shutil.rmtree(work)
        info = {
            "dataset": name, "unit": "byte" if byte_level else "sentencepiece",
            "options": options, "tokenizer": tokenizer,
            "inputs": {s: {"path": inputs[s]["path"], "sha256": inputs[s]["sha256"]}
                       for s in SPLITS},
            "vocabulary": {"dict_types": stats["dict_types"], "dictionary_size": len(dictionary),
                           **({} if byte_level else {"spm_pieces": options["spm_vocab"]})},
            **stats,
        }
        write_json_atomic(tmp / MARKER, info)
    test = info["splits"]["test"]
    log(f"done: {dest} ({stats['dict_types']:,} types; test {test['symbols']:,} symbols for "
        f"{test['bytes']:,} bytes, {test['unk']:,} <unk>)")
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare text",
        description="Prepare your own UTF-8 text for fairseq: sentencepiece trained on the "
                    "training file (or bytes), fairseq-preprocess, spm.model and prepared.json "
                    "in ROOT/NAME.",
    )
    p.add_argument("--name", required=True, help="output folder under --root")
    for split in SPLITS:
        p.add_argument(f"--{split}", required=True, type=Path, help=f"{split} split: a UTF-8 text file")
    p.add_argument("--root", default="data-bin", type=Path, help="output root (default: data-bin)")
    p.add_argument("--spm-vocab", type=int, default=None,
                   help=f"sentencepiece pieces (default {DEFAULT_SPM_VOCAB})")
    p.add_argument("--spm-model-type", choices=SPM_MODEL_TYPES, default=None,
                   help="sentencepiece algorithm (default unigram)")
    p.add_argument("--bytes", action="store_true",
                   help="byte level (one symbol per byte, as enwik8) instead of sentencepiece")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                   help="fairseq-preprocess workers and encoding threads (default: all cores)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    prepare_text(args.root, args.name, {s: getattr(args, s) for s in SPLITS}, args.spm_vocab,
                 args.spm_model_type, args.bytes, args.workers)
