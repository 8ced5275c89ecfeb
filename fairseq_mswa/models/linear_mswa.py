"""``linear_mswa``: Taylor linear attention stacked with (multi-scale) window attention (MSWA paper,
Sec. 4.4, 5.1.2, Table 3, Appendix B.2.1).

Architecture: pre-norm RMSNorm blocks, each a token mixer then a SwiGLU feed-forward; the mixer is
``L`` (Taylor linear attention, q/k feature dim 16, RoPE before the feature map) or ``A`` (softmax
attention with RoPE over a window per head). No Transformer-XL cache: each 2048-token sequence stands
alone. The window schedule is built over the ``A`` layers only, "as a whole" (the default ``LAA`` x 4
has 8 local layers -> 4 layer groups of 2 with ``--attn-pattern mswa``), with the shared window flags
of ``WindowAttentionConfig``.

Table 3 presets (``--arch``): ``linear_mswa_transformer`` (all A, full), ``linear_mswa_linear`` (all
L), ``linear_mswa_la_swa`` (LAA, swa 128), ``linear_mswa_la_mswa`` (= ``linear_mswa``: LAA, mswa 128),
``linear_mswa_mswa`` (all A, mswa 128), and ``linear_mswa_tiny`` for tests. The same presets for
fairseq-hydra-train are ``configs/model/linear_mswa*.yaml``.

Decoding: fairseq's ``incremental_state`` holds one cache per layer (``modules/kv_cache.py``: the
per-head rolling ``WindowKVCache`` of a local layer, the recurrent state of a linear one);
``decode_full_attention`` (a config field, settable with ``--model-overrides``) is SWAA's
full-attention decode. Sampling: fairseq-interactive / the hub interface (README, "Sampling").

Cost: ``local_layer_indices`` / ``linear_layer_indices`` give the map from layers to the schedule that
``fairseq_mswa.cost`` uses (a linear layer costs ``cost.linear_attention_layer_cost()``).
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from omegaconf import II
from torch import Tensor, nn

from ..modules.feedforward import SwiGLU
from ..modules.linear_layer import LINEAR_IMPLS, TaylorLinearAttention
from ..modules.local_attention import LocalAttention
from ..modules.norms import RMSNorm
from ..schedule import ScheduleError, WindowSchedule
from .decoding import CachedDecoderMixin
from .hub import HubMixin
from .lm_io import (CheckpointFitMixin, LanguageModelIOConfig, build_input_embedding,
                    build_output, set_default)
from .window_config import check_backend, schedule_from_config

LAYER_KINDS = {"L": "linear attention", "A": "local (window) softmax attention"}
DEFAULT_LAYER_PATTERN = "LAA"


def expand_layer_pattern(pattern: str, num_layers: int) -> str:
    """The per-layer pattern: ``pattern`` itself if it has ``num_layers`` letters, else the unit
    ``pattern`` repeated to ``num_layers`` (``"LAA"``, 12 -> ``"LAALAALAALAA"``)."""
    pattern = (pattern or "").strip()
    bad = sorted(set(pattern) - set(LAYER_KINDS))
    if not pattern or bad:
        raise ScheduleError(
            f"--layer-pattern {pattern!r} must be a non-empty string of 'L' (linear attention) and "
            f"'A' (local attention) letters" + (f"; unknown letters {bad}" if bad else "")
        )
    if num_layers < 1:
        raise ScheduleError(f"--decoder-layers must be >= 1, got {num_layers}")
    if len(pattern) == num_layers:
        return pattern
    if num_layers % len(pattern) == 0:
        return pattern * (num_layers // len(pattern))
    raise ScheduleError(
        f"--layer-pattern {pattern!r} has {len(pattern)} letters, which neither equals nor divides "
        f"--decoder-layers {num_layers}: give one letter per layer or a unit that repeats evenly"
    )


def local_layer_indices(layer_pattern: str) -> List[int]:
    """Indices of the ``A`` layers; the i-th of them takes row i of the window schedule."""
    return [i for i, c in enumerate(layer_pattern) if c == "A"]


def linear_layer_indices(layer_pattern: str) -> List[int]:
    """Indices of the ``L`` (linear attention) layers."""
    return [i for i, c in enumerate(layer_pattern) if c == "L"]


def hybrid_schedule(cfg, layer_pattern: str, num_heads: int) -> Optional[WindowSchedule]:
    """The window schedule over the local layers of ``layer_pattern`` (None when there are none)."""
    n_local = len(local_layer_indices(layer_pattern))
    return schedule_from_config(cfg, n_local, num_heads) if n_local else None


@dataclass
class LinearMSWAConfig(LanguageModelIOConfig):
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings and residual branches"})
    attention_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the softmax attention probabilities"}
    )
    activation_dropout: float = field(
        default=0.0, metadata={"help": "dropout inside the SwiGLU feed-forward"}
    )
    decoder_embed_dim: int = field(default=512, metadata={"help": "model dimension"})
    decoder_ffn_embed_dim: int = field(
        default=1536, metadata={"help": "SwiGLU hidden dimension (Llama rule for 512: 1536)"}
    )
    decoder_layers: int = field(default=12, metadata={"help": "number of layers"})
    decoder_attention_heads: int = field(
        default=8, metadata={"help": "heads per layer (head dim = model dim / heads)"}
    )
    layer_pattern: str = field(
        default=DEFAULT_LAYER_PATTERN,
        metadata={
            "help": "layer kinds, L = linear attention, A = local attention: one letter per layer, "
            "or a unit repeated to --decoder-layers (LAA = the paper's 1 linear + 2 local per stack)"
        },
    )
    feature_dim: int = field(
        default=16, metadata={"help": "per-head q/k dimension of linear attention (Taylor map input)"}
    )
    linear_chunk_size: int = field(
        default=64, metadata={"help": "chunk size of the chunk-parallel linear attention"}
    )
    linear_impl: ChoiceEnum(list(LINEAR_IMPLS)) = field(
        default="torch",
        metadata={
            "help": "linear attention kernel: torch (pure PyTorch, chunked), fla (fla-core Triton "
            "Based kernel, CUDA only), auto (fla when available on CUDA)"
        },
    )
    rope_base: float = field(default=10000.0, metadata={"help": "RoPE base (theta)"})
    max_target_positions: Optional[int] = II("task.tokens_per_sample")


class HybridBlock(nn.Module):
    """Pre-norm block: x + mixer(norm(x)), then x + SwiGLU(norm(x)); the mixer is L or A, both with
    the token-mixer interface ``forward(x, cache=None, offset=0) -> (out, cache)``."""

    def __init__(self, kind: str, cfg, windows=None, sink_tokens: int = 0):
        super().__init__()
        embed_dim, heads = cfg.decoder_embed_dim, cfg.decoder_attention_heads
        self.kind = kind
        self.mixer_norm = RMSNorm(embed_dim)
        if kind == "L":
            self.mixer = TaylorLinearAttention(
                embed_dim, heads, feature_dim=cfg.feature_dim, chunk_size=cfg.linear_chunk_size,
                impl=str(cfg.linear_impl), rope_base=cfg.rope_base,
            )
        else:
            self.mixer = LocalAttention(
                embed_dim, heads, windows, sink_tokens=sink_tokens,
                attention_dropout=cfg.attention_dropout, backend=str(cfg.attn_backend),
                rope_base=cfg.rope_base, learned_sinks=bool(getattr(cfg, "learned_sinks", False)),
            )
        self.ffn_norm = RMSNorm(embed_dim)
        self.ffn = SwiGLU(embed_dim, cfg.decoder_ffn_embed_dim, cfg.activation_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache=None, offset: int = 0):
        """x: (B, L, E) at positions ``offset ..``; ``cache``: this layer's decoding cache (updated
        in place). Returns (x, cache)."""
        h, cache = self.mixer(self.mixer_norm(x), cache=cache, offset=offset)
        x = x + self.dropout(h)
        return x + self.dropout(self.ffn(self.ffn_norm(x))), cache


class LinearMSWADecoder(CachedDecoderMixin, FairseqIncrementalDecoder):
    """Token embedding -> hybrid blocks -> RMSNorm -> tied output (or adaptive softmax).

    Incremental decoding (fairseq's ``incremental_state``): one cache per layer (a per-head rolling
    ``WindowKVCache`` for local layers, the recurrent state for linear ones); each call runs only
    the tokens after the cached ones, ``reorder_incremental_state`` permutes the caches for beams.
    """

    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(dictionary)
        self.cfg = cfg
        self.layer_pattern = expand_layer_pattern(cfg.layer_pattern, cfg.decoder_layers)
        self.schedule = hybrid_schedule(cfg, self.layer_pattern, cfg.decoder_attention_heads)
        sinks = self.schedule.sink_tokens if self.schedule is not None else 0
        embed_dim = cfg.decoder_embed_dim
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        local = {layer: row for row, layer in enumerate(local_layer_indices(self.layer_pattern))}
        self.layers = nn.ModuleList(
            HybridBlock(kind, cfg, self.schedule.layer(local[i]) if kind == "A" else None, sinks)
            for i, kind in enumerate(self.layer_pattern)
        )
        self.final_norm = RMSNorm(embed_dim)
        self.adaptive_softmax, self.output_projection = build_output(cfg, dictionary, embed_tokens)

    def forward(
        self,
        prev_output_tokens: Tensor,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        src_lengths: Optional[Tensor] = None,
        **unused,
    ):
        """prev_output_tokens (B, T) -> (logits (B, T, V) or features with adaptive softmax, extra).

        With ``incremental_state`` only the tokens after the cached ones are run (decoding)."""
        x, extra = self.extract_features(prev_output_tokens, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def init_caches(self) -> List:
        """Empty decoding caches, one per layer (``decode_full_attention``: evict nothing)."""
        keep_all = bool(getattr(self.cfg, "decode_full_attention", False))
        return [layer.mixer.init_cache(keep_all=keep_all) for layer in self.layers]

    def extract_features(self, prev_output_tokens: Tensor, incremental_state=None, **unused):
        caches = None
        offset = 0
        if incremental_state is not None:
            caches, offset, first_call = self.begin_decode(prev_output_tokens, incremental_state)
            prev_output_tokens = prev_output_tokens[:, offset:]
        x = self.dropout(self.embed_scale * self.embed_tokens(prev_output_tokens))
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, cache=None if caches is None else caches[i], offset=offset)
        x = self.final_norm(x)
        if caches is not None:
            self.end_decode(incremental_state, caches, first_call)
        return x, {"attn": [None], "inner_states": [x]}

    def output_layer(self, features: Tensor) -> Tensor:
        if self.adaptive_softmax is not None:
            return features
        return self.output_projection(features)

    def max_positions(self):
        """RoPE has no position table: decoding is not limited by the trained length."""
        return self.cfg.max_target_positions or int(1e6)


@register_model("linear_mswa", dataclass=LinearMSWAConfig)
class LinearMSWALanguageModel(HubMixin, CheckpointFitMixin, FairseqLanguageModel):
    """Hybrid linear attention + (M)SWA language model (the MSWA paper's Table 3)."""

    @classmethod
    def build_model(cls, cfg, task):
        check_backend(cfg, "linear_mswa", position_term=False)
        embed_tokens = build_input_embedding(cfg, task.source_dictionary)
        return cls(LinearMSWADecoder(cfg, task.target_dictionary, embed_tokens))

    @property
    def layer_pattern(self) -> str:
        return self.decoder.layer_pattern

    @property
    def schedule(self) -> Optional[WindowSchedule]:
        return self.decoder.schedule


# --- presets (fairseq-train --arch); command-line flags still win ------------------------------

def _table3(args, layer_pattern, attn_pattern, base_window=128):
    set_default(args, "layer_pattern", layer_pattern)
    set_default(args, "attn_pattern", attn_pattern)
    set_default(args, "base_window", base_window)


@register_model_architecture("linear_mswa", "linear_mswa_la_mswa")
def linear_mswa_la_mswa(args):
    """Table 3 "Linear Attention + MSWA" (the default architecture)."""
    _table3(args, "LAA", "mswa")


@register_model_architecture("linear_mswa", "linear_mswa_la_swa")
def linear_mswa_la_swa(args):
    """Table 3 "Linear Attention + SWA"."""
    _table3(args, "LAA", "swa")


@register_model_architecture("linear_mswa", "linear_mswa_transformer")
def linear_mswa_transformer(args):
    """Table 3 "Transformer": every layer full softmax attention with RoPE."""
    _table3(args, "A", "full")


@register_model_architecture("linear_mswa", "linear_mswa_linear")
def linear_mswa_linear(args):
    """Table 3 "Linear Attention": every layer linear attention."""
    _table3(args, "L", "full")


@register_model_architecture("linear_mswa", "linear_mswa_mswa")
def linear_mswa_mswa(args):
    """Table 3 "MSWA": every layer local attention, mswa pattern."""
    _table3(args, "A", "mswa")


@register_model_architecture("linear_mswa", "linear_mswa_tiny")
def linear_mswa_tiny(args):
    """Tiny LAA x 2 hybrid for tests: 6 layers, dim 32, 4 heads, feature dim 8, windows 1..32."""
    set_default(args, "decoder_embed_dim", 32)
    set_default(args, "decoder_ffn_embed_dim", 64)
    set_default(args, "decoder_layers", 6)
    set_default(args, "decoder_attention_heads", 4)
    set_default(args, "feature_dim", 8)
    set_default(args, "linear_chunk_size", 16)
    set_default(args, "dropout", 0.0)
    _table3(args, "LAA", "mswa", base_window=16)
