"""Small statistics without SciPy: sample mean/std and the paired t-test's two-sided p-value."""

from __future__ import annotations

import math
from dataclasses import dataclass


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

    def verdict(self, alpha: float = 0.05) -> str:
        if self.n < 2 or self.p_value is None:
            return f"n={self.n}: cannot test"
        word = "significant" if self.p_value < alpha else "not significant"
        return f"n={self.n}: {word} (p={self.p_value:.3g})"


def paired_t_test(a: list[float], b: list[float]) -> PairedTest:
    """Student's paired t-test on a[i] − b[i]."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    s = summarize(diffs)
    if s.n < 2 or not s.std:
        return PairedTest(s.n, s.mean, s.std, None, None)
    t = s.mean / (s.std / math.sqrt(s.n))
    return PairedTest(s.n, s.mean, s.std, t, student_t_two_sided_p(t, s.n - 1))


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def _beta_continued_fraction(x: float, a: float, b: float, iterations: int = 300, eps: float = 1e-15) -> float:
    """Lentz's method for the continued fraction of the incomplete beta function."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, iterations + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return result
