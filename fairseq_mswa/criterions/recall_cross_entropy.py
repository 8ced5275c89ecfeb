"""``recall_cross_entropy``: cross-entropy on the recalled values, with accuracy per distance.

For the ``recall`` task (``fairseq_mswa/tasks/recall.py``): the loss is fairseq's
``cross_entropy`` over the scored targets (every other target is padding), and every batch also
counts, per distance bucket ``(lo, hi]``, the queries whose value is the model's most likely next
token. Logged as ``hits_<lo>_<hi>`` and ``queries_<lo>_<hi>`` (exact counts, summed over batches
and ranks) and ``acc_<lo>_<hi>`` (their ratio, in %), so fairseq-train's validation and
fairseq-validate print the accuracy of every bucket.
"""

import re

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig
from fairseq.logging import metrics

from ..tasks.recall import bucket_of

_COUNT = re.compile(r"^queries_(\d+)_(\d+)$")


def recall_counts(logits: torch.Tensor, target: torch.Tensor, distance: torch.Tensor, edges):
    """{(lo, hi): (hits, queries)} of one batch. logits (B, L, V); target, distance (B, L):
    ``distance > 0`` marks a query, whose value is ``target``."""
    scored = distance > 0
    hits = logits.argmax(-1).eq(target) & scored
    buckets = torch.as_tensor(bucket_of(distance.cpu().numpy(), edges))
    out = {}
    for b, (lo, hi) in enumerate(zip(edges, edges[1:])):
        in_b = scored.cpu() & buckets.eq(b)
        n = int(in_b.sum())
        if n:
            out[(lo, hi)] = (int((hits.cpu() & in_b).sum()), n)
    return out


@register_criterion("recall_cross_entropy", dataclass=CrossEntropyCriterionConfig)
class RecallCrossEntropyCriterion(CrossEntropyCriterion):
    def forward(self, model, sample, reduce=True):
        if "distance" not in sample:
            raise ValueError("recall_cross_entropy needs the recall task's batches: use --task recall")
        net_output = model(**sample["net_input"])
        loss, _ = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        log = {"loss": loss.data, "ntokens": sample["ntokens"],
               "nsentences": sample["target"].size(0), "sample_size": sample_size}
        with torch.no_grad():
            counts = recall_counts(net_output[0], sample["target"], sample["distance"],
                                   self.task.spec.edges)
        for (lo, hi), (hits, n) in counts.items():
            log[f"hits_{lo}_{hi}"] = hits
            log[f"queries_{lo}_{hi}"] = n
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CrossEntropyCriterion.reduce_metrics(logging_outputs)
        keys = sorted({k for log in logging_outputs for k in log if _COUNT.match(k)},
                      key=lambda k: int(_COUNT.match(k).group(1)))
        total_hits = total = 0
        for key in keys:
            lo, hi = _COUNT.match(key).groups()
            n = sum(log.get(key, 0) for log in logging_outputs)
            hits = sum(log.get(f"hits_{lo}_{hi}", 0) for log in logging_outputs)
            total_hits, total = total_hits + hits, total + n
            metrics.log_scalar_sum(f"hits_{lo}_{hi}", hits, round=0)
            metrics.log_scalar_sum(f"queries_{lo}_{hi}", n, round=0)
            metrics.log_derived(f"acc_{lo}_{hi}", _ratio(f"hits_{lo}_{hi}", f"queries_{lo}_{hi}"))
        if total:
            metrics.log_scalar_sum("hits", total_hits, round=0)
            metrics.log_scalar_sum("queries", total, round=0)
            metrics.log_derived("acc", _ratio("hits", "queries"))


def _ratio(hits: str, queries: str):
    return lambda meters: round(100.0 * meters[hits].sum / max(meters[queries].sum, 1), 2)
