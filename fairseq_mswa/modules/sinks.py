"""Learned attention sinks (gpt-oss): one trained logit per attention head, the extra softmax
column of ``window_attention``'s ``sink_logits``. Every windowed layer (Transformer-XL's
``RelMultiheadWindowAttention``, the hybrid model's ``LocalAttention``) makes its parameter here,
and the models upgrade a checkpoint trained without them here."""

import torch
from torch import nn

# Initial value of every learned sink logit. 0 is the score of a key orthogonal to the query;
# at initialisation all scores are near 0, so each head starts by giving the sink the weight of
# one more key (1 / (w + 1) for window w): a gradient from the first step (not saturated, as a
# very negative start would be), and the smallest windows (1 or 2 keys in MSWA's first groups),
# for which "attend nowhere" matters most, get the most of it. A checkpoint trained without
# learned sinks is fine-tuned from the same start (``upgrade_learned_sinks``).
SINK_LOGIT_INIT = 0.0


def learned_sink_logits(num_heads: int) -> nn.Parameter:
    """The trained sink logit of every head, (H,), at :data:`SINK_LOGIT_INIT`."""
    return nn.Parameter(torch.full((num_heads,), SINK_LOGIT_INIT))


def upgrade_learned_sinks(module: nn.Module, state_dict, prefix: str) -> None:
    """A state dict from a model without learned sinks, loaded into one with them (adaptation):
    every missing ``<layer>.sink_logits`` gets its initial value (fairseq loads strictly)."""
    for name, param in module.named_parameters():
        if name.endswith("sink_logits") and prefix + name not in state_dict:
            state_dict[prefix + name] = torch.full_like(param.detach(), SINK_LOGIT_INIT)
