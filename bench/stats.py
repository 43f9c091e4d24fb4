"""Summaries the benchmark scripts print: nearest-rank percentiles of a list of samples."""
import statistics


def percentile(sorted_v, p):
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_v) - 1, int(-(-p * len(sorted_v) // 100)) - 1))
    return sorted_v[k]


def summary(v):
    s = sorted(v)
    return {"n": len(s), "min": s[0], "p50": percentile(s, 50), "p90": percentile(s, 90),
            "p99": percentile(s, 99), "max": s[-1], "mean": statistics.fmean(s)}
