"""The statistics every study shares: one home for mean and spread, paired verdicts and ratios.

* :func:`mean_and_std`: mean and sample standard deviation;
* :func:`judge`: the verdict on paired differences (d > 0 agrees with the claim): ``holds`` /
  ``reversed`` when the Student-t interval of their mean lies above / below 0, else ``within
  noise`` (one difference is judged against a pooled spread, or not at all);
* :func:`paired_ratio`: the median and quartiles of per-repetition ratios of two variants timed
  side by side (benchmarks).

Standard library only, except scipy's t quantile, imported when a verdict needs it.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence, Tuple


def t_quantile(confidence: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def mean_and_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """(mean, sample standard deviation); None where there are too few values."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def judge(diffs: Sequence[float], confidence: float, pooled_sd: Optional[float] = None,
          pooled_df: int = 0, pooled_pairs: int = 0):
    """(verdict, interval low, interval high, basis) of the paired differences ``diffs``
    (d > 0 agrees with the paper): the Student-t interval of their mean, from their own spread
    with 2 values or more, else (one value) from ``pooled_sd`` with ``pooled_df`` degrees of
    freedom; without any spread a difference cannot be told from noise."""
    n = len(diffs)
    if n == 0:
        return "not run", None, None, None
    mean, std = mean_and_std(diffs)
    if n >= 2:
        half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
        basis = f"own spread ({n} seeds)"
    elif pooled_sd is not None and pooled_df > 0:
        half = t_quantile(confidence, pooled_df) * pooled_sd
        basis = f"1 seed; spread pooled over {pooled_pairs} multi-seed pairs"
    else:
        return "within noise", None, None, "1 seed; no spread measured yet"
    lo, hi = mean - half, mean + half
    verdict = "holds" if lo > 0 else "reversed" if hi < 0 else "within noise"
    return verdict, lo, hi, basis


def paired_ratio(num: list, den: list) -> dict:
    """Per-rep tokens/s ratios of two variants timed side by side (step time of ``den`` over step
    time of ``num``, rep by rep): the median and the spread (quartiles, extremes) over the reps."""
    r = sorted(d / n for n, d in zip(num, den))
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2], "min": r[0], "max": r[-1],
            "reps": len(r)}
