"""Exact resume through the real fairseq-train: a run stopped (``--max-update``, SIGKILL) and resumed
from its checkpoint reproduces the uninterrupted run, loss for loss and parameter for parameter
(fp32 on CPU), because the mswa_lm task saves the training streams' memories with the checkpoint
(``StreamMemory.state_dict``) and restores them. Also: 2 gloo ranks, ``--update-freq 2``,
``linear_mswa`` (no memory), and a resume under another stream layout (warning, empty memories).
"""

import shutil
import signal
import subprocess

import pytest
import torch
from conftest import (
    CLI_ENV,
    checkpoint_params,
    cli_command,
    gloo_rank_args,
    run_cli,
    run_ranks,
    tiny_train_args,
)

from studies.run_utils import parse_train_inner

N, K = 10, 4  # updates of the uninterrupted run; where the interrupted run stops
SAVE = ["--save-interval-updates", 4]  # checkpoints mid-epoch (the epoch is ~40 updates)
TASK_STATE = "MSWALanguageModelingTask"  # fairseq keys the task's extra state by class name


def losses(log):
    return {rec["update"]: rec["loss"] for rec in parse_train_inner(log)}


def assert_same_run(resumed_log, resumed_dir, reference):
    ref_log, ref_dir = reference
    ref, got = losses(ref_log), losses(resumed_log)
    later = sorted(u for u in got)
    assert later and later[-1] == N and later[0] > 1, later  # it resumed, and it ran to the end
    assert {u: got[u] for u in later} == {u: ref[u] for u in later}
    a, b = checkpoint_params(ref_dir / "checkpoint_last.pt"), checkpoint_params(
        resumed_dir / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bitwise


def max_param_difference(dir_a, dir_b):
    a, b = checkpoint_params(dir_a / "checkpoint_last.pt"), checkpoint_params(
        dir_b / "checkpoint_last.pt")
    return max(float((a[n] - b[n]).abs().max()) for n in a)


_REFERENCES = {}


def reference(data, tmp_path_factory, model="xl", *extra):
    """The uninterrupted run of N updates (one per configuration and test session)."""
    key = (model, *map(str, extra))
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp("reference")
        log = run_cli("train", *tiny_train_args(data, out, *SAVE, *extra, model=model, updates=N))
        _REFERENCES[key] = (log, out)
    return _REFERENCES[key]


def stopped_at_k(data, tmp_path_factory, model="xl", *extra):
    """A run stopped by --max-update K (its save dir is copied by the tests that resume it)."""
    key = ("stopped", model, *map(str, extra))
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp("stopped")
        _REFERENCES[key] = (run_cli("train", *tiny_train_args(data, out, *SAVE, *extra,
                                                              model=model, updates=K)), out)
    return _REFERENCES[key][1]


def resumed_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("model", ["xl", "linear"])
def test_max_update_then_resume_equals_uninterrupted(tiny_corpus, tmp_path_factory, tmp_path,
                                                    model):
    ref = reference(tiny_corpus, tmp_path_factory, model)
    save = resumed_copy(stopped_at_k(tiny_corpus, tmp_path_factory, model), tmp_path / "run")
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    assert "stream_memory" not in str(list(state["model"]))  # eval-lm and the hub: as before
    saved = state["extra_state"].get(TASK_STATE, {}).get("stream_memory")
    if model == "xl":
        assert saved["ranks"][0]["next_start"] == K * 24 and saved["ranks"][0]["mems"]
        assert saved["ranks"][0]["last_start"] == (K - 1) * 24
    else:
        assert saved is None  # linear_mswa keeps no memory
    log = run_cli("train", *tiny_train_args(tiny_corpus, save, *SAVE, model=model, updates=N))
    assert "restored the stream memories" in log if model == "xl" else True
    assert "empty memory" not in log
    assert_same_run(log, save, ref)


def test_without_the_saved_memory_the_resumed_run_differs(tiny_corpus, tmp_path_factory,
                                                         tmp_path):
    """The control: the same resume with the memory dropped from the checkpoint (what resuming
    did before) trains another model, so the exactness test above can fail."""
    ref = reference(tiny_corpus, tmp_path_factory)
    save = resumed_copy(stopped_at_k(tiny_corpus, tmp_path_factory), tmp_path / "run")
    path = save / "checkpoint_last.pt"
    state = torch.load(path, map_location="cpu")
    with_memory = path.stat().st_size
    del state["extra_state"][TASK_STATE]
    torch.save(state, path)
    assert with_memory > path.stat().st_size  # what the memories add (reported in the README)
    log = run_cli("train", *tiny_train_args(tiny_corpus, save, *SAVE, updates=N))
    assert "continuing from an empty memory" in log
    assert max_param_difference(ref[1], save) > 1e-4


def test_sigkill_after_a_checkpoint_then_resume_with_update_freq_2(tiny_corpus, tmp_path_factory,
                                                                  tmp_path):
    """(b) + (d): killed (SIGKILL) right after the save at update 4, resumed by rerunning the same
    command, with 2 batches per update."""
    extra = ["--update-freq", 2]
    ref = reference(tiny_corpus, tmp_path_factory, "xl", *extra)
    save = tmp_path / "run"
    args = tiny_train_args(tiny_corpus, save, *SAVE, *extra, updates=N)
    proc = subprocess.Popen(cli_command("train", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=CLI_ENV)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Saved checkpoint" in line and f"@ {K} updates" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    stopped_at = torch.load(save / "checkpoint_last.pt", map_location="cpu")[
        "optimizer_history"][-1]["num_updates"]
    assert K <= stopped_at < N  # killed mid-run
    log = run_cli("train", *args)
    assert_same_run(log, save, ref)


def test_two_gloo_ranks_resume_exactly(tiny_corpus, tmp_path):
    """(c) each rank's memory is gathered to rank 0 at a save and given back to it on resume: the
    uninterrupted 2-rank run's checkpoint at update K, resumed, gives that run's later updates."""

    def two_ranks(save, updates):
        return run_ranks("train", 2, lambda r, port: tiny_train_args(
            tiny_corpus, save, *SAVE, "--batch-size", 2, *gloo_rank_args(2, r, port),
            updates=updates))[0]

    ref_dir = tmp_path / "reference"
    ref = (two_ranks(ref_dir, N), ref_dir)
    saved = torch.load(ref_dir / f"checkpoint_1_{K}.pt", map_location="cpu")
    ranks = saved["extra_state"][TASK_STATE]["stream_memory"]["ranks"]
    assert len(ranks) == 2 and all(r is not None and r["next_start"] == K * 24 for r in ranks)
    assert not torch.equal(ranks[0]["mems"][1], ranks[1]["mems"][1])  # each rank its own streams
    save = tmp_path / "run"
    save.mkdir()
    shutil.copy(ref_dir / f"checkpoint_1_{K}.pt", save / "checkpoint_last.pt")
    assert_same_run(two_ranks(save, N), save, ref)


@pytest.mark.parametrize("change", [["--batch-size", 2], ["--tokens-per-sample", 16]])
def test_resume_with_another_stream_layout_warns_and_starts_empty(tiny_corpus, tmp_path_factory,
                                                                 tmp_path, change):
    """(e) another --batch-size or --tokens-per-sample: the saved memory does not fit these
    streams; training goes on from empty memories, with a warning saying why."""
    save = resumed_copy(stopped_at_k(tiny_corpus, tmp_path_factory), tmp_path / "run")
    log = run_cli("train", *tiny_train_args(tiny_corpus, save, *SAVE, *change, updates=K + 2))
    assert "training continues from empty memories" in log
    assert "restored the stream memories" not in log
    assert max(losses(log)) == K + 2


# a fairseq-train whose copy of checkpoint_last.pt in its second save stops halfway (as a kill
# during the copy would leave it) and waits to be killed
_COPY_INTERRUPTED = r'''
import os, sys, time
real, copies = os.sendfile, []
def sendfile(out_fd, in_fd, offset, count):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{out_fd}"))
    if name.startswith("checkpoint_last.pt") and offset == 0:
        copies.append(name)
        if len(copies) == 2:
            real(out_fd, in_fd, 0, os.fstat(in_fd).st_size // 2)
            print("COPY INTERRUPTED", flush=True)
            time.sleep(600)
    return real(out_fd, in_fd, offset, count)
os.sendfile = sendfile
from fairseq_cli.train import cli_main
sys.argv[0] = "fairseq-train"
cli_main()
'''


def test_sigkill_while_checkpoint_last_is_written_keeps_the_previous_one(tiny_corpus, tmp_path):
    """fairseq copies checkpoint_last.pt from the save's first file; the plugin makes that copy
    atomic, so a kill halfway leaves the previous checkpoint_last.pt, and training resumes."""
    save = tmp_path / "run"
    args = tiny_train_args(tiny_corpus, save, "--save-interval-updates", 2, updates=6)
    proc = subprocess.Popen([*cli_command("train")[:1], "-c", _COPY_INTERRUPTED, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=CLI_ENV)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "COPY INTERRUPTED" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")  # whole
    assert state["optimizer_history"][-1]["num_updates"] == 2  # the previous save's
    assert (save / "checkpoint_1_4.pt").exists()  # the save that was interrupted had begun
    log = run_cli("train", *args)
    assert min(losses(log)) == 3 and max(losses(log)) == 6
