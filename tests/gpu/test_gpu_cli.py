"""fairseq-train + fairseq-eval-lm with ``--bf16`` on the GPU, once per model
(``transformer_xl_mswa`` on the ``mswa_lm`` task, ``linear_mswa`` on ``language_modeling``).

Checks: the run trains with ``common.bf16`` set and ``common.tpu`` clear (fairseq's trainer then
casts the model to bfloat16; its checkpoints store float32 copies, so the saved config is what
shows it; ``fairseq_mswa/compat.py`` clears the ``--tpu`` that fairseq 0.12 implies), on the GPU
(fairseq's log names it), with finite losses, and fairseq-eval-lm scores every test token.
fairseq 0.12's eval-lm casts a model only for ``--fp16``, so it evaluates the bfloat16-trained
checkpoint in float32 (``--bf16`` is passed all the same: it must not break the run). In the CPU rehearsal (MSWA_GPU_REHEARSAL=1) the same commands run with
``--cpu`` (still ``--bf16``: the path through fairseq's trainer is the same).
"""

import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from gpu_mode import DEVICE, requires_device

import fairseq_mswa
from studies.run_utils import parse_eval_lm, parse_train_summary

pytestmark = requires_device

USER_DIR = str(Path(fairseq_mswa.__file__).resolve().parent)
WHERE = ["--cpu"] if DEVICE == "cpu" else []
TINY = ["--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
        "--decoder-attention-heads", "4", "--dropout", "0.0"]
MODELS = {
    "transformer_xl_mswa": (["--task", "mswa_lm", "--arch", "transformer_xl_mswa_tiny"],
                            ["--tokens-per-sample", "32", "--batch-size", "4"],
                            ["--tokens-per-sample", "32", "--batch-size", "2"]),
    "linear_mswa": (["--task", "language_modeling", "--arch", "linear_mswa_tiny"],
                    ["--tokens-per-sample", "64", "--batch-size", "4", "--sample-break-mode", "none",
                     "--feature-dim", "8", "--linear-chunk-size", "16", "--base-window", "16"],
                    ["--tokens-per-sample", "64", "--batch-size", "2"]),
}


@pytest.mark.parametrize("model", list(MODELS))
def test_train_and_eval_lm_bf16(model, tiny_corpus, tmp_path):
    task, train_args, eval_args = MODELS[model]
    save = tmp_path / "ckpt"
    log = run_cli("train", tiny_corpus, "--user-dir", USER_DIR, *task, *TINY, *train_args, *WHERE,
                  "--bf16", "--optimizer", "adam", "--lr", "2e-3", "--max-update", "8",
                  "--criterion", "cross_entropy", "--num-workers", "0", "--seed", "1",
                  "--log-format", "simple", "--log-interval", "2", "--save-dir", save,
                  "--no-epoch-checkpoints", "--disable-validation", timeout=300)
    summary = parse_train_summary(log)
    assert summary["updates"] == 8 and math.isfinite(summary["train_loss_base2"]), summary
    if DEVICE == "cuda":
        assert f"name = {torch.cuda.get_device_name(0)}" in log, "fairseq did not train on the GPU"
    common = torch.load(save / "checkpoint_last.pt", map_location="cpu",
                        weights_only=False)["cfg"]["common"]
    assert common["bf16"] and not common["tpu"], (common["bf16"], common["tpu"])
    assert "clearing the --tpu that fairseq 0.12 implies" in log

    out = run_cli("eval_lm", tiny_corpus, "--user-dir", USER_DIR, "--task", task[1],
                  "--path", save / "checkpoint_last.pt", *eval_args, *WHERE, "--bf16",
                  "--gen-subset", "test", "--num-workers", "0", timeout=300)
    ev = parse_eval_lm(out)
    test_tokens = sum(len(line.split()) + 1 for line in (tiny_corpus.parent / "test.txt").open())
    assert ev["eval_symbols"] == test_tokens
    assert 0 < ev["loss_base2"] < math.log2(34) + 1, ev  # 30 words + 4 specials: near uniform or better
