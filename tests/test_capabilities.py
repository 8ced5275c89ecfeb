"""kernels/capabilities.py: the one home of what each backend serves; the model build and the
dispatcher ask it, each refusal names the backend that serves instead; the pass plan per device."""

import json

import pytest
import torch
from conftest import tiny_xl_model

from fairseq_mswa.kernels import capabilities as caps
from fairseq_mswa.kernels import flex
from fairseq_mswa.schedule import ScheduleError

CUDA = caps.Needs(device="cuda", dtype=torch.bfloat16, head_dim=64, pos_scores=True)


@pytest.mark.skipif(bool(flex.IMPORT_ERROR), reason=str(flex.IMPORT_ERROR))
def test_flex_on_cuda_needs_head_dim_16():
    assert caps.refusal("flex", CUDA._replace(head_dim=16)) is None
    reason = caps.refusal("flex", CUDA._replace(head_dim=8))
    assert "head_dim >= 16 (got 8)" in reason and "Use backend='blocked'" in reason
    assert caps.select_backend(CUDA._replace(head_dim=8)) == "blocked"
    assert caps.select_backend(CUDA) == "flex"  # pos_scores: no flash


@pytest.mark.skipif(bool(flex.IMPORT_ERROR), reason=str(flex.IMPORT_ERROR))
def test_learned_sinks_with_compiled_flex_on_cpu_are_refused_eager_served():
    cpu = caps.Needs(device="cpu", head_dim=8, learned_sinks=True)
    assert "log-sum-exp" in caps.refusal("flex", cpu)
    assert caps.refusal("flex", cpu, compiled=False) is None
    assert "trained on blocked" in caps.refusal("flex", CUDA._replace(learned_sinks=True, grad=True))


def test_every_refusal_names_a_backend_that_serves():
    cases = [caps.Needs(device="cpu", grad=True), caps.Needs(device="cpu", dropout=True),
             CUDA._replace(dropout=True), CUDA._replace(sink_tokens=True), CUDA,
             caps.Needs(device="cpu", dtype=torch.float32, head_dim=300)]
    for needs in cases:
        for backend in ("flex", "flash"):
            reason = caps.refusal(backend, needs)
            if reason is None:
                continue
            other = caps.instead(needs)
            assert other != backend and caps.unsupported_reason(other, needs) is None
            assert f"Use backend={other!r}" in reason
            assert f"use --attn-backend {other}" in caps.refusal(backend, needs, flag=True)


def test_model_build_asks_the_same_rules(monkeypatch):
    """transformer_xl_mswa_tiny (head dim 8) with flex where CUDA is visible: refused at build,
    naming blocked (the rule kernels/capabilities holds; no GPU needed to check the wiring)."""
    if flex.IMPORT_ERROR:
        pytest.skip(flex.IMPORT_ERROR)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ScheduleError, match=r"--attn-backend flex: FlexAttention on CUDA needs "
                                            r"head_dim >= 16 \(got 8\): use --attn-backend blocked"):
        tiny_xl_model(attn_backend="flex")
    tiny_xl_model(attn_backend="flex", decoder_embed_dim=64)  # head dim 16: served


def test_pass_plan_applies_to_the_cpu_layouts_only():
    assert caps.plans_passes("auto", "cpu") and caps.plans_passes("blocked", "cpu")
    assert not caps.plans_passes("flex", "cpu") and not caps.plans_passes("auto", "cuda")
    attn = tiny_xl_model(decoder_embed_dim=64, decoder_attention_heads=8,
                         attn_windows=json.dumps([[2, 2, 4, 4, 8, 8, 16, 16]] * 4)).decoder.layers[0].attn
    n = len(attn.groups)
    assert n == 4
    assert attn._partition(1, 512, 15, "cuda") == (n,)
    attn.backend = "flex"
    assert attn._partition(1, 512, 15, "cpu") == (n,)
    attn.backend = "auto"
    from fairseq_mswa.kernels.plan import best_partition

    assert attn._partition(1, 512, 15, "cpu") == best_partition(attn.windows, 1, 512, 15, 8)


def test_install_probes_run_once_per_process(monkeypatch):
    """The flash / flex import probes are asked on every CUDA ``auto`` call: after the first
    answer no import is tried again (a failed import re-searches sys.path each time)."""
    import builtins

    caps.flash_import_error(), caps.flex_import_error()  # answered, whatever is installed
    tried = []
    real_import = builtins.__import__

    def spy(name, *args, **kwargs):
        if name.startswith(("flash_attn", "torch.nn.attention.flex_attention")):
            tried.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    first = (caps.flash_import_error(), caps.flex_import_error(), caps.flash_import())
    for _ in range(3):
        assert (caps.flash_import_error(), caps.flex_import_error(), caps.flash_import()) == first
    assert tried == []
