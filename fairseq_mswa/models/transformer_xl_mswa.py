"""``transformer_xl_mswa``: Transformer-XL (memory + relative positions) with a window per head.

The backbone of the MSWA paper's Tables 2, 5 and 6 (Appendix B.2.1): 12 layers, 8 heads, model dim
512, head dim 64, Transformer-XL segment-level memory and relative position encodings, every
layer's attention windowed by the schedule (``fairseq_mswa.schedule``).

Memory. Layer ``i`` keeps the last ``mem_len_i`` hidden states that entered it (detached, not in
the state dict). By default ``mem_len_i = max window of layer i - 1``: exactly what the first query
of a segment needs, so the KV cache *is* the window (the paper's memory argument) and XL caching
gives exact sliding-window attention over the whole stream, whatever the segment length. A layer
with a full-attention head keeps ``--mem-len`` states (default: ``--tokens-per-sample``), as in
Transformer-XL. ``--mem-len`` smaller than what a window needs is an error.

Sink tokens (SWAA "keep first"): the first K hidden states of each stream are kept per layer and
placed right before the memory, visible to every query. A sink outside a head's window gets the
position term of the window's farthest distance (distances are clamped, as Transformer-XL's
``clamp_len`` does), so sinks keep the stream equivalence: results do not depend on the segment
length.

Streams and memory are driven by the ``mswa_lm`` task (``net_input["stream"]``); without it (e.g.
the ``language_modeling`` task) each sample is scored on its own, with no memory.

Generation (fairseq's ``incremental_state``; ``SequenceGenerator``, fairseq-interactive, the hub's
``sample``): every layer keeps an ``XLDecodeCache`` (``modules/xl_attention.py``), a per-head rolling
cache of position-free keys/values (head h: its last ``w_h`` plus the sinks; full heads everything),
so the bytes held are the sum of the windows, not the stream memory's layer maximum; the position
term comes from the distances as in training. Decoding equals the parallel forward of the whole
sequence (exact sliding-window attention) and the stream path with memory. Full heads see the whole
context when decoding (exact full attention, as a single segment does; the stream path limits them
to ``mem_len`` states): relative sinusoids have no position table, so no context is too long for
them. ``decode_full_attention`` (``--model-overrides``) is SWAA's full-attention decode, as for
``linear_mswa``; a windowed head's position term stays clamped at its distance ``w - 1``.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from omegaconf import II
from torch import Tensor, nn

from ..cost.tiles import GPU_TILES, PAPER_TOKENS_PER_STEP, choose_tiles
from ..kernels.flex import check_block_size
from ..modules.xl_attention import RelMultiheadWindowAttention, XLDecodeCache
from ..schedule import ScheduleError, WindowSchedule
from ..stream import StreamMemory
from .decoding import CachedDecoderMixin
from .hub import HubMixin
from .lm_io import (CheckpointFitMixin, LanguageModelIOConfig, build_input_embedding,
                    build_output, set_default)
from .window_config import check_backend, schedule_from_config


@dataclass
class TransformerXLMSWAConfig(LanguageModelIOConfig):
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN ReLU"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "model dimension"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "feed-forward dimension"})
    decoder_layers: int = field(default=12, metadata={"help": "number of layers"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "heads per layer"})
    mem_len: int = field(
        default=-1,
        metadata={
            "help": "memory length of every layer; -1 = what each layer's largest window needs "
            "(max window - 1), and --tokens-per-sample for layers with a full-attention head"
        },
    )
    flex_tiles: str = field(
        default="default",
        metadata={
            "help": "FlexAttention's tiles (query block x key block): 'default' (torch's 128x128 "
            "for every layer), 'auto' (per layer the tiles of fairseq_mswa.cost.tiles."
            "choose_tiles: smaller tiles where windows are small; its tile rates are "
            "assumptions until scripts/gpu_check.sh measures them), or QxK such as 64x32 "
            "(powers of two >= 16) for every layer"
        },
    )
    tokens_per_sample: int = II("task.tokens_per_sample")
    max_target_positions: Optional[int] = II("task.tokens_per_sample")


def memory_lengths(schedule: WindowSchedule, mem_len: int, tokens_per_sample: int) -> List[int]:
    """Memory length of every layer (see the module docstring); raises when too short."""
    out = []
    for i in range(schedule.num_layers):
        w = schedule.max_window(i)
        need = (tokens_per_sample if mem_len < 0 else mem_len) if w is None else w - 1
        if mem_len >= 0:
            if w is not None and mem_len < need:
                raise ScheduleError(
                    f"--mem-len {mem_len} is shorter than layer {i} needs for its window {w} "
                    f"({need}): use --mem-len >= {need}, or -1 for what each window needs"
                )
            need = mem_len
        out.append(need)
    return out


def parse_tiles(spec: str) -> Optional[Tuple[int, int]]:
    """``--flex-tiles``: 'default' -> None (torch's 128 x 128), 'QxK' -> (Q, K); 'auto' is the
    caller's. Raises ScheduleError naming the fix."""
    if spec == "default":
        return None
    try:
        q, k = (int(x) for x in spec.lower().split("x"))
        return check_block_size((q, k))
    except ValueError:
        raise ScheduleError(f"--flex-tiles {spec!r}: use default, auto, or QxK with powers of two "
                            ">= 16 such as 64x32") from None


def set_flex_tiles(attn: RelMultiheadWindowAttention, spec: str, segment: int, memory: int,
                   backend: str) -> None:
    """Give one XL layer its FlexAttention tiles (``--flex-tiles``). ``auto``: the passes and
    tiles of :func:`fairseq_mswa.cost.tiles.choose_tiles` for the layer's windows at this segment
    and memory (a step of the paper's 16,384 tokens); a plan of one pass sets that pass's tile,
    a plan of several passes also sets the layer's partition where flex is named explicitly
    (``--attn-backend flex``; under ``auto`` the device's own layout stays and the first pass's
    tile is used)."""
    if spec != "auto":
        attn.set_block_size(parse_tiles(spec))
        return
    windows = [w for w, heads in attn.groups for _ in heads]  # the layer's group order
    plan = choose_tiles(windows, segment, memory, GPU_TILES, head_dim=attn.head_dim,
                        batch=max(1, PAPER_TOKENS_PER_STEP // segment))
    if len(plan.passes) > 1 and backend == "flex":
        attn.strategy = tuple(plan.partition)
        attn.set_block_size([tuple(t) for t in plan.tiles])
    else:
        attn.set_block_size(tuple(plan.tiles[0]))


class XLLayer(nn.Module):
    """Pre-norm block: x + attn(LN(x), memory) then x + FFN(LN(x))."""

    def __init__(self, cfg, windows):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = RelMultiheadWindowAttention(
            dim, cfg.decoder_attention_heads, windows, cfg.attention_dropout, str(cfg.attn_backend),
            learned_sinks=bool(getattr(cfg, "learned_sinks", False)),
        )
        self.ffn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_embed_dim, dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_start: int, sinks: Tensor,
                num_sinks: int) -> Tensor:
        """x (B, L, E); memory (B, M, E): the states that entered this layer at stream positions
        [memory_start, memory_start + M), right before x; sinks (B, S, E): those at [0, S).
        Returns (B, L, E)."""
        h = self.attn_norm(x)
        mem = self.attn_norm(memory) if memory.shape[1] else None
        snk = self.attn_norm(sinks) if sinks.shape[1] else None
        x = x + self.dropout(self.attn(h, mem, memory_start, snk, num_sinks))
        return self._ffn(x)

    def _ffn(self, x: Tensor) -> Tensor:
        h = self.fc2(self.activation_dropout(torch.relu(self.fc1(self.ffn_norm(x)))))
        return x + self.dropout(h)

    def decode(self, x: Tensor, cache: XLDecodeCache) -> Tensor:
        """Incremental decoding: x (B, L, E) at positions ``cache.length ..``. Returns (B, L, E)."""
        x = x + self.dropout(self.attn.decode(self.attn_norm(x), cache))
        return self._ffn(x)


class TransformerXLMSWADecoder(CachedDecoderMixin, FairseqIncrementalDecoder):
    """Embedding -> pre-norm XL layers -> LayerNorm -> output. Two ways to run: the stream path
    (``stream``: segment-level memory, training and fairseq-eval-lm) and incremental decoding
    (``incremental_state``: per-head rolling caches, generation)."""

    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(dictionary)
        self.cfg = cfg
        self.schedule = schedule_from_config(cfg, cfg.decoder_layers, cfg.decoder_attention_heads)
        self.mem_lens = memory_lengths(self.schedule, cfg.mem_len, cfg.tokens_per_sample)
        # per stream set (split): memories between batches; detached, not in the state dict
        # (the mswa_lm task saves the training streams' memories as checkpoint extra state)
        self.stream_memories = {}
        dim = cfg.decoder_embed_dim
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            XLLayer(cfg, self.schedule.layer(i)) for i in range(cfg.decoder_layers)
        )
        for layer, mem_len in zip(self.layers, self.mem_lens):
            set_flex_tiles(layer.attn, str(getattr(cfg, "flex_tiles", "default")),
                           cfg.tokens_per_sample, mem_len, str(cfg.attn_backend))
        self.final_norm = nn.LayerNorm(dim)
        self.adaptive_softmax, self.output_projection = build_output(cfg, dictionary, embed_tokens)

    def forward(self, src_tokens: Tensor, stream=None, features_only: bool = False,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None, **unused):
        """src_tokens (B, L); ``stream``: the task's ``StreamState`` (memory in and out), or None.
        With ``incremental_state`` (generation) only the tokens after the cached ones are run.
        Returns (logits (B, L, V) or features with adaptive softmax, extra)."""
        if incremental_state is not None:
            if stream is not None:
                raise ValueError("incremental decoding and stream memory are exclusive: pass one")
            x = self.decode_features(src_tokens, incremental_state)
            if not features_only:
                x = self.output_layer(x)
            return x, {"attn": [None], "inner_states": [x]}
        memory = None
        if stream is not None:
            memory = self.stream_memories.setdefault(stream.key, StreamMemory())
        mems = memory.read(stream.start) if memory is not None else None
        x, new_mems = self.extract_features(src_tokens, mems)
        if memory is not None:
            memory.write(stream.start, src_tokens.shape[1], mems, new_mems)
        if not features_only and self.adaptive_softmax is None:
            x = self.output_projection(x)
        return x, {"attn": [None], "mems": new_mems}

    def memory_layout(self) -> Dict[str, object]:
        """What the stream memories' shapes depend on: a saved memory fits only this layout."""
        return {"mem_lens": list(self.mem_lens), "sink_tokens": int(self.schedule.sink_tokens),
                "dim": int(self.cfg.decoder_embed_dim)}

    def extract_features(self, src_tokens: Tensor, mems: Optional[List[Tensor]] = None):
        """Run the layers; ``mems`` holds per layer the (sinks +) memory states that entered it.

        Returns features (B, L, E) and the new memories (detached)."""
        x = self.dropout(self.embed_scale * self.embed_tokens(src_tokens))
        b, length, _ = x.shape
        num_sinks = self.schedule.sink_tokens
        if mems is not None and (len(mems) != 2 * len(self.layers) + 1):
            mems = None  # a memory from another model shape (e.g. after --model-overrides)
        seen = int(mems[-1].item()) if mems is not None else 0  # tokens of the stream before x
        empty = x.new_zeros(b, 0, x.shape[-1])
        new_mems = []
        for i, layer in enumerate(self.layers):
            sinks = mems[2 * i] if mems is not None else empty  # stream positions [0, min(k, seen))
            memory = mems[2 * i + 1] if mems is not None else empty  # positions [seen - M, seen)
            x_next = layer(x, memory, seen - memory.shape[1], sinks, num_sinks)
            if seen < num_sinks:
                sinks = torch.cat([sinks, x[:, : num_sinks - seen]], dim=1).detach()
            mem_len = self.mem_lens[i]
            keep = min(mem_len, memory.shape[1] + length)
            if keep <= length:
                states = x[:, length - keep:].detach()
            else:
                states = torch.cat([memory[:, memory.shape[1] - (keep - length):], x.detach()], dim=1)
            new_mems += [sinks, states]
            x = x_next
        new_mems.append(torch.tensor(seen + length))
        return self.final_norm(x), new_mems

    # --- incremental decoding (generation) ------------------------------------------------------

    def init_caches(self) -> List[XLDecodeCache]:
        """Empty decoding caches, one per layer (``decode_full_attention``: evict nothing)."""
        keep_all = bool(getattr(self.cfg, "decode_full_attention", False))
        return [layer.attn.init_cache(self.schedule.sink_tokens, keep_all) for layer in self.layers]

    def decode_features(self, tokens: Tensor, incremental_state) -> Tensor:
        """tokens (B, T): the whole prefix; runs the tokens after the cached ones (a prompt chunk
        on the first call, then usually one token) and returns their features (B, T - cached, E)."""
        caches, offset, first_call = self.begin_decode(tokens, incremental_state)
        x = self.dropout(self.embed_scale * self.embed_tokens(tokens[:, offset:]))
        for layer, cache in zip(self.layers, caches):
            x = layer.decode(x, cache)
        self.end_decode(incremental_state, caches, first_call)
        return self.final_norm(x)

    def output_layer(self, features: Tensor) -> Tensor:
        return features if self.adaptive_softmax is not None else self.output_projection(features)

    def max_positions(self):
        return int(1e9)  # memory (and relative positions when decoding) make the context unbounded


@register_model("transformer_xl_mswa", dataclass=TransformerXLMSWAConfig)
class TransformerXLMSWALanguageModel(HubMixin, CheckpointFitMixin, FairseqLanguageModel):
    """Transformer-XL language model with multi-scale window attention."""

    @classmethod
    def build_model(cls, cfg, task):
        check_backend(cfg, "transformer_xl_mswa", position_term=True)
        embed_tokens = build_input_embedding(cfg, task.source_dictionary)
        return cls(TransformerXLMSWADecoder(cfg, task.target_dictionary, embed_tokens))

    def forward(self, src_tokens, src_lengths=None, stream=None, **kwargs):
        return self.decoder(src_tokens, stream=stream, **kwargs)

    @property
    def schedule(self) -> WindowSchedule:
        return self.decoder.schedule


# --- presets (fairseq-train --arch); command-line flags still win -----------------------------

def transformer_xl_mswa(args):
    """Paper base (Appendix B.2.1): 12 x 512, 8 heads of 64, FFN 2048, MSWA base window 128.
    ``--arch transformer_xl_mswa`` itself is registered by ``register_model`` from the dataclass
    defaults, which are these values; the other presets start from this function."""
    set_default(args, "decoder_embed_dim", 512)
    set_default(args, "decoder_ffn_embed_dim", 2048)
    set_default(args, "decoder_layers", 12)
    set_default(args, "decoder_attention_heads", 8)
    set_default(args, "attn_pattern", "mswa")
    set_default(args, "base_window", 128)
    set_default(args, "dropout", 0.1)


@register_model_architecture("transformer_xl_mswa", "transformer_xl_mswa_wt103")
def transformer_xl_mswa_wt103(args):
    """Wikitext-103: adaptive input / softmax (cutoffs 20000,60000, factor 4), tied, as fairseq's
    transformer_lm_wiki103. Train with --criterion adaptive_loss --ddp-backend legacy_ddp."""
    set_default(args, "adaptive_input", True)
    set_default(args, "adaptive_input_cutoff", "20000,60000")
    set_default(args, "adaptive_softmax_cutoff", "20000,60000")
    set_default(args, "adaptive_softmax_dropout", 0.2)
    set_default(args, "tie_adaptive_weights", True)
    set_default(args, "tie_adaptive_proj", True)
    set_default(args, "dropout", 0.2)
    transformer_xl_mswa(args)


@register_model_architecture("transformer_xl_mswa", "transformer_xl_mswa_enwik8")
def transformer_xl_mswa_enwik8(args):
    """enwik8 (bytes): plain tied softmax, the paper's shape."""
    set_default(args, "dropout", 0.1)
    transformer_xl_mswa(args)


@register_model_architecture("transformer_xl_mswa", "transformer_xl_mswa_tiny")
def transformer_xl_mswa_tiny(args):
    """Tests: 4 layers x 32, 4 heads, MSWA base 16 (windows 1 .. 64)."""
    set_default(args, "decoder_embed_dim", 32)
    set_default(args, "decoder_ffn_embed_dim", 64)
    set_default(args, "decoder_layers", 4)
    set_default(args, "decoder_attention_heads", 4)
    set_default(args, "attn_pattern", "mswa")
    set_default(args, "base_window", 16)
    set_default(args, "dropout", 0.0)
