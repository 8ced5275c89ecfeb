"""Shared test helpers: a fake fairseq task with a small dictionary, the tiny models of both
architectures (built as ``fairseq-train --arch`` builds them: studies.arch), the
helpers of the two generation test modules, the one runner of fairseq's CLIs, and sample
fairseq-eval-lm output (parsed by ``studies.run_utils.parse_eval_lm``, as the drivers do).

Plain helpers are importable with ``from conftest import ...`` (tests/ is on sys.path: it has no
``__init__.py``); test modules import helpers from here only, never from each other.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/run_tests.sh runs one pytest-xdist worker per core: one torch thread per worker, in
    # process and in the fairseq CLIs it starts, so that the workers do not fight over the cores
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

import fairseq_mswa  # noqa: E402

fairseq_mswa.register()  # the tests build models and tasks in-process

from studies.arch import DictionaryTask as FakeTask  # noqa: F401,E402  (re-exported)
from studies.arch import build_arch_model, make_dictionary  # noqa: F401,E402

# one thread per CLI process: the suite runs on 2 shared cores
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}


# the plugin folder, as fairseq's --user-dir
USER_DIR = Path(__file__).resolve().parents[1] / "fairseq_mswa"


# --- tiny models ------------------------------------------------------------------------------

LINEAR_WORDS = 40  # the linear_mswa tests' dictionary: 40 words + 4 specials
TINY_LINEAR = dict(decoder_embed_dim=32, decoder_ffn_embed_dim=64, decoder_attention_heads=4,
                   feature_dim=8, linear_chunk_size=8, base_window=16, dropout=0.0)
XL_WORDS = 23  # the transformer_xl_mswa tests' dictionary: 23 words + 4 specials


def tiny_linear_model(arch="linear_mswa_tiny", **overrides):
    """``--arch arch`` (default linear_mswa_tiny) + ``overrides`` on a 40-word dictionary, seed 0,
    in eval mode."""
    overrides.setdefault("max_target_positions", 128)
    torch.manual_seed(0)
    return build_arch_model(arch, FakeTask(LINEAR_WORDS), overrides).eval()


def tiny_xl_model(seed=0, **overrides):
    """``--arch transformer_xl_mswa_tiny --tokens-per-sample 32`` + ``overrides`` on a 23-word
    dictionary, in eval mode, its zero-initialised u / v biases randomised (symmetry broken)."""
    torch.manual_seed(seed)
    model = build_arch_model("transformer_xl_mswa_tiny", FakeTask(XL_WORDS), dict(
        tokens_per_sample=32, max_target_positions=32, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("u_bias", "v_bias")):
                p.normal_(0, 0.5)
    return model


# --- generation -------------------------------------------------------------------------------

PROMPT_TEXT = "w3 w4 w5"

# explicit windows whose head groups are not consecutive (heads 0 and 2 share a window)
NONCONSECUTIVE_WINDOWS = "[[4,1,4,7],[8,null,8,2],[3,5,3,5],[2,6,6,2]]"


def decoding_cases(full_layers: str) -> dict:
    """The window settings both models' decoding tests run, by name: the pattern is the name
    before '+' ('explicit' = mswa with NONCONSECUTIVE_WINDOWS), the value the extra config;
    ``full_layers``: the full-attention layers of the last case (the models differ in depth)."""
    return {
        "full": dict(), "swa": dict(), "mswa-h": dict(), "mswa-l": dict(), "mswa": dict(),
        "mswa+sinks": dict(sink_tokens=2),
        "explicit": dict(attn_windows=NONCONSECUTIVE_WINDOWS),
        "explicit+sinks": dict(attn_windows=NONCONSECUTIVE_WINDOWS, sink_tokens=2),
        "swa+full_layers+sinks": dict(full_attn_layers=full_layers, sink_tokens=1),
    }


def full_after_prompt_attention(prompt: int):
    """The masked reference of SWAA's full-attention decode, in place of a layer's
    ``window_attention``: queries before ``prompt`` see their windows (and sinks), later ones
    every earlier key; ``pos_scores`` (XL) added by distance. One segment, no memory."""
    from fairseq_mswa.kernels.dense import distance_scores, visibility_mask

    def attend(q, k, v, windows, sink_tokens=0, pos_scores=None, scale=None, **unused):
        lq, lk = q.shape[2], k.shape[2]
        assert lq == lk, "the reference covers one segment without memory"
        mask = visibility_mask(lq, lk, windows, sink_tokens)
        mask[:, prompt:] = torch.ones(lq, lk, dtype=torch.bool).tril()[prompt:]
        scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if pos_scores is not None:
            scores = scores + distance_scores(pos_scores, lk)
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v

    return attend


def assert_full_decode_matches(decoded, ref, trained, prompt: int) -> None:
    """SWAA's full-attention decode (log-probabilities (B, N, V)): equal to the masked reference
    everywhere, to the trained windows on the prompt, and different from them after it."""
    torch.testing.assert_close(decoded, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(decoded[:, :prompt], trained[:, :prompt], rtol=1e-10, atol=1e-10)
    assert (decoded[:, prompt:] - trained[:, prompt:]).abs().max() > 1e-6  # the override matters


def random_tokens(b, n, high, seed=1):
    """(b, n) token ids in [4, high): no special symbols."""
    return torch.randint(4, high, (b, n), generator=torch.Generator().manual_seed(seed))


def log_probs(model, logits):
    return model.get_normalized_probs((logits, None), log_probs=True)


def decode_in_chunks(model, tokens, chunks, state=None):
    """Feed ``tokens`` through the incremental path in chunks of the given sizes:
    (log-probabilities of every fed position, the incremental state)."""
    state = {} if state is None else state
    outs, t = [], 0
    for c in chunks:
        t += c
        outs.append(model.decoder(tokens[:, :t], incremental_state=state)[0])
    return log_probs(model, torch.cat(outs, 1)), state


def train_tiny(data, save, arch, task, updates, *extra, tokens_per_sample=64, batch_size=8):
    """fairseq-train a tiny model on ``data`` for ``updates`` updates (CPU, seed 1, no
    validation); returns its last checkpoint."""
    run_cli("train", *[
        str(data), "--user-dir", str(USER_DIR), "--task", task, "--arch", arch,
        "--tokens-per-sample", str(tokens_per_sample), "--cpu", "--num-workers", "0",
        "--optimizer", "adam", "--lr", "3e-3", "--batch-size", str(batch_size),
        "--max-update", str(updates), "--save-dir", str(save), "--no-epoch-checkpoints",
        "--log-format", "simple", "--seed", "1", "--disable-validation", *extra,
    ], timeout=180)
    return save / "checkpoint_last.pt"


def assert_interactive_continues(data, ckpt, task, *extra):
    """fairseq-interactive samples a continuation of PROMPT_TEXT that starts with it."""
    out = run_cli(
        "interactive", *[
            str(data), "--user-dir", str(USER_DIR), "--task", task, "--path", str(ckpt),
            "--sampling", "--sampling-topk", "3", "--beam", "1", "--cpu", "--seed", "2", *extra,
        ],
        input=PROMPT_TEXT + "\n", timeout=120,
    )
    hypo = [line.split("\t")[2] for line in out.splitlines() if line.startswith("H-0")]
    assert hypo and hypo[0].startswith(PROMPT_TEXT + " "), out[-2000:]
    assert len(hypo[0].split()) > len(PROMPT_TEXT.split())


# --- fairseq's command-line tools -------------------------------------------------------------

def cli_command(tool: str, *args) -> list:
    """``python -m fairseq_cli.<tool> args...`` with this interpreter (tool: train, eval_lm,
    preprocess, ...)."""
    return [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)]


def run_cli(tool: str, *args, timeout: float = 300, env=None, input=None) -> str:
    """Run a fairseq CLI (``input``: its standard input); returns stdout + stderr, or fails the
    test with the command and the end of its output."""
    cmd = cli_command(tool, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env=CLI_ENV if env is None else env)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


@pytest.fixture
def eval_lm_output():
    """Factory of fairseq-eval-lm's result lines as fairseq 0.12 prints them (``{:,}``)."""

    def make(tokens: int, loss: float, ppl: float, seconds: float = 0.9) -> str:
        return (
            f"INFO:fairseq_cli.eval_lm:Evaluated {tokens:,} tokens in {seconds:.1f}s "
            f"({tokens / seconds:.2f} tokens/s)\n"
            f"INFO:fairseq_cli.eval_lm:Loss (base 2): {loss:.4f}, Perplexity: {ppl:.2f}\n"
        )

    return make


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A binarized word corpus with structure to learn: counting phrases over a 30-word vocab
    (``w0 .. w29``), built once per test session."""
    root = tmp_path_factory.mktemp("word_corpus")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]

    def lines(n):
        out = []
        for _ in range(n):
            start = rng.randrange(30)
            out.append(" ".join(words[(start + j) % 30] for j in range(rng.randint(5, 15))))
        return "\n".join(out) + "\n"

    for split, n in (("train", 400), ("valid", 40), ("test", 40)):
        (root / f"{split}.txt").write_text(lines(n))
    run_cli("preprocess", *[
        "--only-source", "--trainpref", str(root / "train.txt"), "--validpref",
        str(root / "valid.txt"), "--testpref", str(root / "test.txt"), "--destdir",
        str(root / "bin"), "--workers", "1",
    ], timeout=120)
    return root / "bin"


# --- tiny fairseq-train runs (resume and bad-input tests) --------------------------------------

# a tiny model, fp32 on CPU, every update logged as JSON (``run_utils.parse_train_inner``)
TINY_ARCHS = {"xl": "transformer_xl_mswa_tiny", "linear": "linear_mswa_tiny"}


def tiny_train_args(data, save_dir, *extra, model: str = "xl", updates: int = 8) -> list:
    """Arguments of ``fairseq-train`` (``mswa_lm``, segments of 24 tokens, 4 streams) for a tiny
    model; ``extra`` flags come last and win."""
    return [data, "--user-dir", USER_DIR, "--task", "mswa_lm", "--arch", TINY_ARCHS[model],
            "--optimizer", "adam", "--lr", "2e-3", "--cpu", "--seed", "3", "--log-format", "json",
            "--log-interval", "1", "--no-epoch-checkpoints", "--tokens-per-sample", "24",
            "--batch-size", "4", "--max-update", str(updates), "--save-dir", save_dir, *extra]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_rank_args(world: int, rank: int, port: int) -> list:
    """Flags of rank ``rank`` of a ``world``-process CPU (gloo) fairseq-train, one process per rank
    (fairseq 0.12 on CPU needs --distributed-no-spawn and a tcp:// init method)."""
    return ["--distributed-world-size", world, "--distributed-rank", rank,
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
            "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]


def run_ranks(tool: str, world: int, args_of_rank, timeout: float = 300) -> list:
    """Run ``world`` processes of a fairseq CLI, rank r with ``args_of_rank(r, port)``; returns
    their outputs (rank 0 first) or fails with the end of both logs."""
    port = free_port()
    procs = [subprocess.Popen(cli_command(tool, *args_of_rank(r, port)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=CLI_ENV)
             for r in range(world)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise AssertionError("\n".join(f"rank {r} (exit {p.returncode}):\n{log[-3000:]}"
                                       for r, (p, log) in enumerate(zip(procs, logs))))
    return logs


def run_cli_failing(tool: str, *args, timeout: float = 300, input=None):
    """Run a fairseq CLI that must fail: returns (exit status, last line of stderr)."""
    cmd = cli_command(tool, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env=CLI_ENV)
    if proc.returncode == 0:
        raise AssertionError(f"{' '.join(cmd)} succeeded, expected an error:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, (lines[-1] if lines else "")


def checkpoint_params(path):
    """The model parameters saved in a fairseq checkpoint (name -> tensor)."""
    import torch

    return torch.load(path, map_location="cpu")["model"]


# --- FlexAttention on CPU: counting Dynamo's graphs, and the eager path's backward -------------

@pytest.fixture
def flex_eager_dynamo(monkeypatch):
    """Compiled flex through Dynamo with ``backend="eager"`` (the same guards and recompile
    rules as on CUDA, nothing compiled): a fresh Dynamo before and after; yields a function
    returning the number of graphs Dynamo holds for torch's ``flex_attention`` (its cache
    entries: torch's eager flex compiles a wrapper of its own, which is not counted)."""
    from torch._dynamo import eval_frame

    from fairseq_mswa.kernels import flex

    if flex.IMPORT_ERROR:
        pytest.skip(flex.IMPORT_ERROR)
    entries = getattr(eval_frame, "_debug_get_cache_entry_list", None)
    if entries is None:
        pytest.skip(f"torch {torch.__version__} has no torch._dynamo.eval_frame."
                    "_debug_get_cache_entry_list to count graphs with")
    torch._dynamo.reset()
    monkeypatch.setattr(flex, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(flex, "_COMPILED", {})
    yield lambda: len(entries(flex.flex_attention))
    torch._dynamo.reset()


# the sentence torch's FlexAttention raises for a CPU backward (torch 2.5 .. 2.13)
FLEX_CPU_BACKWARD_REFUSAL = "FlexAttention does not support backward on CPU"


@pytest.fixture
def flex_cpu_backward(monkeypatch):
    """Lift torch's device check that refuses FlexAttention's backward on CPU (inside the test
    only), so the unfused eager path's autograd runs: that checks this project's mask_mod /
    score_mod logic and the captured ``pos_scores`` gradient, not a Triton kernel. Guarded: if
    torch no longer has the check as this fixture knows it (``_validate_device`` raising
    FLEX_CPU_BACKWARD_REFUSAL), the test skips with the reason instead of running untested."""
    import inspect

    from torch.nn.attention import flex_attention as fa

    check = getattr(fa, "_validate_device", None)
    try:
        source = inspect.getsource(check) if check is not None else ""
    except (OSError, TypeError):
        source = ""
    if FLEX_CPU_BACKWARD_REFUSAL not in source:
        pytest.skip(f"torch {torch.__version__}: torch.nn.attention.flex_attention._validate_device "
                    f"no longer raises {FLEX_CPU_BACKWARD_REFUSAL!r} as this test knows it; "
                    "re-check how to run flex's CPU backward (it may be supported now)")
    monkeypatch.setattr(fa, "_validate_device", lambda query, key, value: None)
    # the fixture's own check that the lift worked: a tiny backward through the eager path
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    fa.flex_attention(x, x, x).sum().backward()
    assert x.grad is not None
