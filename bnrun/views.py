"""Rich tables for the terminal: runs, one run, an evaluation. Presentation only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from bnrun.store import EpochRecord, RunRecord

if TYPE_CHECKING:  # importing bnrun.evaluate would pull in torch for every table
    from bnrun.evaluate import EvalResult

STATUS_STYLE = {"completed": "green", "running": "cyan", "failed": "red", "interrupted": "yellow", "diverged": "magenta"}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def runs_table(runs: list[RunRecord]) -> Table:
    table = Table(title=f"{len(runs)} runs")
    for column in ("id", "status", "arch", "bn", "impl", "seed", "epochs", "test % (pop)", "test % (run)", "time", "note"):
        table.add_column(column, justify="right" if column in ("id", "seed", "epochs") else "left")
    for run in runs:
        style = STATUS_STYLE.get(run.status, "")
        table.add_row(
            str(run.id), f"[{style}]{run.status}[/]", run.arch, run.bn, run.bn_impl + ("+fused" if run.fused else ""),
            str(run.seed), f"{run.epochs_completed}/{run.epochs}", pct(run.test_acc_population), pct(run.test_acc_running),
            "—" if run.duration_s is None else f"{run.duration_s:.0f}s", (run.note or "")[:60],
        )
    return table


def run_table(run: RunRecord) -> Table:
    table = Table(title=f"run {run.id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in run.__dict__.items():
        if key != "config_json":
            table.add_row(key, "—" if value is None else str(value))
    return table


def epochs_table(epochs: list[EpochRecord]) -> Table:
    table = Table(title="epochs")
    for column in ("epoch", "train loss", "train %", "val loss", "val %", "lr", "seconds"):
        table.add_column(column, justify="right")
    for e in epochs:
        table.add_row(str(e.epoch), f"{e.train_loss:.4f}", pct(e.train_acc), f"{e.val_loss:.4f}", pct(e.val_acc),
                      f"{e.lr:.4g}", f"{e.seconds:.1f}")
    return table


def evaluation_table(result: "EvalResult") -> Table:
    run, ev = result.run, result.evaluation
    table = Table(title=f"run {run.id}: {run.arch} bn={run.bn} ({run.bn_impl}) seed={run.seed}, evaluation {ev.id}")
    for column in ("statistics", "val %", "test %", "test loss", "stored test %", "same"):
        table.add_column(column, justify="right")
    rows = (
        ("running averages", ev.val_acc_running, ev.test_acc_running, ev.test_loss_running, run.test_acc_running),
        ("population", ev.val_acc_population, ev.test_acc_population, ev.test_loss_population, run.test_acc_population),
    )
    for name, val, test, loss, stored in rows:
        table.add_row(name, pct(val), pct(test), f"{loss:.4f}", pct(stored), "yes" if test == stored else "[red]no[/]")
    return table
