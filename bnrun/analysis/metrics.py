"""The report's metrics: what each one is called, how it is read off a stored trial, which way is
better, and how it is shown (percent for accuracies, digits per metric)."""

from __future__ import annotations

from bnrun.store import RunRecord

METRICS = {
    "test_acc_population": "test acc. (population stats)",
    "test_acc_running": "test acc. (running averages)",
    "best_val_acc": "best val. acc.",
    "val_acc": "final val. acc.",
    "train_loss": "final train loss",
    "seconds_per_epoch": "s / epoch",
    "gen_gap": "train − test acc.",
    "gen_gap_loss": "test − train loss",
    "train_gap": "last-epoch train − test acc.",
}
CHANCE = 0.1  # accuracy of a guess among Fashion-MNIST's 10 classes
CHANCE_MARGIN = 0.005  # an accuracy within this of CHANCE is chance level: the model learned nothing


def at_chance(accuracy: float | None) -> bool:
    """Whether an accuracy (a fraction) is chance level."""
    return accuracy is not None and accuracy <= CHANCE + CHANCE_MARGIN


PERCENT_METRICS = {"test_acc_population", "test_acc_running", "best_val_acc", "val_acc", "gen_gap", "train_gap"}
HIGHER_IS_BETTER = PERCENT_METRICS - {"gen_gap", "train_gap"}

# The generalization gap (Zhang et al., 2017): the final model in prediction mode on the training
# split against the test split; train_gap uses the last epoch's running training accuracy
# (training mode, augmented batches), the only train measure of trials stored before 0005.
GAPS = {
    "gen_gap": ("train_acc_population", "test_acc_population"),
    "gen_gap_loss": ("test_loss_population", "train_loss_population"),
    "train_gap": ("train_acc", "test_acc_population"),
}


def metric_value(run: RunRecord, name: str) -> float | None:
    if name == "seconds_per_epoch":
        return None if not run.duration_s or not run.epochs_completed else run.duration_s / run.epochs_completed
    if name in GAPS:
        high, low = (getattr(run, field) for field in GAPS[name])
        return None if high is None or low is None else high - low
    return getattr(run, name)


def scale(metric: str) -> float:
    """Accuracies (and accuracy gaps) are shown as percentages; other metrics as they are."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def signed(value: float | None, places: int = 2) -> str:
    """'+0.03', '−0.13' (a true minus sign, as in 'a − b'), '—' for none: a difference in every text view."""
    return "—" if value is None else f"{value:+.{places}f}".replace("-", "−")


def digits(metric: str) -> int:
    return 1 if metric == "seconds_per_epoch" else (3 if metric == "train_loss" else 2)


def scaled_pair(mean: float | None, std: float | None, metric: str) -> tuple[float | None, float | None]:
    """A mean and a spread in the metric's display unit."""
    factor = scale(metric)
    return (None if mean is None else mean * factor), (None if std is None else std * factor)


def mean_std_text(mean: float, std: float | None, places: int, pm: str = "±") -> str:
    """'91.23 ± 0.40' (the mean alone without a spread)."""
    return f"{mean:.{places}f}" + ("" if std is None else f" {pm} {std:.{places}f}")
