"""Progress on stderr with rich: an overall bar for the sweep and a per-epoch bar (its loss at the epoch's end).
`Reporter` is the interface executors report to; `SilentReporter` implements it doing nothing
(library use, tests), `RichReporter` with bars."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from bnrun.config import TrainConfig, bn_text, option_text
from bnrun.store import EpochRecord, FinalMetrics, RunRecord, RunStatus
from bnrun.training.results import TrainingProgress

stderr = Console(stderr=True)


LABEL_HEAD = ("arch", "bn", "bn_impl", "fused")  # the options every trial label names


def trial_label(config: TrainConfig, seed: int, varied: tuple[str, ...] = ()) -> str:
    """'cnn bn=pre (custom+fused) lr=0.1 seed=0': the model, the implementation, the value of each option
    the grid varies (`varied`), so that no two trials of a grid read alike, and the seed."""
    options = "".join(f" {name}={option_text(getattr(config, name))}" for name in varied if name not in LABEL_HEAD)
    return f"{config.arch} {bn_text(config.bn, config.bn_impl, config.fused)}{options} seed={seed}"


def brief_label(config: TrainConfig, seed: int, varied: tuple[str, ...] = ()) -> str:
    """'lr=0.1 batch_size=64 seed=0': what sets the trial apart in its grid, for a bar's narrow column
    (the whole label where the grid varies nothing but the seed)."""
    if not varied:
        return trial_label(config, seed)
    return " ".join(f"{name}={option_text(getattr(config, name))}" for name in varied) + f" seed={seed}"


def bar_columns() -> tuple[ProgressColumn, ...]:
    """The bars' columns at fixed widths but for the info (a trial's label, an epoch's loss), which takes the
    rest of the line and ends in … where the line would outgrow the terminal: at 80 columns the bars and times
    stay whole beside a long label."""
    return (
        TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=len("epoch 10/10"))),
        BarColumn(bar_width=12),
        MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=7)),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


class Reporter(TrainingProgress, Protocol):
    """What a sweep tells whoever watches it, on top of the training loop's progress."""

    def sweep_started(self, total: int, description: str = "", varied: tuple[str, ...] = ()) -> None: ...
    def trial_skipped(self, done: RunRecord, config: TrainConfig, seed: int) -> None: ...
    def trial_started(self, run_id: int, config: TrainConfig, seed: int) -> None: ...
    def trial_finished(self, run_id: int, status: str, metrics: FinalMetrics | None, note: str = "") -> None: ...
    def remote_trial_finished(self, run_id: int | None, config: TrainConfig, seed: int, status: str) -> None: ...
    def sweep_finished(self) -> None: ...


class SilentReporter(Reporter):
    """A Reporter that reports nothing (every method is the protocol's own, doing nothing)."""


class RichReporter(SilentReporter):
    """Bars on stderr; one summary line per trial so the log stays readable when piped."""

    def __init__(self, console: Console = stderr) -> None:
        self.console = console
        self.progress = Progress(*bar_columns(), console=console, transient=False, expand=True)
        self.sweep_task = None
        self.epoch_task = None
        self.label = ""
        self.varied: tuple[str, ...] = ()  # the options the grid varies, which each trial's label names

    def line(self, text: str, **settings) -> None:
        """One log line: wrapped to a terminal's width, whole when piped (a log is read line by line)."""
        self.console.print(text, soft_wrap=not self.console.is_terminal, **settings)

    def sweep_started(self, total: int, description: str = "", varied: tuple[str, ...] = ()) -> None:
        self.varied = varied
        if description:
            self.line(f"grid: {description}", highlight=False)
        self.progress.start()
        self.sweep_task = self.progress.add_task("trials", total=total, info="")

    def trial_skipped(self, done: RunRecord, config: TrainConfig, seed: int) -> None:
        # why on a line of its own, under the label, as a finished trial's accuracies
        self.line(f"{'skip':<11} run {done.id}: {trial_label(config, seed, self.varied)}")
        if done.status == RunStatus.RUNNING:
            self.line(f"{'':<11} running elsewhere (host {done.host}, pid {done.pid})")
        else:
            self.line(f"{'':<11} already {done.status} (--force reruns it)")
        self.progress.advance(self.sweep_task)

    def trial_started(self, run_id: int, config: TrainConfig, seed: int) -> None:
        self.label = f"run {run_id}: {trial_label(config, seed, self.varied)}"
        self.progress.update(self.sweep_task, info=f"run {run_id}: {brief_label(config, seed, self.varied)}")

    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None:
        self.drop_epoch_bar()
        self.epoch_task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, info="")

    def drop_epoch_bar(self) -> None:
        """The epoch's bar removed, forgotten before it goes: a Ctrl-C that lands between the two must not leave
        trial_finished a task to remove twice (a KeyError and a traceback instead of "interrupted")."""
        task, self.epoch_task = self.epoch_task, None
        if task is not None:
            self.progress.remove_task(task)

    def batch(self) -> None:
        self.progress.update(self.epoch_task, advance=1)

    def epoch_finished(self, record: EpochRecord) -> None:
        accuracy = 100 * record.val_acc
        self.progress.update(self.epoch_task, info=f"loss {record.train_loss:.4f} val. acc. {accuracy:.2f} %")

    def trial_finished(self, run_id: int, status: str, metrics: FinalMetrics | None, note: str = "") -> None:
        self.drop_epoch_bar()
        if metrics:  # the accuracies on a line of their own, under the label: together they outgrow 80 columns
            self.line(f"{status:<11} {self.label}")
            self.line(f"{'':<11} test acc. {100 * metrics.test_acc_population:.2f} % (population stats), "
                      f"{100 * metrics.test_acc_running:.2f} % (running averages)")
        else:
            self.line(f"{status:<11} {self.label}: {note}")
        self.progress.advance(self.sweep_task)

    def remote_trial_finished(self, run_id: int | None, config: TrainConfig, seed: int, status: str) -> None:
        """A trial an executor ran in another process (its epochs are in the store, not here)."""
        where = f"run {run_id}" if run_id is not None else "no run"
        self.line(f"{status:<11} {where}: {trial_label(config, seed, self.varied)}")
        self.progress.advance(self.sweep_task)

    def sweep_finished(self) -> None:
        self.progress.stop()
