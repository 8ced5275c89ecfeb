"""The ``linear_mswa`` hybrid model: layer patterns, schedule/cost agreement, causality, decoding,
presets and YAML configs, and fairseq-train + fairseq-eval-lm end to end for every Table 3 preset."""

from pathlib import Path

import pytest
import torch
from conftest import LINEAR_WORDS, TINY_LINEAR as TINY, FakeTask, run_cli, tiny_linear_model
from omegaconf import OmegaConf

import fairseq_mswa
from fairseq.models import ARCH_MODEL_REGISTRY
from studies.arch import resolve_arch_config
from fairseq_mswa.cost import hybrid_cost, table_rows
from fairseq_mswa.models.linear_mswa import (
    LinearMSWAConfig,
    LinearMSWALanguageModel,
    expand_layer_pattern,
    hybrid_schedule,
    linear_layer_indices,
    local_layer_indices,
)
from studies.run_utils import parse_eval_lm
from fairseq_mswa.schedule import ScheduleError

REPO = Path(__file__).resolve().parents[1]
USER_DIR = Path(fairseq_mswa.__file__).resolve().parent
TABLE3_ARCHS = {
    "Transformer": "linear_mswa_transformer",
    "Linear Attention": "linear_mswa_linear",
    "Linear Attention + SWA": "linear_mswa_la_swa",
    "Linear Attention + MSWA": "linear_mswa_la_mswa",
    "MSWA": "linear_mswa_mswa",
}
ALL_ARCHS = ["linear_mswa", *TABLE3_ARCHS.values(), "linear_mswa_tiny"]


def preset_config(arch: str, **overrides):
    """The config fairseq-train builds for ``--arch arch`` plus command-line ``overrides``."""
    return resolve_arch_config(arch, overrides)


tiny_model = tiny_linear_model
V = len(FakeTask(LINEAR_WORDS).source_dictionary)  # 40 words + 4 special symbols


# --- layer pattern and schedule ---------------------------------------------------------------

def test_layer_pattern_expansion_and_indices():
    assert expand_layer_pattern("LAA", 12) == "LAA" * 4
    assert expand_layer_pattern("LAALAA", 6) == "LAALAA"
    assert expand_layer_pattern("A", 3) == "AAA"
    p = expand_layer_pattern("LAA", 12)
    assert local_layer_indices(p) == [1, 2, 4, 5, 7, 8, 10, 11]
    assert linear_layer_indices(p) == [0, 3, 6, 9]


@pytest.mark.parametrize("pattern,layers,match", [
    ("LAAL", 6, "neither equals nor divides"),
    ("LAX", 12, "unknown letters"),
    ("laa", 12, "unknown letters"),
    ("", 12, "non-empty"),
])
def test_bad_layer_pattern_errors(pattern, layers, match):
    with pytest.raises(ScheduleError, match=match):
        expand_layer_pattern(pattern, layers)
    with pytest.raises(ScheduleError, match=match):
        tiny_model(layer_pattern=pattern, decoder_layers=layers, **TINY)


def test_default_schedule_is_over_the_local_layers_as_a_whole():
    cfg = LinearMSWAConfig()  # the paper's model: LAA x 4, mswa, base 128
    pattern = expand_layer_pattern(cfg.layer_pattern, cfg.decoder_layers)
    sched = hybrid_schedule(cfg, pattern, cfg.decoder_attention_heads)
    assert sched.num_layers == 8 and sched.num_heads == 8
    # 4 layer groups of 2 local layers: bases 32, 64, 128, 256; heads base/4 .. 2 base
    assert sched.layer(0) == sched.layer(1) == (8, 8, 16, 16, 32, 32, 64, 64)
    assert sched.layer(6) == sched.layer(7) == (64, 64, 128, 128, 256, 256, 512, 512)


@pytest.mark.parametrize("row", table_rows(3), ids=lambda r: r.row)
def test_presets_agree_with_the_cost_model(row):
    """Each Table 3 preset has the layers and windows that fairseq_mswa.cost charges for."""
    cfg = preset_config(TABLE3_ARCHS[row.row])
    pattern = expand_layer_pattern(cfg.layer_pattern, cfg.decoder_layers)
    assert pattern == row.layer_pattern
    sched = hybrid_schedule(cfg, pattern, cfg.decoder_attention_heads)
    assert hybrid_cost(pattern, sched, seq_len=2048) == pytest.approx(row.cost)
    assert (cfg.decoder_embed_dim, cfg.decoder_attention_heads, cfg.feature_dim) == (512, 8, 16)


def test_command_line_flags_win_over_presets():
    cfg = preset_config("linear_mswa_la_swa", base_window=64, layer_pattern="AAL")
    assert (cfg.base_window, cfg.layer_pattern, cfg.attn_pattern) == (64, "AAL", "swa")


def test_model_builds_the_schedule_windows():
    m = tiny_model("linear_mswa_tiny")
    assert m.layer_pattern == "LAALAA"
    local = [layer.mixer for layer in m.decoder.layers if layer.kind == "A"]
    assert [mix.windows for mix in local] == list(m.schedule.windows)
    # sink tokens come from the schedule (one source)
    m = tiny_model("linear_mswa_tiny", sink_tokens=3)
    assert m.schedule.sink_tokens == 3
    assert {layer.mixer.sink_tokens for layer in m.decoder.layers if layer.kind == "A"} == {3}
    assert m.schedule.windows[0] == (1, 2, 4, 8) and m.schedule.windows[-1] == (8, 16, 32, 64)
    kinds = [type(layer.mixer).__name__ for layer in m.decoder.layers]
    assert kinds == ["TaylorLinearAttention", "LocalAttention", "LocalAttention"] * 2
    # all-linear model: no schedule at all
    assert tiny_model("linear_mswa_linear", decoder_layers=3, **TINY).schedule is None


# --- model behaviour --------------------------------------------------------------------------

TINY_LAYERS = {"linear_mswa_transformer": 4, "linear_mswa_linear": 3, "linear_mswa_la_swa": 6,
               "linear_mswa_la_mswa": 6, "linear_mswa_mswa": 4}


@pytest.mark.parametrize("arch", list(TABLE3_ARCHS.values()))
def test_model_is_causal(arch):
    m = tiny_model(arch, decoder_layers=TINY_LAYERS[arch], **TINY)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(4, 40, (2, 50), generator=g)
    tok2 = tok.clone()
    tok2[:, 30:] = torch.randint(4, 40, (2, 20), generator=g)
    with torch.no_grad():
        a = m.get_normalized_probs(m(tok), log_probs=True)
        b = m.get_normalized_probs(m(tok2), log_probs=True)
    assert a.shape == (2, 50, V)
    torch.testing.assert_close(a[:, :30], b[:, :30], rtol=1e-5, atol=1e-5)
    assert (a[:, 30:] - b[:, 30:]).abs().max() > 1e-4


def test_model_is_causal_with_blocked_kernel_on_long_input():
    m = tiny_model("linear_mswa_la_mswa", decoder_layers=6, attn_backend="blocked", **TINY)
    tok = torch.randint(4, 40, (1, 300), generator=torch.Generator().manual_seed(3))
    tok2 = tok.clone()
    tok2[:, 200:] = 5
    with torch.no_grad():
        a, b = m(tok)[0], m(tok2)[0]
        ref = tiny_model("linear_mswa_la_mswa", decoder_layers=6, attn_backend="dense", **TINY)(tok)[0]
    torch.testing.assert_close(a[:, :200], b[:, :200], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,extra", [
    ("linear_mswa_tiny", {}),
    ("linear_mswa_la_mswa", dict(TINY, decoder_layers=6, attn_backend="blocked")),
])
def test_incremental_decoding_matches_full_forward(arch, extra):
    """float32 smoke test of the presets and the blocked kernel; the exact float64 invariants for
    every pattern are in tests/test_generation.py."""
    m = tiny_model(arch, **extra)
    tok = torch.randint(4, 40, (3, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(tok)[0].log_softmax(-1)
        state, steps = {}, []
        for t in range(tok.shape[1]):
            steps.append(m.decoder(tok[:, : t + 1], incremental_state=state)[0])
        torch.testing.assert_close(torch.cat(steps, 1).log_softmax(-1), full, rtol=1e-4, atol=1e-4)


def test_training_step_and_gradients_reach_every_layer():
    m = tiny_model("linear_mswa_tiny").train()
    tok = torch.randint(4, 40, (2, 33))
    logits = m(tok[:, :-1])[0]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tok[:, 1:].reshape(-1))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.decoder.output_projection.weight is m.decoder.embed_tokens.weight  # tied


def test_adaptive_softmax_option():
    m = tiny_model("linear_mswa_tiny", adaptive_softmax_cutoff="10,20")
    tok = torch.randint(4, 40, (2, 12))
    out = m(tok)
    assert m.decoder.output_projection is None and out[0].shape == (2, 12, 32)  # features
    lp = m.get_normalized_probs(out, log_probs=True)
    assert lp.shape == (2, 12, V)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 12), rtol=1e-4, atol=1e-4)
    # with the targets (how the criterion and eval-lm call it) the target entries are the same
    lp_t = m.get_normalized_probs(out, log_probs=True, sample={"target": tok})
    torch.testing.assert_close(lp_t.gather(-1, tok[..., None]), lp.gather(-1, tok[..., None]))


# --- presets and YAML configs -----------------------------------------------------------------

def test_all_presets_registered():
    for arch in ALL_ARCHS:
        assert ARCH_MODEL_REGISTRY[arch] is LinearMSWALanguageModel


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_yaml_config_matches_preset(arch):
    path = REPO / "configs" / "model" / f"{arch}.yaml"
    assert path.read_text().startswith("# @package _group_")
    yaml_cfg = OmegaConf.load(path)
    assert yaml_cfg.pop("_name") == "linear_mswa"
    # every key is a field of the model's dataclass, with a value of its type
    merged = OmegaConf.merge(OmegaConf.structured(LinearMSWAConfig), yaml_cfg)
    preset = preset_config(arch)
    for key in yaml_cfg:
        assert merged[key] == getattr(preset, key), key
    defaults = LinearMSWAConfig()
    for key in ("layer_pattern", "attn_pattern", "base_window", "decoder_layers",
                "decoder_embed_dim", "feature_dim", "dropout"):
        if getattr(preset, key) != getattr(defaults, key):
            assert key in yaml_cfg, f"{path.name} lacks {key}"


# --- fairseq-train + fairseq-eval-lm end to end -----------------------------------------------

E2E_TINY = ["--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
            "--decoder-attention-heads", "4", "--feature-dim", "8", "--linear-chunk-size", "16",
            "--base-window", "16", "--dropout", "0.0"]


def _train_and_eval(data, save, arch, extra, updates):
    common = [str(data), "--user-dir", str(USER_DIR), "--task", "language_modeling",
              "--tokens-per-sample", "64", "--cpu", "--num-workers", "0"]
    run_cli("train", *common + [
        "--arch", arch, "--sample-break-mode", "none", "--criterion", "cross_entropy",
        "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "8", "--max-update", str(updates),
        "--save-dir", str(save), "--no-epoch-checkpoints", "--log-format", "simple",
        "--log-interval", "1", "--seed", "1", "--disable-validation",
    ] + E2E_TINY + extra, timeout=180)
    out = run_cli("eval_lm", *common + [
        "--path", str(save / "checkpoint_last.pt"), "--gen-subset", "test", "--batch-size", "4",
        "--log-format", "simple",
    ])
    ev = parse_eval_lm(out)
    return ev["eval_symbols"], ev["loss_base2"], ev["perplexity"]


@pytest.mark.parametrize("arch", [
    "linear_mswa_transformer", "linear_mswa_linear", "linear_mswa_la_swa", "linear_mswa_mswa",
])
def test_fairseq_train_and_eval_lm_table3_presets(tiny_corpus, tmp_path, arch):
    """Every Table 3 row (tiny dims via flags); la_mswa runs in the learning test below."""
    tokens, loss, ppl = _train_and_eval(
        tiny_corpus, tmp_path / "ckpt", arch, ["--decoder-layers", str(TINY_LAYERS[arch])], updates=2
    )
    test_tokens = sum(len(line.split()) + 1 for line in (tiny_corpus.parent / "test.txt").open())
    assert tokens == test_tokens
    assert 0 < loss < 20 and ppl == pytest.approx(2 ** loss, rel=1e-2)
    ckpt = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    model_cfg = ckpt["cfg"]["model"]
    assert model_cfg["_name"] == arch
    preset = preset_config(arch)
    assert (model_cfg["layer_pattern"], model_cfg["attn_pattern"]) == (
        preset.layer_pattern, preset.attn_pattern)


def test_fairseq_train_learns_la_mswa(tiny_corpus, tmp_path):
    """Linear Attention + MSWA (the paper's hybrid) learns the counting corpus: test perplexity far
    below the 30-word uniform rate after 40 updates."""
    _, _, ppl = _train_and_eval(
        tiny_corpus, tmp_path / "ckpt", "linear_mswa_la_mswa", ["--decoder-layers", "6"], updates=40
    )
    assert ppl < 8, ppl


def test_fairseq_train_adaptive_input_and_softmax(tiny_corpus, tmp_path):
    """The Wikitext-103 recipe of configs/tables/setup.yaml: tied adaptive input + adaptive softmax
    with --criterion adaptive_loss (legacy_ddp), then fairseq-eval-lm."""
    adaptive = ["--adaptive-input", "--adaptive-input-cutoff", "10,20", "--adaptive-softmax-cutoff",
                "10,20", "--adaptive-softmax-dropout", "0.2", "--tie-adaptive-weights",
                "--tie-adaptive-proj", "--ddp-backend", "legacy_ddp", "--criterion", "adaptive_loss",
                "--decoder-layers", "6"]
    tokens, loss, ppl = _train_and_eval(tiny_corpus, tmp_path / "ckpt", "linear_mswa_la_mswa",
                                        adaptive, updates=2)
    assert tokens > 0 and 0 < loss < 20
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)["model"]
    assert any(k.startswith("decoder.adaptive_softmax.") for k in state)
    assert any(k.startswith("decoder.embed_tokens.embeddings.") for k in state)  # AdaptiveInput
