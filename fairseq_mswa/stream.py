"""Stream bookkeeping shared by the ``mswa_lm`` task (which cuts splits into streams) and models
with segment-level memory (which keep one ``StreamMemory`` per stream set).

A model *has stream memory* when its decoder has ``stream_memories`` (stream set key ->
``StreamMemory``) and ``memory_layout()`` (what a memory's shapes depend on); ``stream_memories_of``
finds them through fairseq's distributed wrappers. The task saves the training streams' memories
with a checkpoint (``StreamMemory.state_dict``) and restores them on resume (``load_state_dict``).
"""

import logging
from typing import Any, Dict, List, Optional

import torch

logger = logging.getLogger(__name__)


class StreamMemory:
    """Per-layer memories of one split's streams, with the column they continue.

    ``read(start)`` returns the memory to use for the batch starting at column ``start``; ``write``
    stores the memory after that batch. Keeping the memory *before* the last batch makes a repeated
    batch (OOM retry) read the same input twice instead of its own output.
    """

    def __init__(self):
        self.version = 0  # counts writes (and resets, loads): tells a stale copy from the live one
        self.reset()

    def reset(self):
        self.next_start: Optional[int] = None
        self.mems: Optional[List[torch.Tensor]] = None
        self.last_start: Optional[int] = None
        self.last_input_mems: Optional[List[torch.Tensor]] = None
        self._warned = False
        self.version += 1

    def read(self, start: int) -> Optional[List[torch.Tensor]]:
        if start == 0:
            return None
        if start == self.next_start:
            return self.mems
        if start == self.last_start:
            return self.last_input_mems
        if not self._warned:
            logger.warning(
                "stream memory for column %d is missing (resumed from a checkpoint mid-epoch?): "
                "continuing from an empty memory", start,
            )
            self._warned = True
        return None

    def write(self, start: int, length: int, input_mems, mems: List[torch.Tensor]) -> None:
        self.last_start, self.last_input_mems = start, input_mems
        self.next_start, self.mems = start + length, mems
        self.version += 1

    def state_dict(self) -> Dict[str, Any]:
        """The memory as plain containers of compact CPU tensors (a checkpoint's extra state):
        the memory after the last batch and the one before it (what a retry of that batch reads)."""
        copies = {}  # a tensor held by both memories (the sinks) is saved once
        return {
            "next_start": self.next_start,
            "mems": _cpu_copy(self.mems, copies),
            "last_start": self.last_start,
            "last_input_mems": _cpu_copy(self.last_input_mems, copies),
        }

    def load_state_dict(self, state: Dict[str, Any], device=None) -> None:
        """Continue from ``state`` (``state_dict``'s output), its tensors moved to ``device``."""
        self.reset()
        moved = {}
        self.next_start = state["next_start"]
        self.mems = _moved(state["mems"], device, moved)
        self.last_start = state["last_start"]
        self.last_input_mems = _moved(state["last_input_mems"], device, moved)


def _cpu_copy(mems, copies):
    if mems is None:
        return None
    out = []
    for t in mems:
        if id(t) not in copies:  # a compact copy: a memory may view a whole segment's states
            copies[id(t)] = t.detach().to("cpu", copy=True).contiguous()
        out.append(copies[id(t)])
    return out


def _moved(mems, device, moved):
    if mems is None:
        return None
    out = []
    for t in mems:
        if id(t) not in moved:
            moved[id(t)] = t if device is None else t.to(device)
        out.append(moved[id(t)])
    return out


def stream_memories_of(model) -> Optional[Dict[str, "StreamMemory"]]:
    """The decoder's ``stream_memories`` (key -> StreamMemory) of a model with stream memory,
    through fairseq's distributed wrappers (``.module``); None for a model without memory."""
    while hasattr(model, "module"):
        model = model.module
    decoder = getattr(model, "decoder", None)
    if decoder is None or not hasattr(decoder, "memory_layout"):
        return None
    return getattr(decoder, "stream_memories", None)


def memory_layout_of(model) -> Optional[Dict[str, Any]]:
    """What the shapes of the model's stream memories depend on (None: no stream memory)."""
    while hasattr(model, "module"):
        model = model.module
    decoder = getattr(model, "decoder", None)
    return decoder.memory_layout() if hasattr(decoder, "memory_layout") else None


class StreamState:
    """Where a batch sits in its streams: the stream set's key (the split) and the batch's start
    column. Plain values, picklable; fairseq's ``move_to_cuda`` leaves it as it is."""

    __slots__ = ("key", "start")

    def __init__(self, key: str, start: int):
        self.key, self.start = key, int(start)

    def __repr__(self):
        return f"StreamState({self.key!r}, start={self.start})"
