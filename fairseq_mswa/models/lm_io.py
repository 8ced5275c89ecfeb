"""Input embedding and output layer shared by the plugin's language models, with fairseq's
AdaptiveInput / AdaptiveSoftmax options named as in fairseq's ``transformer_lm`` (Wikitext-103's
267k vocabulary: ``--adaptive-input --adaptive-softmax-cutoff 20000,60000 --tie-adaptive-weights``).
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple

from fairseq import options
from fairseq.modules import AdaptiveInput, AdaptiveSoftmax
from torch import nn

from .window_config import WindowAttentionConfig


@dataclass
class LanguageModelIOConfig(WindowAttentionConfig):
    no_scale_embedding: bool = field(default=False, metadata={"help": "don't scale embeddings by sqrt(dim)"})
    share_decoder_input_output_embed: bool = field(
        default=True, metadata={"help": "tie input embedding and output projection"}
    )
    adaptive_input: bool = field(default=False, metadata={"help": "use fairseq's AdaptiveInput"})
    adaptive_input_factor: float = field(default=4, metadata={"help": "adaptive input factor"})
    adaptive_input_cutoff: Optional[str] = field(
        default=None, metadata={"help": "comma separated list of adaptive input cutoff points"}
    )
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma separated list of adaptive softmax cutoff points (use with "
            "--criterion adaptive_loss and --ddp-backend legacy_ddp)"
        },
    )
    adaptive_softmax_dropout: float = field(
        default=0, metadata={"help": "dropout of the adaptive softmax tail projections"}
    )
    adaptive_softmax_factor: float = field(default=4, metadata={"help": "adaptive softmax factor"})
    tie_adaptive_weights: bool = field(
        default=False, metadata={"help": "tie the adaptive input and adaptive softmax weights"}
    )
    tie_adaptive_proj: bool = field(
        default=False, metadata={"help": "tie the adaptive input and softmax projections"}
    )


def set_default(args, name, value) -> None:
    """A preset's value for ``name``, unless the command line gave one (fairseq's presets)."""
    setattr(args, name, getattr(args, name, value))


def build_input_embedding(cfg, dictionary) -> nn.Module:
    """Token embedding (normal init, zero padding row) or fairseq's AdaptiveInput."""
    dim = cfg.decoder_embed_dim
    if cfg.tie_adaptive_weights:
        if not (cfg.adaptive_input and cfg.adaptive_softmax_cutoff):
            raise ValueError("--tie-adaptive-weights needs --adaptive-input and --adaptive-softmax-cutoff")
        if (cfg.adaptive_input_factor != cfg.adaptive_softmax_factor
                or cfg.adaptive_input_cutoff != cfg.adaptive_softmax_cutoff):
            raise ValueError(
                "--tie-adaptive-weights needs equal adaptive input/softmax factors and cutoffs"
            )
    if cfg.adaptive_input:
        return AdaptiveInput(
            len(dictionary), dictionary.pad(), dim, cfg.adaptive_input_factor, dim,
            options.eval_str_list(cfg.adaptive_input_cutoff, type=int),
        )
    embed = nn.Embedding(len(dictionary), dim, padding_idx=dictionary.pad())
    nn.init.normal_(embed.weight, mean=0, std=dim ** -0.5)
    nn.init.constant_(embed.weight[dictionary.pad()], 0)
    return embed


def build_output(cfg, dictionary, embed_tokens) -> Tuple[Optional[AdaptiveSoftmax], Optional[nn.Linear]]:
    """(adaptive_softmax, None) with --adaptive-softmax-cutoff, else (None, projection) tied to
    the token embedding when --share-decoder-input-output-embed and no adaptive input."""
    dim = cfg.decoder_embed_dim
    if cfg.adaptive_softmax_cutoff is not None:
        return AdaptiveSoftmax(
            len(dictionary), dim,
            options.eval_str_list(cfg.adaptive_softmax_cutoff, type=int),
            dropout=cfg.adaptive_softmax_dropout,
            adaptive_inputs=embed_tokens if cfg.tie_adaptive_weights else None,
            factor=cfg.adaptive_softmax_factor,
            tie_proj=cfg.tie_adaptive_proj,
        ), None
    projection = nn.Linear(dim, len(dictionary), bias=False)
    if cfg.share_decoder_input_output_embed and not cfg.adaptive_input:
        projection.weight = embed_tokens.weight
    else:
        nn.init.normal_(projection.weight, mean=0, std=dim ** -0.5)
    return None, projection


class CheckpointFitMixin:
    """``load_state_dict`` that first checks that the checkpoint's vocabulary-sized tensors fit
    the dictionary the model was built with (fairseq builds the model from the task's data
    directory, then loads the checkpoint): one line naming the fix instead of torch's list of
    size mismatches. A checkpoint trained without learned sinks loads into a model built with
    ``--learned-sinks`` (adaptation): the missing sink logits start at their initial value."""

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        from ..modules.sinks import upgrade_learned_sinks

        check_dictionary_fits(self, state_dict)
        upgrade_learned_sinks(self, state_dict, "")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def check_dictionary_fits(model, state_dict) -> None:
    own = model.state_dict()
    vocab_tensors = ("decoder.embed_tokens.", "decoder.output_projection.", "decoder.adaptive_softmax.")
    for name, saved in state_dict.items():
        mine = own.get(name)
        if (mine is not None and name.startswith(vocab_tensors) and saved.dim() >= 1
                and saved.shape[0] != mine.shape[0]):
            raise ValueError(
                f"the checkpoint was trained with another dictionary: its {name} has "
                f"{saved.shape[0]} rows, this data directory's dict.txt gives {mine.shape[0]} "
                f"({len(model.decoder.dictionary)} symbols): pass the data directory (dict.txt) "
                "the model was trained with"
            )
