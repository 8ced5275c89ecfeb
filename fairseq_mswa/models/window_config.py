"""Window flags shared by every model of the plugin (config -> schedule).

The flag names are the user interface: ``--attn-pattern``, ``--base-window``,
``--window-variation``, ``--attn-windows``, ``--full-attn-layers``, ``--sink-tokens``,
``--learned-sinks``, ``--attn-backend``, and ``decode_full_attention`` (SWAA full-attention decode, a generation-time
override). Windows are not parameters, so all of them can be changed at evaluation time
with ``--model-overrides`` (``--learned-sinks`` adds parameters: it is a training choice).
"""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ..kernels.common import BACKENDS
from ..schedule import (PATTERNS, VARIATIONS, ScheduleError, WindowSchedule, build_schedule,
                        parse_layer_list)

ATTN_PATTERN_CHOICES = ChoiceEnum(list(PATTERNS))
WINDOW_VARIATION_CHOICES = ChoiceEnum(list(VARIATIONS))
ATTN_BACKEND_CHOICES = ChoiceEnum(list(BACKENDS))


@dataclass
class WindowAttentionConfig(FairseqDataclass):
    attn_pattern: ATTN_PATTERN_CHOICES = field(
        default="mswa",
        metadata={"help": "window pattern: full, swa, mswa-h (heads), mswa-l (layers), mswa (both)"},
    )
    base_window: int = field(
        default=128, metadata={"help": "base window w of the pattern (the paper's w)"}
    )
    window_variation: WINDOW_VARIATION_CHOICES = field(
        default="geometric",
        metadata={
            "help": "geometric (x2 per group), arithmetic (w/2, 3w/4, w, 5w/4) or decreasing "
            "(layer allocation reversed)"
        },
    )
    window_groups: int = field(
        default=4, metadata={"help": "number of head groups and of layer groups (ranges as in Table 1: counts need not be divisible)"}
    )
    attn_windows: str = field(
        default="",
        metadata={
            "help": "explicit windows as JSON: one entry per (windowed) layer, each one window or "
            "a list with one window per head; null = full attention. Overrides --attn-pattern"
        },
    )
    full_attn_layers: str = field(
        default="",
        metadata={"help": "comma-separated (windowed-)layer indices that keep full attention"},
    )
    sink_tokens: int = field(
        default=0, metadata={"help": "number of first tokens every query also attends to"}
    )
    learned_sinks: bool = field(
        default=False,
        metadata={
            "help": "learned attention sinks (gpt-oss): every head of every windowed layer gets a "
            "trained logit, an extra softmax column that carries no value (no key, no cost), "
            "initialised at 0; a checkpoint without them can be fine-tuned with them"
        },
    )
    attn_backend: ATTN_BACKEND_CHOICES = field(
        default="auto",
        metadata={"help": "attention kernel: auto, dense (reference), blocked, flex, flash"},
    )
    decode_full_attention: bool = field(
        default=False,
        metadata={
            "help": "SWAA full-attention decode: when decoding, the prompt (the first incremental "
            "call) is processed with the trained windows and every later token sees every earlier "
            "key (the caches evict nothing; Transformer-XL clamps a windowed head's position term "
            "at its farthest trained distance w - 1). Set at generation time with "
            "--model-overrides \"{'decode_full_attention': True}\""
        },
    )


def schedule_from_config(cfg, num_layers: int, num_heads: int) -> WindowSchedule:
    """Build the schedule of ``num_layers`` windowed layers x ``num_heads`` heads from ``cfg``."""
    return build_schedule(
        num_layers=num_layers,
        num_heads=num_heads,
        base_window=int(cfg.base_window),
        pattern=str(cfg.attn_pattern),
        variation=str(cfg.window_variation),
        groups=int(getattr(cfg, "window_groups", 4)),
        windows=cfg.attn_windows or None,
        full_attn_layers=parse_layer_list(cfg.full_attn_layers),
        sink_tokens=int(cfg.sink_tokens),
    )


def check_backend(cfg, model: str, position_term: bool, training: bool = False) -> None:
    """Refuse at build an ``--attn-backend`` that cannot serve this model on this machine (the
    kernels would fail at the first batch, after fairseq-train has started writing); the
    message names a backend that can. The rules are the kernels' own
    (:mod:`fairseq_mswa.kernels.capabilities`), asked with what the flags say every call of the
    model needs: the device (CUDA when one is visible), the head dimension, distance scores
    (``position_term``), sink tokens, learned sinks, and in training a backward and attention
    dropout. The dtype is not known here: the kernels check it at the call."""
    import torch

    from ..kernels.capabilities import Needs, refusal

    backend = str(cfg.attn_backend)
    if backend not in ("flex", "flash"):
        return
    embed = getattr(cfg, "decoder_embed_dim", None)
    heads = getattr(cfg, "decoder_attention_heads", None)
    head_dim = int(embed) // int(heads) if embed and heads else None
    needs = Needs(
        device="cuda" if torch.cuda.is_available() else "cpu", head_dim=head_dim, grad=training,
        dropout=training and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0,
        pos_scores=position_term, sink_tokens=int(cfg.sink_tokens) > 0,
        learned_sinks=bool(getattr(cfg, "learned_sinks", False)),
    )
    reason = refusal(backend, needs, flag=True)
    if reason is not None:
        what = (f"{model} adds a relative position term to the scores; "
                if position_term and backend == "flash" else "")
        raise ScheduleError(f"--attn-backend {backend}: {what}{reason}")
