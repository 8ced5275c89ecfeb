"""``mswa_lm``: language modelling over contiguous streams, with memory carried across batches.

Layout. The token stream of a split (every line of the binarized data, each ending with ``</s>``) is
cut into ``R = batch_size x world_size`` contiguous *rows* of (almost) equal length; rank ``r`` owns
rows ``r * batch_size .. (r + 1) * batch_size - 1``, so 2 ranks with batch ``B`` see exactly the rows
of 1 rank with batch ``2B``. Batch ``s`` holds columns ``[s T, (s + 1) T)`` of the rank's rows
(``T = --tokens-per-sample``), the last one possibly shorter; rows one token shorter than the longest
are padded and their padding is never scored. The input of the very first token of a row is the
token before it in the stream (``</s>`` at the start of the split), so **every token of the split is
scored exactly once**, the first one included, and ``ntokens`` counts exactly the scored targets.

Memory. Every batch carries a ``StreamState`` in ``net_input["stream"]``: the split's name and the
batch's start column (plain values: batches may be collated in worker processes). A model with
memory (``transformer_xl_mswa``) keeps one ``StreamMemory`` per split, reads the memory left by the
batch that ended at this start column and writes its own; a batch at column 0 starts from an empty
memory, so memory resets at the start of every epoch and of every validation / test pass, and
validation never disturbs the training streams. Re-running the same batch (OOM retry) reads the
same memory again. The trainer's dummy batch (``ignore_grad``) runs without memory and leaves it
untouched.

Resuming from a checkpoint: fairseq restores the position in the epoch; memories are not
checkpointed, so the first batch after a resume starts from an empty memory (logged once).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fairseq import utils

from fairseq.data import (
    AppendTokenDataset,
    Dictionary,
    FairseqDataset,
    IdDataset,
    ListDataset,
    NestedDictionaryDataset,
    NumelDataset,
    PadDataset,
    PrependTokenDataset,
    StripTokenDataset,
    data_utils,
    iterators,
)
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from ..stream import StreamState

logger = logging.getLogger(__name__)


class StreamDataset(FairseqDataset):
    """Item ``s`` is batch ``s`` of this rank: (source, target) of shape (rows, <= T)."""

    def __init__(self, tokens: np.ndarray, tokens_per_sample: int, rows_per_shard: int,
                 num_shards: int, shard_id: int, pad: int, eos: int, stream_key: str = "stream"):
        if tokens_per_sample < 1 or rows_per_shard < 1:
            raise ValueError("tokens_per_sample and batch_size must be >= 1")
        n = len(tokens)
        total_rows = rows_per_shard * num_shards
        if n < total_rows:
            raise ValueError(
                f"the split has {n} tokens, fewer than the {total_rows} streams "
                f"(batch size {rows_per_shard} x {num_shards} ranks): use a smaller --batch-size"
            )
        self.tokens = tokens  # the whole split (any integer dtype, e.g. an mmap view)
        bounds = np.linspace(0, n, total_rows + 1).round().astype(np.int64)
        self.row_len = int(np.max(np.diff(bounds)))  # the same on every rank
        mine = slice(shard_id * rows_per_shard, (shard_id + 1) * rows_per_shard + 1)
        self.row_bounds = bounds[mine]  # rows of this rank: [row_bounds[i], row_bounds[i + 1])
        self.tokens_per_sample = tokens_per_sample
        self.pad, self.eos = pad, eos
        self.stream_key = stream_key  # the task names it after the split
        self.source = None  # the indexed dataset `tokens` may view (kept alive with it)

    def __getstate__(self):  # data-loader workers re-open the mmap instead of copying the split
        state = dict(self.__dict__)
        if self.source is not None:
            state["tokens"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.tokens is None:
            self.tokens = _concatenate(self.source)

    def __len__(self):
        return (self.row_len + self.tokens_per_sample - 1) // self.tokens_per_sample

    def __getitem__(self, s: int):
        """Batch ``s``: columns [s T, (s + 1) T) of this rank's rows, built on the fly."""
        a = s * self.tokens_per_sample
        width = min(self.tokens_per_sample, self.row_len - a)
        rows = len(self.row_bounds) - 1
        src = torch.full((rows, width), self.pad, dtype=torch.long)
        tgt = torch.full((rows, width), self.pad, dtype=torch.long)
        for i in range(rows):
            lo = int(self.row_bounds[i]) + a
            hi = min(lo + width, int(self.row_bounds[i + 1]))
            if hi <= lo:
                continue
            tgt[i, : hi - lo] = torch.from_numpy(np.asarray(self.tokens[lo:hi], dtype=np.int64))
            prev = np.asarray(self.tokens[max(lo - 1, 0):hi - 1], dtype=np.int64)
            if lo == 0:  # the first token of the split follows </s>
                prev = np.concatenate([[self.eos], prev])
            src[i, : hi - lo] = torch.from_numpy(prev)
        return s, a, src, tgt

    def collater(self, items) -> Dict[str, Any]:
        assert len(items) == 1, "every item of a StreamDataset is a whole batch"
        s, start, src, tgt = items[0]
        ntokens = int(tgt.ne(self.pad).sum())
        return {
            "id": torch.arange(src.shape[0]),
            "nsentences": src.shape[0],
            "ntokens": ntokens,
            "net_input": {
                "src_tokens": src.contiguous(),
                "src_lengths": src.ne(self.pad).sum(1),
                "stream": StreamState(self.stream_key, start),
            },
            "target": tgt.contiguous(),
        }

    # the rest of fairseq's FairseqDataset API (batches are fixed: item s is batch s)
    def num_tokens(self, index):
        return (len(self.row_bounds) - 1) * self.tokens_per_sample

    def size(self, index):
        return self.tokens_per_sample

    def ordered_indices(self):
        return np.arange(len(self))

    @property
    def supports_prefetch(self):
        return False


@dataclass
class MSWALanguageModelingConfig(FairseqDataclass):
    data: Optional[str] = field(
        default=None, metadata={"help": "path to data directory (fairseq-preprocess --only-source)"}
    )
    tokens_per_sample: int = field(
        default=512, metadata={"help": "segment length: tokens per stream row in one batch"}
    )
    batch_size: Optional[int] = II("dataset.batch_size")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")
    seed: int = II("common.seed")
    data_parallel_rank: Optional[int] = II("distributed_training.distributed_rank")
    data_parallel_size: Optional[int] = II("distributed_training.distributed_world_size")
    dataset_impl: Optional[str] = II("dataset.dataset_impl")


@register_task("mswa_lm", dataclass=MSWALanguageModelingConfig)
class MSWALanguageModelingTask(FairseqTask):
    """Stream language modelling for models with segment-level memory (Transformer-XL style)."""

    def __init__(self, cfg: MSWALanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary

    @classmethod
    def setup_task(cls, cfg: MSWALanguageModelingConfig, **kwargs):
        if not cfg.data:
            raise ValueError("mswa_lm needs a data directory (the output of fairseq-preprocess)")
        paths = utils.split_paths(cfg.data)
        dict_path = os.path.join(paths[0], "dict.txt")
        if not os.path.exists(dict_path):
            raise FileNotFoundError(
                f"{dict_path} not found: binarize the corpus with fairseq-preprocess --only-source "
                "(see data_prep/) and pass its output directory"
            )
        dictionary = Dictionary.load(dict_path)
        logger.info("dictionary: %d types", len(dictionary))
        return cls(cfg, dictionary)

    def _batch_size(self, split: str) -> int:
        bsz = self.cfg.batch_size
        if split != "train" and self.cfg.batch_size_valid is not None:
            bsz = self.cfg.batch_size_valid
        if bsz is None:
            raise ValueError(
                "mswa_lm needs --batch-size (the number of parallel streams per rank); "
                "--max-tokens alone is not enough"
            )
        return int(bsz)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)]
        split_path = os.path.join(data_path, split)
        data = data_utils.load_indexed_dataset(split_path, self.dictionary, self.cfg.dataset_impl)
        if data is None:
            raise FileNotFoundError(
                f"dataset not found: {split_path}.bin/.idx; run fairseq-preprocess for this split"
            )
        tokens = _concatenate(data)
        self.datasets[split] = self._stream_dataset(tokens, split)
        self.datasets[split].source = data  # keeps the mmap that `tokens` views open
        logger.info("%s: %d tokens in %d streams per rank, %d batches of <= %d tokens", split,
                    len(tokens), self._batch_size(split), len(self.datasets[split]),
                    self.cfg.tokens_per_sample)

    def _stream_dataset(self, tokens, split, num_shards=None, shard_id=None, batch_size=None):
        return StreamDataset(
            tokens,
            tokens_per_sample=self.cfg.tokens_per_sample,
            rows_per_shard=batch_size or self._batch_size(split),
            num_shards=num_shards if num_shards is not None else max(1, self.cfg.data_parallel_size or 1),
            shard_id=shard_id if shard_id is not None else max(0, self.cfg.data_parallel_rank or 0),
            pad=self.dictionary.pad(),
            eos=self.dictionary.eos(),
            stream_key=split,
        )

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0,
                           skip_remainder_batch=False, **kwargs):
        """Batches in stream order on every rank (no shuffling, no sharding of batches: each rank
        already holds its own rows). Prompts for generation are batched the usual fairseq way."""
        if not isinstance(dataset, StreamDataset):
            return super().get_batch_iterator(
                dataset, num_workers=num_workers, epoch=epoch, data_buffer_size=data_buffer_size,
                skip_remainder_batch=skip_remainder_batch, **kwargs)
        return iterators.EpochBatchIterator(
            dataset=dataset,
            collate_fn=dataset.collater,
            batch_sampler=[[i] for i in range(len(dataset))],
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
            skip_remainder_batch=skip_remainder_batch,
        )

    def eval_lm_dataloader(self, dataset, max_tokens=None, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        """fairseq-eval-lm's loader: the split as streams, memory reset at its start."""
        if context_window > 0:
            raise ValueError(
                "mswa_lm scores with the model's memory; --context-window does not apply (drop it)"
            )
        # this evaluation's streams: batch_size rows per shard of the whole split
        source = getattr(dataset, "source", None)
        dataset = self._stream_dataset(dataset.tokens, dataset.stream_key, num_shards=num_shards,
                                       shard_id=shard_id, batch_size=batch_size)
        dataset.source = source
        return self.get_batch_iterator(dataset, num_workers=num_workers,
                                       data_buffer_size=data_buffer_size).next_epoch_itr(shuffle=False)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if ignore_grad:  # the trainer's dummy batch: never touch the streams' memory
            sample = _without_stream(sample)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Prompts for generation (fairseq-interactive, the hub's ``sample``), as in fairseq's
        ``language_modeling``: each prompt without its trailing ``</s>``, ``</s>`` prepended as the
        start symbol; generation then continues it with the model's incremental decoding."""
        eos, pad = self.dictionary.eos(), self.dictionary.pad()
        prompts = StripTokenDataset(ListDataset(src_tokens, src_lengths), eos)
        return NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": PadDataset(PrependTokenDataset(prompts, eos), pad, left_pad=False),
                    "src_lengths": NumelDataset(PrependTokenDataset(prompts, eos), reduce=False),
                },
                "target": PadDataset(AppendTokenDataset(prompts, pad), pad, left_pad=False),
            },
            sizes=[np.array(src_lengths)],
        )

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """Continue each prompt: its tokens are forced as the prefix, ``</s>`` is the start symbol."""
        if constraints is not None:
            raise NotImplementedError("constrained decoding is not supported by mswa_lm")
        with torch.no_grad():
            eos = self.dictionary.eos()
            if prefix_tokens is None and sample["net_input"]["src_tokens"].nelement():
                prefix_tokens = sample["net_input"]["src_tokens"]
                if prefix_tokens[:, 0].eq(eos).all():
                    prefix_tokens = prefix_tokens[:, 1:]
            return generator.generate(models, sample, prefix_tokens=prefix_tokens, bos_token=eos)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return None


def _without_stream(sample):
    if not sample or "net_input" not in sample:
        return sample
    net_input = {k: v for k, v in sample["net_input"].items() if k != "stream"}
    return {**sample, "net_input": net_input}


def _concatenate(data) -> np.ndarray:
    """All tokens of an indexed dataset as one array, in order (a view of the mmap file when the
    dataset is memory-mapped: no copy of a large training split; keep ``data`` alive, its
    destructor closes the mmap)."""
    index = getattr(data, "_index", None)
    buffer = getattr(data, "_bin_buffer", None)
    if index is not None and buffer is not None:  # mmap dataset: already contiguous on disk
        return np.frombuffer(buffer, dtype=index.dtype, count=int(np.sum(index.sizes)))
    return np.concatenate([data[i].numpy() for i in range(len(data))])
