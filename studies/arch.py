"""What model configuration ``fairseq-train --arch ARCH --flag value ...`` builds, and the model
itself: the one place that answers it for the table driver, the benchmarks and the tests.

fairseq's order, reproduced: the command-line flags are set first, then the architecture's
preset function fills what they left unset (``getattr(args, name, default)``), then the model
dataclass's defaults fill the rest (fairseq's argparse leaves absent flags out of the namespace
for dataclass models, so presets see only the flags that were given).
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import fields
from typing import Dict, Optional

# fields that the YAML configs may give as strings but the models read as integers
_INT_FIELDS = ("decoder_layers", "decoder_attention_heads", "decoder_embed_dim", "base_window",
               "feature_dim", "sink_tokens")


class ArchError(ValueError):
    """An unknown architecture; the message lists the known ones."""


def resolve_arch_config(arch: str, overrides: Optional[Dict] = None) -> Namespace:
    """The configuration of ``--arch arch`` with ``overrides`` (fairseq flag names, with ``-`` or
    ``_``, without ``--``): flags, then the preset, then the dataclass defaults."""
    import fairseq_mswa
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    fairseq_mswa.register()

    if arch not in ARCH_MODEL_REGISTRY:
        raise ArchError(f"unknown --arch {arch!r}: fairseq_mswa registers "
                        + ", ".join(sorted(a for a in ARCH_MODEL_REGISTRY if "mswa" in a)))
    ns = Namespace(**{k.replace("-", "_"): v for k, v in (overrides or {}).items()})
    ARCH_CONFIG_REGISTRY[arch](ns)
    dc = getattr(ARCH_MODEL_REGISTRY[arch], "__dataclass", None)
    if dc is not None:
        defaults = dc()
        for f in fields(dc):
            if not f.name.startswith("_") and not hasattr(ns, f.name):
                setattr(ns, f.name, getattr(defaults, f.name))
    for name in _INT_FIELDS:
        if getattr(ns, name, None) is not None:
            setattr(ns, name, int(getattr(ns, name)))
    return ns


def build_arch_model(arch: str, task, overrides: Optional[Dict] = None):
    """The model fairseq-train builds for ``--arch arch`` + ``overrides`` on ``task`` (anything
    with ``source_dictionary`` / ``target_dictionary``), in training mode as fairseq leaves it."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    cfg = resolve_arch_config(arch, overrides)
    return ARCH_MODEL_REGISTRY[arch].build_model(cfg, task)


def make_dictionary(words: int, prefix: str = "w"):
    """A fairseq Dictionary: its 4 special symbols and ``words`` words ``w0 .. w{words-1}``."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(words):
        d.add_symbol(f"{prefix}{i}")
    return d


class DictionaryTask:
    """What ``build_model`` reads from a task: source and target dictionaries (one, of
    ``words`` words plus fairseq's 4 specials)."""

    def __init__(self, words: int = 23):
        self.source_dictionary = self.target_dictionary = make_dictionary(words)
