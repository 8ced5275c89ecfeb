"""Decode-time evaluation: bits per token of held-out continuations scored through the decoding path.

    python scripts/decode_eval.py DATA-BIN --path CKPT --prompt-tokens 512 --continuation-tokens 128
    python scripts/decode_eval.py DATA-BIN --path CKPT --prompt-tokens 512 --continuation-tokens 128 \\
        --model-overrides "{'decode_full_attention': True}" --json results/decode_eval.json

``fairseq-eval-lm`` scores a text in parallel, so a setting that changes only how a model *decodes*
(SWAA's full-attention decode, ``decode_full_attention``: the prompt on the trained windows, every
later token sees the whole context) cannot show there. This scores the continuations the way a
model generates them:

* the split's token stream (every line of the data-bin, each ending with ``</s>``) is cut into
  consecutive, non-overlapping pairs of ``P`` prompt tokens and ``C`` continuation tokens (the
  remainder is dropped; ``--max-pairs`` keeps the first N);
* per pair, the whole prompt goes through the decoder in **one** incremental call (fairseq's
  ``incremental_state``), then the continuation one token per call, as fairseq's
  ``SequenceGenerator`` drives a decoder; continuation token ``t`` is scored by the step whose input
  is token ``t - 1`` (the first one by the prompt call's last position);
* only the ``C`` continuation tokens are scored; the result is bits (log2) per token over all
  pairs. Pairs are decoded ``--batch-size`` at a time (every pair has the same length: no padding).

With no override the result equals the parallel forward's scoring of the same tokens (windows and
sinks as trained; ``tests/test_decode_eval.py``). The checkpoint is loaded with fairseq's own
``checkpoint_utils.load_model_ensemble_and_task`` (``--model-overrides`` as fairseq's, plus
``data`` = DATA-BIN), either model and either task (``mswa_lm``, ``language_modeling``).
The last line printed is ``continuation bits per token: X over N tokens``; ``--json F`` writes the
result, the options and the provenance (command, git commit, date, machine), atomically.
"""

import argparse
import ast
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from studies.run_utils import (USER_DIR, portable_path, provenance, script_command, utc_now,
                               write_json_atomic)



class DecodeEvalError(ValueError):
    """Bad input; the message names the fix."""


# --- inputs ------------------------------------------------------------------------------------

def parse_overrides(text: Optional[str]) -> Dict:
    """``--model-overrides`` as fairseq reads it: a Python literal dict (``"{'a': True}"``)."""
    if text is None or not text.strip():
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise DecodeEvalError(
            f"--model-overrides {text!r} is not a Python literal ({e}): give a dict such as "
            "\"{'decode_full_attention': True}\"") from None
    if not isinstance(value, dict):
        raise DecodeEvalError(f"--model-overrides {text!r} is a {type(value).__name__}, not a dict: "
                              "give a dict such as \"{'decode_full_attention': True}\"")
    return value


def check_inputs(data: Path, checkpoint: Path, split: str, prompt_tokens: int,
                 continuation_tokens: int, batch_size: int, max_pairs: Optional[int]) -> None:
    """Refuse what cannot be evaluated before loading anything (raises DecodeEvalError)."""
    for name, value in (("--prompt-tokens", prompt_tokens),
                        ("--continuation-tokens", continuation_tokens),
                        ("--batch-size", batch_size)):
        if value < 1:
            raise DecodeEvalError(f"{name} {value}: must be >= 1")
    if max_pairs is not None and max_pairs < 1:
        raise DecodeEvalError(f"--max-pairs {max_pairs}: must be >= 1 (or leave it out: all pairs)")
    if not checkpoint.is_file():
        raise DecodeEvalError(f"checkpoint {checkpoint} does not exist: give --path a fairseq "
                              "checkpoint (e.g. checkpoints/checkpoint_best.pt)")
    if not (data / "dict.txt").is_file():
        raise DecodeEvalError(f"{data} has no dict.txt: give the data-bin (fairseq-preprocess "
                              "--only-source output) the checkpoint was trained on")
    if not (data / f"{split}.idx").is_file() and not (data / f"{split}.bin").is_file():
        have = sorted(p.stem for p in data.glob("*.idx"))
        raise DecodeEvalError(f"split {split!r} not found in {data} (no {split}.bin/.idx; it has "
                              f"{', '.join(have) or 'no split'}): pass --split with one of those, "
                              "or binarize it with fairseq-preprocess")


# --- model and data ----------------------------------------------------------------------------

def load_model(checkpoint: Path, data: Path, overrides: Dict, user_dir: Path = USER_DIR,
               device: str = "cpu"):
    """(model in eval mode on ``device``, task) of a fairseq checkpoint, loaded by fairseq's
    ``load_model_ensemble_and_task`` with ``overrides`` (``--model-overrides``) and ``data``."""
    from argparse import Namespace

    from fairseq import checkpoint_utils, utils

    try:
        utils.import_user_module(Namespace(user_dir=str(user_dir)))
    except FileNotFoundError:
        raise DecodeEvalError(f"--user-dir {user_dir} does not exist: give the fairseq_mswa "
                              "package folder (or leave it out)") from None
    if "fairseq_mswa" in sys.modules:  # imported before fairseq: fairseq skipped its import
        sys.modules["fairseq_mswa"].register()
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={**overrides, "data": str(data)})
    except RuntimeError as e:  # e.g. a state dict of another shape, a file that is not a checkpoint
        raise DecodeEvalError(f"cannot load {checkpoint}: {e}") from None
    model = models[0].to(device).eval()
    unknown = [k for k in overrides if k != "data" and not hasattr(model.decoder.cfg, k)
               and not hasattr(task.cfg, k)]
    if unknown:  # fairseq would ignore them silently
        raise DecodeEvalError(f"--model-overrides {unknown}: no such option of {checkpoint}'s "
                              "model or task (e.g. 'decode_full_attention'); fix the name")
    return model, task


def split_tokens(task, split: str):
    """The split's token stream (every line of the data-bin in order, each ending with ``</s>``)
    as a LongTensor (N,), read with the task's dictionary and dataset format."""
    import numpy as np
    import torch
    from fairseq.data import data_utils

    from fairseq import utils

    data = utils.split_paths(str(task.cfg.data))[0]
    dataset = data_utils.load_indexed_dataset(os.path.join(data, split), task.source_dictionary,
                                              getattr(task.cfg, "dataset_impl", None))
    if dataset is None:
        raise DecodeEvalError(f"split {split!r} not found in {data}: pass --split with a split "
                              "of the data-bin, or binarize it with fairseq-preprocess")
    if len(dataset) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.concatenate([dataset[i].numpy() for i in range(len(dataset))])
                            .astype(np.int64))


def make_pairs(tokens, prompt_tokens: int, continuation_tokens: int,
               max_pairs: Optional[int] = None):
    """tokens (N,) -> (n, P + C): consecutive non-overlapping windows of P + C tokens, the
    remainder dropped; the first ``max_pairs`` when given. Raises when not even one fits."""
    length = prompt_tokens + continuation_tokens
    n = len(tokens) // length
    if n == 0:
        raise DecodeEvalError(
            f"the split has {len(tokens)} tokens, fewer than one pair of {prompt_tokens} prompt + "
            f"{continuation_tokens} continuation tokens: use smaller --prompt-tokens / "
            "--continuation-tokens, or a longer split")
    if max_pairs is not None:
        n = min(n, max_pairs)
    return tokens[: n * length].view(n, length)


# --- scoring -----------------------------------------------------------------------------------

def _target_log_probs(model, net_output, targets):
    """log p(targets) (B, T) from the decoder's output of T positions (logits, or features under
    adaptive softmax), through the model's own ``get_normalized_probs``."""
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    return lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def decode_log_probs(model, pairs, prompt_tokens: int):
    """pairs (B, P + C) -> natural log-probabilities (B, C) of the continuation tokens through
    the decoding path: the prompt in one incremental call, then one token per call.

    The call that feeds token ``t - 1`` predicts token ``t``; the decoders take the whole prefix
    and run only the tokens after the cached ones, as ``SequenceGenerator`` calls them."""
    import torch

    p, total = prompt_tokens, pairs.shape[1]
    state: Dict = {}
    out, extra = model.decoder(pairs[:, :p], incremental_state=state)
    scores = [_target_log_probs(model, (out[:, -1:], extra), pairs[:, p:p + 1])]
    for t in range(p + 1, total):  # feeds token t - 1, predicts token t
        out, extra = model.decoder(pairs[:, :t], incremental_state=state)
        scores.append(_target_log_probs(model, (out[:, -1:], extra), pairs[:, t:t + 1]))
    return torch.cat(scores, dim=1)


def evaluate(model, pairs, prompt_tokens: int, batch_size: int = 8,
             progress: bool = False) -> Dict:
    """Decode every pair (``batch_size`` pairs per batch) and sum the continuations' log2
    probabilities: ``{bits_per_token, tokens, pairs, bits}``."""
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    total_nats, n = 0.0, pairs.shape[0]
    bar = tqdm(total=n, desc="decode", unit="pair", dynamic_ncols=True, disable=not progress,
               file=sys.stderr)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = pairs[start:start + batch_size].to(device)
            lp = decode_log_probs(model, batch, prompt_tokens)
            total_nats += float(lp.double().sum())
            bar.update(batch.shape[0])
    bar.close()
    tokens = n * (pairs.shape[1] - prompt_tokens)
    bits = -total_nats / math.log(2)
    return {"bits_per_token": bits / tokens, "tokens": tokens, "pairs": n, "bits": bits}


def result_line(result: Dict) -> str:
    """The last line printed: ``continuation bits per token: X over N tokens``."""
    return (f"continuation bits per token: {result['bits_per_token']:.6f} "
            f"over {result['tokens']} tokens")


def parse_result_line(text: str) -> Optional[Dict]:
    """{bits_per_token, tokens} of the last :func:`result_line` in ``text`` (a run's output), or
    None when there is none."""
    import re

    found = re.findall(r"continuation bits per token: (\S+) over (\d+) tokens", text)
    if not found:
        return None
    return {"bits_per_token": float(found[-1][0]), "tokens": int(found[-1][1])}


# --- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="data-bin (fairseq-preprocess --only-source output)")
    ap.add_argument("--path", type=Path, required=True, help="fairseq checkpoint")
    ap.add_argument("--user-dir", type=Path, default=USER_DIR,
                    help="fairseq --user-dir (default: this fairseq_mswa package)")
    ap.add_argument("--prompt-tokens", type=int, required=True,
                    help="P: tokens of each prompt, decoded in one incremental call")
    ap.add_argument("--continuation-tokens", type=int, required=True,
                    help="C: tokens scored after each prompt, decoded one per call")
    ap.add_argument("--model-overrides", default="{}",
                    help="as fairseq's: a Python dict, e.g. \"{'decode_full_attention': True}\"")
    ap.add_argument("--split", default="test", help="split of DATA-BIN (default test)")
    ap.add_argument("--max-pairs", type=int, default=None, help="score the first N pairs only")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs decoded together")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    ap.add_argument("--json", type=Path, default=None, help="write the result record here")
    return ap


def run(args) -> Dict:
    """Check, load, pair, decode: the result record (without provenance)."""
    import torch

    check_inputs(args.data, args.path, args.split, args.prompt_tokens, args.continuation_tokens,
                 args.batch_size, args.max_pairs)
    overrides = parse_overrides(args.model_overrides)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    model, task = load_model(args.path, args.data, overrides, args.user_dir, device)
    tokens = split_tokens(task, args.split)
    pairs = make_pairs(tokens, args.prompt_tokens, args.continuation_tokens, args.max_pairs)
    arch = getattr(model.decoder.cfg, "_name", None) or type(model).__name__
    print(f"{arch}, overrides {overrides}: {pairs.shape[0]} pairs of {args.prompt_tokens} prompt "
          f"+ {args.continuation_tokens} continuation tokens from {args.split} "
          f"({len(tokens)} tokens), {device}", flush=True)
    started = time.time()
    result = evaluate(model, pairs, args.prompt_tokens, args.batch_size,
                      progress=sys.stderr.isatty())
    result.update({
        "wall_s": round(time.time() - started, 2),
        "split_tokens": int(len(tokens)),
        "arch": str(arch),
        "device": device,
        "options": {
            "data": portable_path(str(args.data)), "checkpoint": portable_path(str(args.path)),
            "split": args.split,
            "prompt_tokens": args.prompt_tokens, "continuation_tokens": args.continuation_tokens,
            "model_overrides": overrides, "max_pairs": args.max_pairs,
            "batch_size": args.batch_size,
        },
    })
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    started = utc_now()  # the date of the start, as the other drivers record it
    try:
        result = run(args)
    except DecodeEvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json is not None:
        import torch

        prov = provenance(script_command("decode_eval.py", argv), result["device"],
                          torch.get_num_threads())
        prov["date"] = started
        write_json_atomic(args.json, {**result, **prov})  # command, git_commit, date, machine
        print(f"wrote {args.json}")
    print(result_line(result), flush=True)
    return 0
