"""Rich tables for the terminal: runs, one run, an evaluation. Presentation only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from bnrun.analysis.diagnostic_summaries import mode_gap
from bnrun.config import impl_label
from bnrun.store import DiagnosticRecord, EpochRecord, RunRecord

if TYPE_CHECKING:  # importing the run layer would pull in torch for every table
    from bnrun.run.reevaluation import EvalResult
    from bnrun.run.reproduction import Reproduction

STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "failed": "red",
    "interrupted": "yellow",
    "diverged": "magenta",
}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def runs_table(runs: list[RunRecord], orphans: set[int] = frozenset()) -> Table:
    """`orphans`: running rows whose process is gone, shown as such (read-only: the next writing
    command marks them failed)."""
    table = Table(title=f"{len(runs)} runs")
    for column in (
        "id",
        "status",
        "arch",
        "bn",
        "impl",
        "seed",
        "epochs",
        "test % (pop)",
        "test % (run)",
        "time",
        "note",
    ):
        table.add_column(column, justify="right" if column in ("id", "seed", "epochs") else "left")
    for run in runs:
        style = STATUS_STYLE.get(run.status, "")
        status = f"[{style}]{run.status}[/]" + (" [red](process gone)[/]" if run.id in orphans else "")
        table.add_row(
            str(run.id),
            status,
            run.arch,
            run.bn,
            impl_label(run.bn_impl, run.fused),
            str(run.seed),
            f"{run.epochs_completed}/{run.epochs}",
            pct(run.test_acc_population),
            pct(run.test_acc_running),
            "—" if run.duration_s is None else f"{run.duration_s:.0f}s",
            (run.note or "")[:60],
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
        table.add_row(
            str(e.epoch),
            f"{e.train_loss:.4f}",
            pct(e.train_acc),
            f"{e.val_loss:.4f}",
            pct(e.val_acc),
            f"{e.lr:.4g}",
            f"{e.seconds:.1f}",
        )
    return table


def evaluation_table(result: EvalResult) -> Table:
    run, ev = result.run, result.evaluation
    table = Table(title=f"run {run.id}: {run.arch} bn={run.bn} ({run.bn_impl}) seed={run.seed}, "
                  + (f"evaluation {ev.id}" if ev.id is not None else "not stored (--save keeps it)"))
    for column in ("statistics", "val %", "test %", "test loss", "stored test %", "same"):
        table.add_column(column, justify="right")
    rows = (
        ("running averages", ev.val_acc_running, ev.test_acc_running, ev.test_loss_running, run.test_acc_running),
        ("population", ev.val_acc_population, ev.test_acc_population, ev.test_loss_population, run.test_acc_population),
    )
    for name, val, test, loss, stored in rows:
        table.add_row(name, pct(val), pct(test), f"{loss:.4f}", pct(stored), "yes" if test == stored else "[red]no[/]")
    for size, (loss, test) in sorted(ev.batch_stats().items()):
        table.add_row(f"batch statistics, batches of {size}", "—", pct(test), f"{loss:.4f}", "—", "")
    return table


def diagnostic_values(records: list[DiagnosticRecord], kind: str) -> dict:
    """{(epoch, name, x): value} of one kind."""
    return {(r.epoch, r.name, r.x): r.value for r in records if r.kind == kind}


def num(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def diagnostics_tables(records: list[DiagnosticRecord], epochs: list[EpochRecord]) -> list[Table]:
    """The run's diagnostics (bnrun.training.diagnostics): r(η) at initialization, per-epoch probes, per-layer
    values."""
    if not records:
        return []
    ratio = Table(title="one-step loss ratio at initialization, r(η) = L(w − η∇L)/L(w) (Bjorck et al. 2018)")
    ratio.add_column("η", justify="right")
    ratio.add_column("r(η)", justify="right")
    for (_, _, eta), value in sorted(diagnostic_values(records, "loss_ratio").items(), key=lambda item: item[0][2]):
        ratio.add_row(f"{eta:.3g}", num(value))
    return [ratio, epoch_probe_table(records, epochs), layer_table(records)]


def epoch_probe_table(records: list[DiagnosticRecord], epochs: list[EpochRecord]) -> Table:
    table = Table(
        title="per epoch: prediction vs batch-statistics validation accuracy; smoothness along the gradient "
              "(Santurkar et al. 2018)"
    )
    for column in (
        "epoch",
        "val % (running)",
        "val % (batch stats)",
        "gap",
        "loss range",
        "max ‖Δ∇L‖",
        "β-smoothness",
        "probe s",
    ):
        table.add_column(column, justify="right")
    kinds = {
        kind: {e: v for (e, _, _), v in diagnostic_values(records, kind).items()}
        for kind in ("val_acc_batch_stats", "loss_range", "grad_change", "beta_smoothness", "seconds")
    }
    for e in epochs:
        batch = kinds["val_acc_batch_stats"].get(e.epoch)
        gap = None if batch is None else mode_gap(e.val_acc, batch)
        table.add_row(
            str(e.epoch),
            pct(e.val_acc),
            pct(batch),
            num(gap, "+.2f"),
            num(kinds["loss_range"].get(e.epoch)),
            num(kinds["grad_change"].get(e.epoch)),
            num(kinds["beta_smoothness"].get(e.epoch)),
            num(kinds["seconds"].get(e.epoch), ".2f"),
        )
    return table


def layer_table(records: list[DiagnosticRecord]) -> Table:
    last = max((r.epoch for r in records), default=0)
    table = Table(title=f"per layer, at initialization → after epoch {last}: gradient norm; BN input mean and std")
    for column in ("layer", "‖∇‖ init", f"‖∇‖ epoch {last}", "BN input mean", "BN input std"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    values = {kind: diagnostic_values(records, kind) for kind in ("grad_norm", "bn_input_mean", "bn_input_std")}
    layers = sorted(
        {name for kind in values.values() for (_, name, _) in kind},
        key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")],
    )
    for layer in layers:
        init = {kind: num(values[kind].get((0, layer, None)), ".3g") for kind in values}
        final = {kind: num(values[kind].get((last, layer, None)), ".3g") for kind in values}
        moments = [f"{init[k]} → {final[k]}" if (0, layer, None) in values[k] else ""
                   for k in ("bn_input_mean", "bn_input_std")]
        table.add_row(layer, init["grad_norm"], final["grad_norm"], *moments)
    return table


def reproduction_lines(result: Reproduction) -> list[str]:
    original, new = result.original, result.reproduced
    lines = [
        f"run {original.id} ({original.arch} bn={original.bn}, {original.bn_impl}, seed {original.seed}) "
        f"trained again{'' if result.scratch is None else f' into {result.scratch}'}: {new.status}, "
        f"{new.epochs_completed}/{new.epochs} epochs"
    ]
    if result.identical:
        lines.append(f"bit-identical: all {new.epochs_completed} epochs and the final metrics match exactly")
    else:
        first = result.epoch_differences or result.final_differences
        if result.epoch_differences:
            lines.append(f"differs first at {first[0].where}:")
        elif result.final_differences:
            lines.append("every epoch matches; the final metrics differ:")
        else:
            lines.append(f"status differs: stored {original.status}, reproduced {new.status}")
        for d in first:
            amount = "" if d.amount is None else f" (Δ {d.amount:+.3g})"
            lines.append(f"  {d.field}: stored {d.stored!r}, reproduced {d.reproduced!r}{amount}")
    if result.provenance_differences:
        lines.append("provenance that differs: " + "; ".join(result.provenance_differences))
    else:
        lines.append("provenance: same commit, versions, CPU features, threads and device")
    return lines
