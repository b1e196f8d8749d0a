"""Statistics for the report: sample mean/std, Student's paired t-test with a confidence
interval for the mean difference (scipy.stats), and Holm–Bonferroni over a family of tests."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MIN_TRIALS = 3  # below this a comparison is flagged: the t-test has too few degrees of freedom to mean much
CONFIDENCE = 0.95


def p_text(p: float | None) -> str:
    """A p-value as every view prints it: two significant digits, one below 0.001 ('0.013', '8e-05'); '—' for none."""
    return "—" if p is None else f"{p:.2g}" if p >= 0.001 else f"{p:.0e}"


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (n−1); None when n < 2


def summarize(values: list[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, None)
    return Summary(n, mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)))


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_diff: float | None
    std_diff: float | None
    t: float | None
    p_value: float | None  # two-sided; None when n < 2 or the differences do not vary
    ci_low: float | None = None  # CONFIDENCE interval of the mean difference
    ci_high: float | None = None
    p_holm: float | None = None  # Holm-adjusted over every comparison of the report

    @property
    def too_few(self) -> bool:
        return self.n < MIN_TRIALS

    def significant(self, alpha: float = 0.05) -> bool:
        """Significant after the Holm correction (the raw p-value when no family was corrected)."""
        p = self.p_holm if self.p_holm is not None else self.p_value
        return p is not None and p < alpha

    def verdict(self, alpha: float = 0.05) -> str:
        if self.n < 2 or self.p_value is None:
            return f"n={self.n}: cannot test"
        holm = "" if self.p_holm is None else f", Holm p={p_text(self.p_holm)}"
        word = "significant" if self.significant(alpha) else "not significant"
        if self.p_holm is not None:
            word += " after Holm"
        few = f" (n < {MIN_TRIALS}: too few seeds to rely on)" if self.too_few else ""
        return f"n={self.n}: {word} (p={p_text(self.p_value)}{holm}){few}"


def paired_t_test(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> PairedTest:
    """Student's paired t-test on a[i] − b[i], with the t-based confidence interval of the mean."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    s = summarize(diffs)
    if s.n < 2:
        return PairedTest(s.n, s.mean, s.std, None, None)
    if not s.std:  # identical differences: no spread to test against, the interval is the point
        return PairedTest(s.n, s.mean, s.std, None, None, s.mean, s.mean)
    from scipy.stats import ttest_rel  # imported on first use: commands that print no test start faster

    result = ttest_rel(a, b)
    interval = result.confidence_interval(confidence)
    return PairedTest(s.n, s.mean, s.std, float(result.statistic), float(result.pvalue), float(interval.low),
                      float(interval.high))


def holm_adjust(p_values: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values (None entries are left out of the family):
    the i-th smallest of m becomes max over j ≤ i of min(1, (m − j + 1)·p_(j))."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(ranked)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def with_holm(tests: list[PairedTest]) -> list[PairedTest]:
    """The tests with `p_holm` filled in, the family being all of them."""
    adjusted = holm_adjust([t.p_value for t in tests])
    return [replace(t, p_holm=p) for t, p in zip(tests, adjusted)]
