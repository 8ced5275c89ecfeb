"""Bad input through the real CLIs: each gets a one-line error that names the fix (the last line
of stderr), a non-zero exit, and nothing half-written (no checkpoint file in the save dir). The
README's "When something is wrong" table lists the same cases with their messages."""

import shutil

import pytest
import torch
from conftest import USER_DIR, run_cli, run_cli_failing, tiny_train_args


@pytest.fixture(scope="module")
def bad(tiny_corpus, tmp_path_factory):
    """A trained tiny checkpoint, and the broken inputs around it."""
    from fairseq.data import Dictionary, indexed_dataset

    root = tmp_path_factory.mktemp("bad_inputs")
    ckpt_dir = root / "ckpt"
    run_cli("train", *tiny_train_args(tiny_corpus, ckpt_dir, updates=2))
    ckpt = ckpt_dir / "checkpoint_last.pt"
    # a data directory whose dictionary is not the checkpoint's (more words)
    other = root / "other-dict"
    shutil.copytree(tiny_corpus, other)
    with open(other / "dict.txt", "a") as f:
        f.writelines(f"extra{i} 1\n" for i in range(16))
    # a data directory whose test split has 3 tokens
    tiny = root / "tiny-split"
    shutil.copytree(tiny_corpus, tiny)
    d = Dictionary.load(str(tiny / "dict.txt"))
    builder = indexed_dataset.make_builder(str(tiny / "test.bin"), impl="mmap", vocab_size=len(d))
    builder.add_item(torch.IntTensor([d.index("w1"), d.index("w2"), d.eos()]))
    builder.finalize(str(tiny / "test.idx"))
    # a truncated checkpoint, a torch file that is not a checkpoint
    data = ckpt.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(2)}, root / "not-a-checkpoint.pt")
    return {"data": tiny_corpus, "ckpt": ckpt, "other": other, "tiny": tiny, "root": root}


def eval_lm(data, path, *extra):
    return ["eval_lm", data, "--user-dir", USER_DIR, "--task", "mswa_lm", "--path", path, "--cpu",
            "--gen-subset", "test", "--tokens-per-sample", 24, *extra]


def interactive(data, path):
    return ["interactive", data, "--user-dir", USER_DIR, "--task", "mswa_lm", "--path", path,
            "--cpu", "--sampling", "--beam", 1]


CASES = {
    # name: (command builder, stdin, expected message part)
    "eval-lm, dictionary not the checkpoint's": (
        lambda b: eval_lm(b["other"], b["ckpt"], "--batch-size", 2), None,
        "the checkpoint was trained with another dictionary"),
    "interactive, dictionary not the checkpoint's": (
        lambda b: interactive(b["other"], b["ckpt"]), "w1 w2\n",
        "the checkpoint was trained with another dictionary"),
    "eval-lm without --batch-size": (
        lambda b: eval_lm(b["data"], b["ckpt"]), None, "mswa_lm needs --batch-size"),
    "eval-lm with --context-window": (
        lambda b: eval_lm(b["data"], b["ckpt"], "--batch-size", 2, "--context-window", 8), None,
        "--context-window does not apply (drop it)"),
    "split with fewer tokens than streams": (
        lambda b: eval_lm(b["tiny"], b["ckpt"], "--batch-size", 4), None,
        "fewer than the 4 streams (batch size 4 x 1 ranks): use a smaller --batch-size"),
    "truncated checkpoint": (
        lambda b: eval_lm(b["data"], b["root"] / "truncated.pt", "--batch-size", 2), None,
        "truncated.pt is truncated (its write was interrupted?): use "),
    "a .pt file that is not a checkpoint": (
        lambda b: eval_lm(b["data"], b["root"] / "not-a-checkpoint.pt", "--batch-size", 2), None,
        "not-a-checkpoint.pt is not a fairseq checkpoint: use "),
    "sampling prompt of unknown words only": (
        lambda b: interactive(b["data"], b["ckpt"]), "zzz qqq\n",
        "none of its 2 words is in the dictionary"),
}

TRAIN_CASES = {
    "--mem-len shorter than a window": (
        ["--attn-pattern", "swa", "--base-window", 16, "--mem-len", 2],
        "--mem-len 2 is shorter than layer 0 needs for its window 16 (15): use --mem-len >= 15"),
    "malformed --attn-windows JSON": (
        ["--attn-windows", "[[4,8"], "--attn-windows is not valid JSON"),
    "--attn-backend flash for transformer_xl_mswa": (
        ["--attn-backend", "flash"], "--attn-backend flash: transformer_xl_mswa adds a relative "
        "position term"),
    "--attn-backend flash without a GPU": (
        ["--arch", "linear_mswa_tiny", "--attn-backend", "flash"],
        "--attn-backend flash: flash-attn needs a CUDA GPU"),
    "--attn-backend flex for CPU training": (
        ["--attn-backend", "flex"], "--attn-backend flex: FlexAttention has no backward on CPU"),
    "resume from a truncated checkpoint": (
        ["--restore-file", "TRUNCATED"], "truncated.pt is truncated"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_error(bad, case):
    command, stdin, message = CASES[case]
    rc, last = run_cli_failing(*command(bad), input=stdin)
    assert rc != 0 and message in last, last


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_training_input_fails_before_writing(bad, tmp_path, case):
    if case.startswith("--attn-backend flash without") and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    if case.startswith("--attn-backend flex") and torch.cuda.is_available():
        pytest.skip("flex trains on a GPU")
    flags, message = TRAIN_CASES[case]
    flags = [str(bad["root"] / "truncated.pt") if f == "TRUNCATED" else f for f in flags]
    save = tmp_path / "save"
    rc, last = run_cli_failing("train", *tiny_train_args(bad["data"], save, *flags, updates=2))
    assert rc != 0 and message in last, last
    assert not list(save.glob("*.pt*")) if save.exists() else True  # nothing (half-)written
