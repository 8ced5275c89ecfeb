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

Resuming from a checkpoint: fairseq restores the position in the epoch, and the task restores the
training streams' memories, saved with the checkpoint as extra state (fairseq's task hooks
``get_checkpoint_dict`` / ``set_checkpoint_dict``; not in the model's state dict, so fairseq-eval-lm
and the hub load checkpoints as before): what ``StreamMemory`` keeps, the memory before the last
batch included, of every rank. A resumed run reproduces the uninterrupted one. With several ranks
the memories are gathered to rank 0 at the end of every update a save can follow (a multiple of
``--save-interval-updates`` or ``--validate-interval-updates``, ``--max-update``); a save fairseq
starts at another update (``--stop-time-hours``) keeps rank 0's memory only, and says so. A
checkpoint resumed with another stream layout (``--batch-size``, ``--tokens-per-sample``, number of
ranks, data) or memory layout (``--mem-len``, windows) starts from empty memories, with a warning.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.distributed import utils as distributed_utils

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

from ..allocator import keep_freed_memory
from ..models.window_config import check_backend
from ..stream import StreamMemory, StreamState, memory_layout_of, stream_memories_of

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
        self.num_shards = num_shards
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

    def layout(self) -> Dict[str, int]:
        """What the streams' columns mean: a memory saved under another layout does not fit."""
        return {"tokens": int(len(self.tokens)), "streams_per_rank": len(self.row_bounds) - 1,
                "ranks": int(self.num_shards), "tokens_per_sample": int(self.tokens_per_sample)}

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
    # when a checkpoint save can follow an update (the ranks' memories are gathered then)
    save_interval_updates: int = II("checkpoint.save_interval_updates")
    validate_interval_updates: int = II("dataset.validate_interval_updates")
    max_update: int = II("optimization.max_update")
    release_freed_memory: bool = field(
        default=False,
        metadata={"help": "on a machine without CUDA, leave glibc's allocator as it is (freed heap "
                          "memory goes back to the OS, and the next step page-faults it in again); "
                          "by default mswa_lm keeps freed memory in the process for reuse "
                          "(fairseq_mswa/allocator.py: fewer page faults, faster CPU training)"},
    )


@register_task("mswa_lm", dataclass=MSWALanguageModelingConfig)
class MSWALanguageModelingTask(FairseqTask):
    """Stream language modelling for models with segment-level memory (Transformer-XL style)."""

    def __init__(self, cfg: MSWALanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self._train_model = None  # the model being trained (its training streams' memories)
        self._gathered = None  # (rank 0's memory version, every rank's memory) at a save point
        self._resumed = None  # memories from the checkpoint, loaded at the first training step

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
        if not cfg.release_freed_memory and not torch.cuda.is_available() and keep_freed_memory():
            logger.info("CPU allocator: freed heap memory is kept for reuse (glibc mallopt, "
                        "fairseq_mswa/allocator.py; --release-freed-memory to leave it as it is)")
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
            num_shards=num_shards if num_shards is not None else self._world(),
            shard_id=shard_id if shard_id is not None else self._rank(),
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
        self._train_model = model
        if self._resumed is not None:
            self._restore_memory(model)
        if ignore_grad:  # the trainer's dummy batch: never touch the streams' memory
            sample = _without_stream(sample)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    # --- exact resume: the training streams' memories travel with the checkpoint ---------------

    def _world(self) -> int:
        return max(1, self.cfg.data_parallel_size or 1)

    def _rank(self) -> int:
        return max(0, self.cfg.data_parallel_rank or 0)

    def _train_memory(self):
        memories = stream_memories_of(self._train_model) if self._train_model is not None else None
        return None if memories is None else memories.get("train")

    def _layout(self, model) -> Dict[str, Any]:
        dataset = self.datasets.get("train")
        return {"streams": dataset.layout() if isinstance(dataset, StreamDataset) else None,
                "model": memory_layout_of(model)}

    def optimizer_step(self, optimizer, model, update_num):
        """After the update's last batch, on every rank: when a checkpoint save can follow this
        update, gather every rank's memory to rank 0 (only rank 0 writes checkpoints)."""
        super().optimizer_step(optimizer, model, update_num)
        world = self._world()
        memory = self._train_memory()
        if world == 1 or memory is None or not self._save_may_follow(update_num + 1):
            return
        group = distributed_utils.get_data_parallel_group()
        rank = self._rank()
        gathered = [None] * world if rank == 0 else None
        torch.distributed.gather_object(memory.state_dict(), gathered,
                                        dst=torch.distributed.get_global_rank(group, 0), group=group)
        self._gathered = (memory.version, gathered) if rank == 0 else None

    def _save_may_follow(self, num_updates: int) -> bool:
        every = [getattr(self.cfg, "save_interval_updates", 0) or 0,
                 getattr(self.cfg, "validate_interval_updates", 0) or 0]  # a validation may stop
        max_update = getattr(self.cfg, "max_update", 0) or 0
        return any(k > 0 and num_updates % k == 0 for k in every) or 0 < max_update <= num_updates

    def get_checkpoint_dict(self) -> Dict[str, Any]:
        """fairseq's hook (rank 0, when saving): the extra state saved under this task's name."""
        memory = self._train_memory()
        if memory is None:
            return {}
        world = self._world()
        if world == 1:
            ranks = [memory.state_dict()]
        elif self._gathered is not None and self._gathered[0] == memory.version:
            ranks = self._gathered[1]
        else:
            logger.warning(
                "stream memories of ranks 1..%d are not in this checkpoint (a save after an update "
                "the task did not foresee, e.g. --stop-time-hours): a resume from it starts their "
                "streams from empty memories", world - 1)
            ranks = [memory.state_dict()] + [None] * (world - 1)
        state = {"layout": self._layout(self._train_model), "ranks": ranks}
        return {self.__class__.__name__: {"stream_memory": state}}

    def set_checkpoint_dict(self, state: Dict[str, Any]) -> None:
        """fairseq's hook (every rank, on resume, after the training iterator is restored)."""
        self._resumed = state.get("stream_memory")

    def _restore_memory(self, model) -> None:
        """Load this rank's saved memory into the model, if it fits this run's layout."""
        saved, self._resumed = self._resumed, None
        memories = stream_memories_of(model)
        if memories is None:
            return
        now = self._layout(model)
        rank = self._rank()
        ranks = saved.get("ranks") or []
        if saved.get("layout") != now:
            logger.warning(
                "the checkpoint's stream memories were saved for streams %s and memory %s; this "
                "run has streams %s and memory %s: training continues from empty memories",
                saved["layout"]["streams"], saved["layout"]["model"], now["streams"], now["model"])
        elif rank >= len(ranks) or ranks[rank] is None:
            logger.warning("the checkpoint has no stream memory of rank %d: its streams continue "
                           "from empty memories", rank)
        else:
            device = next(iter(model.parameters())).device
            memories.setdefault("train", StreamMemory())
            memories["train"].load_state_dict(ranks[rank], device=device)
            logger.info("restored the stream memories of rank %d (next column %s)", rank,
                        ranks[rank]["next_start"])

    def build_model(self, cfg, from_checkpoint=False):
        if not from_checkpoint and str(getattr(cfg, "attn_backend", "")) == "flex":  # training
            check_backend(cfg, str(getattr(cfg, "_name", "the model")), position_term=False,
                          training=True)
        return super().build_model(cfg, from_checkpoint)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Prompts for generation (fairseq-interactive, the hub's ``sample``), as in fairseq's
        ``language_modeling``: each prompt without its trailing ``</s>``, ``</s>`` prepended as the
        start symbol; generation then continues it with the model's incremental decoding. A prompt
        whose every word is outside the dictionary (all ``<unk>``) is refused."""
        eos, pad, unk = self.dictionary.eos(), self.dictionary.pad(), self.dictionary.unk()
        for i, tokens in enumerate(src_tokens):
            words = tokens[tokens.ne(eos) & tokens.ne(pad)]
            if len(words) and bool(words.eq(unk).all()):
                raise ValueError(
                    f"prompt {i + 1}: none of its {len(words)} words is in the dictionary (all "
                    "would be <unk>): write the prompt with words of the training data (dict.txt)"
                )
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
