"""Stream bookkeeping shared by the ``mswa_lm`` task (which cuts splits into streams) and models
with segment-level memory (which keep one ``StreamMemory`` per stream set)."""

import logging
from typing import List, Optional

import torch

logger = logging.getLogger(__name__)


class StreamMemory:
    """Per-layer memories of one split's streams, with the column they continue.

    ``read(start)`` returns the memory to use for the batch starting at column ``start``; ``write``
    stores the memory after that batch. Keeping the memory *before* the last batch makes a repeated
    batch (OOM retry) read the same input twice instead of its own output.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.next_start: Optional[int] = None
        self.mems: Optional[List[torch.Tensor]] = None
        self.last_start: Optional[int] = None
        self.last_input_mems: Optional[List[torch.Tensor]] = None
        self._warned = False

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


class StreamState:
    """Where a batch sits in its streams: the stream set's key (the split) and the batch's start
    column. Plain values, picklable; fairseq's ``move_to_cuda`` leaves it as it is."""

    __slots__ = ("key", "start")

    def __init__(self, key: str, start: int):
        self.key, self.start = key, int(start)

    def __repr__(self):
        return f"StreamState({self.key!r}, start={self.start})"
