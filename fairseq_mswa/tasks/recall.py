"""``recall``: multi-query associative recall (MQAR) with the distance under control.

The probe of what a window schedule can reach (Zoology, Arora et al., arXiv 2312.04927; Based,
arXiv 2402.18668). Every sequence holds ``--num-pairs`` key-value pairs ``k v``; later in the same
sequence each key comes back once as a *query* ``k``, and the model must predict its value as the
next token. Between them: filler tokens.

Layout of one sequence (``--tokens-per-sample`` T input positions, T + 1 tokens)::

    ... k_i v_i ... f f f ... k_i [v_i] ...
        a                     a + d

``d`` (the *distance*) is the query position minus the pair's key position. A head with window
``w`` (a query sees the ``w`` keys ending at itself) at the recalling layer reaches the pair's
value token, at offset ``d - 1``, iff ``d <= w``. Each pair's distance is drawn uniformly among
the distance buckets (``--distance-buckets``, edges; a bucket is ``(lo, hi]``) that fit the
sequence, then uniformly inside its bucket; pairs are placed at random where the four positions
are free. So every bucket gets the same share of queries and distance does not depend on position.

How this differs from Zoology's MQAR, and why: Zoology puts all pairs at the start and draws the
query gaps from a power law, so distance and position are tied and long distances are rare; here
each pair sits anywhere, its distance balanced over the buckets. Zoology fills the gaps with random
tokens of the whole vocabulary; here filler comes from its own vocabulary (``--num-fillers``), so
no filler can be read as a key. As in Zoology, the loss is taken only where a value is to be
recalled (every other target is padding, which the criterion ignores): the filler is random, and
predicting it would only add noise to the gradient.

Data are generated on the fly, deterministically from ``--data-seed``, the split and the index
(no files, no download). Each sequence is scored on its own: no stream, no memory across
sequences. ``recall_cross_entropy`` (``fairseq_mswa/criterions``) logs the accuracy of every
distance bucket.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

SPLITS = {"train": 0, "valid": 1, "test": 2}


class RecallError(ValueError):
    """Recall settings that cannot make a sequence; the message names the fix."""


def parse_buckets(spec: str) -> Tuple[int, ...]:
    """'1,4,8' -> (1, 4, 8): increasing bucket edges, buckets (1, 4], (4, 8]."""
    try:
        edges = tuple(int(x) for x in str(spec).replace(" ", "").split(",") if x)
    except ValueError:
        raise RecallError(f"--distance-buckets must be comma-separated integers, got {spec!r}") from None
    if len(edges) < 2 or edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise RecallError(
            f"--distance-buckets needs at least two increasing edges >= 1 (such as 1,4,16,64), got {spec!r}"
        )
    return edges


def bucket_of(distance, edges: Tuple[int, ...]):
    """Index of the bucket (lo, hi] holding ``distance`` (an int or an integer array)."""
    return np.searchsorted(np.asarray(edges), distance, side="left") - 1


@dataclass(frozen=True)
class RecallSpec:
    """What a sequence looks like; token ids start after the dictionary's 4 special symbols."""

    tokens_per_sample: int
    num_pairs: int
    num_keys: int
    num_values: int
    num_fillers: int
    edges: Tuple[int, ...]
    first_id: int = 4

    def __post_init__(self):
        if self.num_pairs < 1 or self.num_keys < self.num_pairs:
            raise RecallError(
                f"--num-pairs {self.num_pairs} needs at least 1 pair and --num-keys >= it "
                f"(got {self.num_keys}): keys of a sequence are distinct"
            )
        if self.num_values < 2 or self.num_fillers < 1:
            raise RecallError("--num-values must be >= 2 and --num-fillers >= 1")
        if 4 * self.num_pairs > self.tokens_per_sample + 1:
            raise RecallError(
                f"{self.num_pairs} pairs and their queries need {4 * self.num_pairs} tokens; "
                f"--tokens-per-sample {self.tokens_per_sample} holds {self.tokens_per_sample + 1}: "
                "use fewer --num-pairs or a longer --tokens-per-sample"
            )
        if self.edges[0] + 1 >= self.reachable:
            raise RecallError(
                f"no distance of --distance-buckets {self.edges} fits a sequence of "
                f"{self.tokens_per_sample} tokens: use smaller edges"
            )

    @property
    def reachable(self) -> int:
        """The largest distance a sequence can hold (query answer on its last token)."""
        return self.tokens_per_sample - 1

    @property
    def buckets(self) -> List[Tuple[int, int]]:
        """The buckets (lo, hi] that hold at least one distance >= 2 that fits a sequence."""
        out = []
        for lo, hi in zip(self.edges, self.edges[1:]):
            if max(lo + 1, 2) <= min(hi, self.reachable):
                out.append((lo, hi))
        return out

    def symbols(self) -> List[str]:
        return ([f"k{i}" for i in range(self.num_keys)] + [f"v{i}" for i in range(self.num_values)]
                + [f"f{i}" for i in range(self.num_fillers)])

    def generate(self, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """(tokens (T + 1,), distance (T + 1,)): ``distance[p] = d`` where token p is a query
        key whose value (token p + 1) is to be recalled from distance d, else 0."""
        n = self.tokens_per_sample + 1
        key0, val0 = self.first_id, self.first_id + self.num_keys
        fill0 = val0 + self.num_values
        tokens = fill0 + rng.integers(0, self.num_fillers, n)
        keys = rng.choice(self.num_keys, self.num_pairs, replace=False)
        values = rng.integers(0, self.num_values, self.num_pairs)
        for _ in range(100):  # distances that cannot all be placed are drawn again
            dists = self._draw_distances(rng)
            starts = self._place(dists, rng)
            if starts is not None:
                break
        else:
            raise RecallError(
                f"could not place {self.num_pairs} pairs in {self.tokens_per_sample} tokens: "
                "use fewer --num-pairs or a longer --tokens-per-sample"
            )
        distance = np.zeros(n, dtype=np.int64)
        for i, (a, d) in enumerate(zip(starts, dists)):
            tokens[[a, a + d]] = key0 + keys[i]
            tokens[[a + 1, a + d + 1]] = val0 + values[i]
            distance[a + d] = d
        return tokens, distance

    def _draw_distances(self, rng: np.random.Generator) -> List[int]:
        """One distance per pair: a bucket uniformly, then a distance uniformly inside it."""
        buckets = self.buckets
        out = []
        for _ in range(self.num_pairs):
            lo, hi = buckets[rng.integers(len(buckets))]
            out.append(int(rng.integers(max(lo + 1, 2), min(hi, self.reachable) + 1)))
        return out

    def _place(self, dists: List[int], rng: np.random.Generator):
        """Key positions ``a`` of the pairs, their four tokens on free slots; None if stuck."""
        n = self.tokens_per_sample + 1
        free = np.ones(n, dtype=bool)
        starts = [0] * len(dists)
        for i in np.argsort(dists)[::-1]:  # the longest first: they have the fewest places
            d = dists[i]
            for _ in range(200):
                a = int(rng.integers(0, n - d - 1))
                slots = [a, a + 1, a + d, a + d + 1]
                if free[slots].all():
                    break
            else:
                return None
            free[slots] = False
            starts[i] = a
        return starts


class RecallDataset(FairseqDataset):
    """Item i: sequence i of a split, generated from (data seed, split, i)."""

    def __init__(self, spec: RecallSpec, size: int, seed: int, split: str, pad: int):
        self.spec, self.count, self.seed, self.pad = spec, size, seed, pad
        self.split_id = SPLITS[split]

    def __len__(self):
        return self.count

    def __getitem__(self, index: int) -> Dict:
        rng = np.random.default_rng([self.seed, self.split_id, index])
        tokens, distance = self.spec.generate(rng)
        tokens = torch.from_numpy(tokens)
        scored = torch.from_numpy(distance[:-1] > 0)
        target = torch.where(scored, tokens[1:], torch.full_like(tokens[1:], self.pad))
        return {"id": index, "source": tokens[:-1], "target": target,
                "distance": torch.from_numpy(distance[:-1])}

    def num_tokens(self, index):
        return self.spec.tokens_per_sample

    def size(self, index):
        return self.spec.tokens_per_sample

    def ordered_indices(self):
        return np.arange(len(self), dtype=np.int64)

    def collater(self, items) -> Dict:
        if not items:
            return {}
        target = torch.stack([s["target"] for s in items])
        src = torch.stack([s["source"] for s in items])
        return {
            "id": torch.tensor([s["id"] for s in items]),
            "nsentences": len(items),
            "ntokens": int(target.ne(self.pad).sum()),
            "net_input": {"src_tokens": src,
                          "src_lengths": torch.full((len(items),), src.shape[1])},
            "target": target,
            "distance": torch.stack([s["distance"] for s in items]),
        }


@dataclass
class RecallConfig(FairseqDataclass):
    tokens_per_sample: int = field(default=256, metadata={"help": "input tokens per sequence"})
    num_pairs: int = field(default=8, metadata={"help": "key-value pairs per sequence, each queried once"})
    num_keys: int = field(default=64, metadata={"help": "key vocabulary"})
    num_values: int = field(default=64, metadata={"help": "value vocabulary (chance = 1 / this)"})
    num_fillers: int = field(default=16, metadata={"help": "filler vocabulary"})
    distance_buckets: str = field(
        default="1,4,8,16,32,64,128,256,512",
        metadata={"help": "bucket edges of the pair-to-query distance; a bucket is (lo, hi]; "
                  "distances are drawn evenly over the buckets that fit"},
    )
    train_sequences: int = field(default=20000, metadata={"help": "sequences in the train split"})
    valid_sequences: int = field(default=1000, metadata={"help": "sequences in the valid split"})
    test_sequences: int = field(default=2000, metadata={"help": "sequences in the test split"})
    data_seed: int = field(default=1, metadata={"help": "seed of the generated data (all splits)"})


@register_task("recall", dataclass=RecallConfig)
class RecallTask(FairseqTask):
    """Multi-query associative recall; train with ``--criterion recall_cross_entropy``."""

    def __init__(self, cfg: RecallConfig, dictionary: Dictionary, spec: RecallSpec):
        super().__init__(cfg)
        self.dictionary, self.spec = dictionary, spec

    @classmethod
    def spec_of(cls, cfg) -> RecallSpec:
        return RecallSpec(int(cfg.tokens_per_sample), int(cfg.num_pairs), int(cfg.num_keys),
                          int(cfg.num_values), int(cfg.num_fillers),
                          parse_buckets(cfg.distance_buckets))

    @classmethod
    def setup_task(cls, cfg: RecallConfig, **kwargs):
        spec = cls.spec_of(cfg)
        dictionary = Dictionary()
        for sym in spec.symbols():
            dictionary.add_symbol(sym)
        dictionary.pad_to_multiple_(8)
        return cls(cfg, dictionary, spec)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        if split not in SPLITS:
            raise RecallError(f"the recall task has the splits {', '.join(SPLITS)}, not {split!r}")
        size = int(getattr(self.cfg, f"{split}_sequences"))
        if size < 1:
            raise RecallError(f"--{split}-sequences must be >= 1, got {size}")
        self.datasets[split] = RecallDataset(self.spec, size, int(self.cfg.data_seed), split,
                                             self.dictionary.pad())

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return self.spec.tokens_per_sample
