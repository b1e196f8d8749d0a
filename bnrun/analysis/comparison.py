"""Two runs side by side (`bnrun compare A B`): the options that differ (and the ones that always
matter), the final metrics with their difference, and the per-epoch curves. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from bnrun.analysis.grouping import HYPERPARAMETERS
from bnrun.analysis.metrics import metric_value, signed
from bnrun.config import impl_text
from bnrun.store import EpochRecord, RunRecord

# Always shown, equal or not: what the run is.
ESSENTIAL = ("status", "arch", "bn", "impl", "seed", "epochs")
COMPARED = ESSENTIAL + tuple(name for name in HYPERPARAMETERS if name != "epochs") + ("bn_path", "device")
# (label, metric, kind): kind "pct" (accuracy, difference in points), "loss", "seconds"
FINAL_METRICS = (
    ("test acc. (population)", "test_acc_population", "pct"),
    ("test acc. (running avg.)", "test_acc_running", "pct"),
    ("best val. acc.", "best_val_acc", "pct"),
    ("final val. acc.", "val_acc", "pct"),
    ("train acc. (population)", "train_acc_population", "pct"),
    ("final train loss", "train_loss", "loss"),
    ("test loss (population)", "test_loss_population", "loss"),
    ("seconds per epoch", "seconds_per_epoch", "seconds"),
)


@dataclass(frozen=True)
class RunDiff:
    a: RunRecord
    b: RunRecord
    options: tuple[tuple[str, object, object], ...]  # (option, value in a, value in b): essential or different
    shared: tuple[tuple[str, object], ...]  # the other options, equal in both
    metrics: tuple[tuple[str, str, float | None, float | None], ...]  # (label, kind, a, b)
    curves: tuple[tuple[int, EpochRecord | None, EpochRecord | None], ...]  # per epoch


DECIMALS = {"pct": 2, "loss": 4, "seconds": 2}  # a final metric's decimals, in its values and their differences


def value_text(kind: str, value: float | None) -> str:
    """A final metric's value in its kind's decimals and unit: '93.07 %', '0.0850', '29.03 s'."""
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * value:.{DECIMALS[kind]}f} %"
    return f"{value:.{DECIMALS[kind]}f}" + (" s" if kind == "seconds" else "")


def difference(kind: str, a: float | None, b: float | None) -> str:
    """b − a in the decimals of its column's kind (FINAL_METRICS), with a true minus sign: '+0.0004', '−0.05 pp'."""
    if a is None or b is None:
        return "—"
    if kind == "pct":
        return f"{signed(100 * (b - a), DECIMALS[kind])} pp"
    return signed(b - a, DECIMALS[kind]) + (" s" if kind == "seconds" else "")


def option_of(run: RunRecord, name: str):
    return impl_text(run.bn, run.bn_impl, run.fused) if name == "impl" else getattr(run, name)


def diff_runs(a: RunRecord, b: RunRecord, epochs_a: list[EpochRecord], epochs_b: list[EpochRecord]) -> RunDiff:
    options, shared = [], []
    for name in COMPARED:
        va, vb = option_of(a, name), option_of(b, name)
        if name in ESSENTIAL or va != vb:
            options.append((name, va, vb))
        else:
            shared.append((name, va))
    metrics = tuple((label, kind, metric_value(a, name), metric_value(b, name)) for label, name, kind in FINAL_METRICS)
    by_a, by_b = {e.epoch: e for e in epochs_a}, {e.epoch: e for e in epochs_b}
    curves = tuple((epoch, by_a.get(epoch), by_b.get(epoch)) for epoch in sorted(by_a.keys() | by_b.keys()))
    return RunDiff(a, b, tuple(options), tuple(shared), metrics, curves)
