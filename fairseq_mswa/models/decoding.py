"""Incremental decoding shared by the plugin's decoders: per-layer caches kept in fairseq's
``incremental_state`` (one cache per layer: ``WindowKVCache`` / ``XLDecodeCache`` for attention,
``RecurrentStateCache`` for linear attention; every cache has ``length``, ``reorder`` and
``nbytes``). A decoder mixes this in before ``FairseqIncrementalDecoder`` and provides
``init_caches()``."""

from typing import List, Optional, Tuple

from torch import Tensor


class CachedDecoderMixin:
    def init_caches(self) -> List:  # pragma: no cover - every decoder defines it
        raise NotImplementedError

    def get_caches(self, incremental_state) -> Optional[List]:
        """This decoder's per-layer caches in ``incremental_state`` (None before the first call)."""
        entry = self.get_incremental_state(incremental_state, "caches")
        return None if entry is None else entry["layers"]

    def set_caches(self, incremental_state, caches: List) -> None:
        self.set_incremental_state(incremental_state, "caches", {"layers": caches})

    def begin_decode(self, tokens: Tensor, incremental_state) -> Tuple[List, int, bool]:
        """Caches for this call, the number of tokens they hold already (``tokens`` is the whole
        prefix: only ``tokens[:, offset:]`` are new) and whether this is the first call."""
        caches = self.get_caches(incremental_state)
        first_call = caches is None
        if first_call:
            caches = self.init_caches()
        offset = caches[0].length
        if tokens.shape[1] <= offset:
            raise ValueError(
                f"incremental decoding got {tokens.shape[1]} tokens but {offset} are cached "
                "already: pass the whole prefix plus at least one new token"
                + (" (an empty prompt: start it with </s>, the start symbol)" if offset == 0 else "")
            )
        return caches, offset, first_call

    def end_decode(self, incremental_state, caches: List, first_call: bool) -> None:
        """Store the caches; under ``decode_full_attention`` (SWAA) the first call was the prompt
        (trained windows) and every later token sees the whole context."""
        if first_call and getattr(self.cfg, "decode_full_attention", False):
            for cache in caches:
                if hasattr(cache, "set_full_attention_from"):
                    cache.set_full_attention_from(cache.length)
        self.set_caches(incremental_state, caches)

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        caches = self.get_caches(incremental_state)
        if caches is None:
            return
        for cache in caches:
            cache.reorder(new_order)
        self.set_caches(incremental_state, caches)

    def cache_nbytes(self, incremental_state) -> int:
        """Bytes held by the decoding caches (key/value tensors, recurrent states)."""
        caches = self.get_caches(incremental_state)
        return 0 if caches is None else sum(c.nbytes() for c in caches)
