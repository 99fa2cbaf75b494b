"""Latency statistics for on-device benchmarks (stdlib only, Python 3.6 syntax).

Latencies come in as integer nanoseconds (``time.perf_counter_ns()`` deltas) and go out in
milliseconds. Percentiles use the nearest-rank rule; the MLPerf-style early-stopping estimate
follows MLPerf LoadGen's SingleStream early stopping (``loadgen/results.cc`` and
``loadgen/early_stopping.cc`` in mlcommons/inference).
"""

import math
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

NS_PER_MS = 1e6


def _ms(ns):
    # type: (float) -> float
    return round(ns / NS_PER_MS, 6)  # 1 ns resolution


def percentile(sorted_values, q):
    # type: (Sequence[float], float) -> float
    """The ``q``-quantile (0 <= q <= 1) of ascending ``sorted_values`` by the nearest-rank rule.

    The result is the value at 1-based rank ``ceil(q * n)``, i.e. index ``ceil(q * n) - 1``
    (clamped to the first value for q = 0): the smallest sample such that at least a fraction
    ``q`` of the samples are less than or equal to it. It is always one of the samples, never
    an interpolation. For 100 samples p90 is the 90th smallest.

    MLPerf LoadGen's ``ProcessLatencies`` indexes ``sorted[floor(q * n)]`` instead, which is one
    rank higher when ``q * n`` is a whole number (for 100 samples it reports the 91st smallest as
    p90) and the same value otherwise.
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError("quantile %r is outside 0..1" % (q,))
    # round() keeps float noise such as 0.7 * 10 == 7.000000000000001 from moving up one rank
    rank = math.ceil(round(q * n, 9))
    return sorted_values[min(n, max(rank, 1)) - 1]


def summary(latencies_ns):
    # type: (Sequence[int]) -> Dict[str, Optional[float]]
    """min, mean, std, p50, p90, p95, p99, p999, max (milliseconds) and n.

    ``std`` is the population standard deviation (divisor n, the spread of the runs that were
    measured, not an estimate for a wider population); 0.0 for a single run. ``p999`` is None
    below 1000 runs, where it would just be the maximum. Percentiles follow :func:`percentile`.
    """
    n = len(latencies_ns)
    if n == 0:
        return {"n": 0, "min": None, "mean": None, "std": None, "p50": None, "p90": None,
                "p95": None, "p99": None, "p999": None, "max": None}
    values = sorted(latencies_ns)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / n
    return {
        "n": n,
        "min": _ms(values[0]),
        "mean": _ms(mean),
        "std": _ms(math.sqrt(var)),
        "p50": _ms(percentile(values, 0.50)),
        "p90": _ms(percentile(values, 0.90)),
        "p95": _ms(percentile(values, 0.95)),
        "p99": _ms(percentile(values, 0.99)),
        "p999": _ms(percentile(values, 0.999)) if n >= 1000 else None,
        "max": _ms(values[-1]),
    }


# --- MLPerf LoadGen early stopping --------------------------------------------------------------
#
# LoadGen treats each query as an independent trial that is "overlatency" (above the true
# p-quantile) with probability 1 - p. With t overlatency queries among n, the evidence that the
# true p-quantile is below the observed latency at that rank is
#     odds = P(X <= t),  X ~ Binomial(n, 1 - p)   (LoadGen's BetaRegularized[p, h, 1 + t], h = n - t)
# and LoadGen accepts when odds < 1 - confidence (strictly). For SingleStream it
#   1. requires n >= N(1), the fewest queries for which one overlatency query passes
#      ("Need to process at least N(1) queries for early stopping"), else the run is not valid;
#   2. finds t = the largest number of overlatency queries that still passes for this n (its
#      loop stops at the first i with n < N(i) and uses t = i - 1);
#   3. reports sorted_latencies[n - t] (0-based): it discards the t - 1 highest latencies.
# Because P(X <= i) grows with i for fixed n and shrinks with n for fixed i, "n >= N(i)" is the
# same test as "P(X <= i | n) < 1 - confidence", so t is found with one pass over the binomial CDF
# instead of LoadGen's per-i binary searches. Tolerance is 0, as in LoadGen.


def _log_binom_pmf0(n, q):
    # type: (int, float) -> float
    return n * math.log1p(-q)


def _binom_cdf_le(t, n, q):
    # type: (int, int, float) -> float
    """P(X <= t) for X ~ Binomial(n, q), summed in log space (no underflow for large n)."""
    if t >= n:
        return 1.0
    log_ratio = math.log(q) - math.log1p(-q)
    log_pmf = _log_binom_pmf0(n, q)
    log_total = log_pmf
    for x in range(t):
        log_pmf += math.log((n - x) / (x + 1.0)) + log_ratio
        log_total = _logaddexp(log_total, log_pmf)
    return math.exp(log_total)


def _logaddexp(a, b):
    # type: (float, float) -> float
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


@lru_cache(maxsize=64)
def early_stopping_min_queries(target=0.90, confidence=0.99):
    # type: (float, float) -> int
    """Fewest queries for which LoadGen computes an early-stopping estimate of the ``target``
    percentile: the smallest n with P(Binomial(n, 1 - target) <= 1) < 1 - confidence.

    64 for p90 and 662 for p99 (6636 for p99.9) at confidence 0.99, as LoadGen reports.
    """
    q = 1.0 - target
    limit = 1.0 - confidence
    # No overlatency query at all needs target**n < limit; one allowed needs more, so start there.
    n = max(2, int(math.ceil(math.log(limit) / math.log(target))))
    while _binom_cdf_le(1, n, q) >= limit:
        n += 1
    return n


def early_stopping_overlatency(n, target=0.90, confidence=0.99):
    # type: (int, float, float) -> int
    """LoadGen's t for ``n`` queries: the most overlatency queries that still pass (0 if n is
    below :func:`early_stopping_min_queries`)."""
    if n < early_stopping_min_queries(target, confidence):
        return 0
    q = 1.0 - target
    limit = 1.0 - confidence
    log_limit = math.log(limit)
    log_ratio = math.log(q) - math.log1p(-q)
    log_pmf = _log_binom_pmf0(n, q)
    log_total = log_pmf  # log P(X <= 0)
    t = 0
    for x in range(n):
        # log P(X <= x + 1)
        log_pmf += math.log((n - x) / (x + 1.0)) + log_ratio
        log_total = _logaddexp(log_total, log_pmf)
        if log_total >= log_limit:
            break
        t = x + 1
    return max(t, 1)


def early_stopping_percentile(latencies_ns, target=0.90, confidence=0.99):
    # type: (Sequence[int], float, float) -> Tuple[Optional[float], bool, int]
    """MLPerf LoadGen SingleStream early-stopping estimate of the ``target`` percentile.

    Returns ``(value_ms, valid, min_queries)``. ``value_ms`` is the latency at 0-based index
    ``n - t`` of the sorted latencies, where t is the largest number of overlatency queries
    with P(Binomial(n, 1 - target) <= t) < 1 - confidence: a latency that the true ``target``
    percentile is below with ``confidence``. It is never lower than the plain percentile and
    comes closer to it as n grows. With fewer than ``min_queries`` latencies (64 for p90, 662
    for p99) there is no estimate: ``(None, False, min_queries)``.
    """
    n = len(latencies_ns)
    need = early_stopping_min_queries(target, confidence)
    if n < need:
        return None, False, need
    t = early_stopping_overlatency(n, target, confidence)
    values = sorted(latencies_ns)
    return _ms(values[n - t]), True, need


def log_histogram(latencies_ns, buckets=40):
    # type: (Sequence[int], int) -> Dict[str, List]
    """A compact latency histogram: ``buckets`` log-spaced buckets from the fastest to the slowest
    run. Returns ``{"edges_ms": [buckets + 1 edges], "counts": [buckets counts]}``; bucket i holds
    edges[i] <= latency < edges[i + 1] (the last bucket includes its upper edge)."""
    n = len(latencies_ns)
    if n == 0:
        return {"edges_ms": [], "counts": []}
    lo, hi = float(min(latencies_ns)), float(max(latencies_ns))
    lo = max(lo, 1.0)
    if hi <= lo:
        return {"edges_ms": [_ms(lo), _ms(hi)], "counts": [n]}
    log_lo = math.log(lo)
    step = (math.log(hi) - log_lo) / buckets
    counts = [0] * buckets
    for v in latencies_ns:
        i = int((math.log(max(v, lo)) - log_lo) / step)
        counts[min(max(i, 0), buckets - 1)] += 1
    edges = [_ms(math.exp(log_lo + i * step)) for i in range(buckets + 1)]
    edges[0], edges[-1] = _ms(lo), _ms(hi)
    return {"edges_ms": edges, "counts": counts}
