"""What each CLI command does, below the parsing: validate, open the store, delegate.

Validation happens before the store or the data are touched, so bad input changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bnrun.config import ARCHS, BN_IMPLS, DEVICES, OPTIMIZERS, PLACEMENTS, SCHEDULES, SweepConfig, TrainConfig
from bnrun.errors import UsageError
from bnrun.report import RunFilter
from bnrun.store import STATUSES, EpochRecord, RunRecord, Store

__all__ = ["ARCHS", "PLACEMENTS", "build_sweep", "train", "evaluate", "list_runs", "show_run"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def split_list(value: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma list of allowed values, deduplicated in order; UsageError names the unknown ones."""
    items = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise UsageError(f"{option}: unknown value {', '.join(unknown) or repr(value)}; choose from {', '.join(allowed)} (comma-separated)")
    return items


def _choose_seeds(seeds: int | None, explicit: list[int]) -> tuple[int, ...]:
    _require(seeds is None or not explicit, "--seeds and --seed are exclusive; give one of them")
    if explicit:
        _require(all(s >= 0 for s in explicit), "--seed must be ≥ 0")
        return tuple(dict.fromkeys(explicit))
    count = 1 if seeds is None else seeds
    _require(count > 0, f"--seeds must be a positive count, got {count}")
    return tuple(range(count))


def build_sweep(*, archs, placements, bn_impl, seeds, explicit_seeds, epochs, batch_size, lr, momentum,
                weight_decay, optimizer, schedule, augment, train_subset, fused, device, force, data_dir) -> SweepConfig:
    """Check every option and build the sweep's frozen configuration."""
    from bnrun.train import resolve_device

    _require(bn_impl in BN_IMPLS, f"--bn-impl: unknown value {bn_impl!r}; choose from {', '.join(BN_IMPLS)}")
    _require(optimizer in OPTIMIZERS, f"--optimizer: unknown value {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    _require(schedule in SCHEDULES, f"--schedule: unknown value {schedule!r}; choose from {', '.join(SCHEDULES)}")
    _require(device in DEVICES, f"--device: unknown value {device!r}; choose from {', '.join(DEVICES)}")
    _require(epochs is None or epochs > 0, f"--epochs must be positive, got {epochs}")
    _require(batch_size >= 2, f"--batch-size must be at least 2 (batch norm needs two values), got {batch_size}")
    _require(lr > 0, f"--lr must be positive, got {lr}")
    _require(momentum >= 0, f"--momentum must be ≥ 0, got {momentum}")
    _require(weight_decay >= 0, f"--weight-decay must be ≥ 0, got {weight_decay}")
    _require(train_subset is None or train_subset >= 2, f"--train-subset must be at least 2, got {train_subset}")
    _require(not (fused and bn_impl == "torch"), "--fused applies to --bn-impl custom only")
    _require(data_dir is None or Path(data_dir).expanduser().is_dir(), f"--data-dir {data_dir} does not exist")
    try:
        device = resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    base = TrainConfig(bn_impl=bn_impl, fused=fused, batch_size=batch_size, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, optimizer=optimizer, schedule=schedule, augment=augment,
                       train_subset=train_subset, device=device)
    return SweepConfig(archs=archs, placements=placements, seeds=_choose_seeds(seeds, explicit_seeds), base=base,
                       epochs=epochs, force=force, data_dir=data_dir)


@contextlib.contextmanager
def open_store(db: str | None) -> Iterator[Store]:
    """The store, after telling stderr what opening it changed (created, upgraded, runs reaped)."""
    store = Store(db)
    if store.migration is not None:
        notice(store.migration.describe(store.name))
    if store.reaped:
        notice(f"marked runs {', '.join(map(str, store.reaped))} failed: their process ended without finishing")
    try:
        yield store
    finally:
        store.close()


def notice(message: str) -> None:
    from bnrun.progress import stderr

    stderr.print(f"bnrun: {message}", highlight=False, markup=False, soft_wrap=True)


def train(sweep: SweepConfig, db: str | None):
    from bnrun import data as data_mod
    from bnrun.progress import RichReporter
    from bnrun.train import run_sweep

    data_mod.check_available(sweep.data_dir)  # before any row is written
    if sweep.base.fused and _trains_on_cpu(sweep.base.device):  # (--fused with --bn-impl torch is refused earlier)
        prepare_fused_kernel()
    with open_store(db) as store:
        return run_sweep(sweep, store, RichReporter())


def _trains_on_cpu(device: str) -> bool:
    from bnrun.train import resolve_device

    return device != "cuda" and resolve_device(device) == "cpu"  # resolve_device refuses an absent cuda


def prepare_fused_kernel() -> None:
    """Build (first time on this machine) and load the C++ kernel before any trial starts, so the
    wait is announced and stays out of the first trial's epoch timings."""
    from bnrun.nn import fused

    notice("preparing the fused batch-norm kernel (built once per machine, ~25 s the first time)")
    fused.cpu_kernel()


def sweep_summary(result) -> str:
    parts = [f"{len(result.completed)} completed", f"{len(result.skipped)} skipped (already in the store)"]
    if result.diverged:
        parts.append(f"{len(result.diverged)} diverged (runs {', '.join(map(str, result.diverged))})")
    if result.failed:
        parts.append(f"{len(result.failed)} failed (runs {', '.join(map(str, result.failed))})")
    return "; ".join(parts)


def evaluate(db: str | None, run_id: int, data_dir: Path | None, device: str):
    from bnrun.evaluate import evaluate_run

    with open_store(db) as store:
        return evaluate_run(store, run_id, data_dir, device)


def run_filters(arch: str | None, bn: str | None, status: str | None) -> dict[str, tuple[str, ...]]:
    return {
        "archs": split_list(arch, ARCHS, "--arch") if arch else (),
        "placements": split_list(bn, PLACEMENTS, "--bn") if bn else (),
        "statuses": split_list(status, STATUSES, "--status") if status else (),
    }


def list_runs(db: str | None, filters: dict) -> list[RunRecord]:
    with open_store(db) as store:
        return store.list_runs(**filters)


def show_run(db: str | None, run_id: int) -> tuple[RunRecord, list[EpochRecord]]:
    with open_store(db) as store:
        return store.get_run(run_id), store.epochs(run_id)


@dataclass(frozen=True)
class ReportRequest:
    fmt: str
    metric: str
    run_filter: RunFilter
    expected_seeds: int | None


EMPTY_HINT = "no completed trials match; run some first, e.g.: bnrun train --arch mlp,cnn --bn pre,post --seeds 3"


def report_request(fmt, metric, arch, bn, bn_impl, run_id, since, seeds) -> ReportRequest:
    from bnrun.formats import FORMATS
    from bnrun.report import METRICS, parse_run_ids

    _require(fmt in FORMATS, f"--format: unknown value {fmt!r}; choose from {', '.join(FORMATS)}")
    _require(metric in METRICS, f"--metric: unknown value {metric!r}; choose from {', '.join(METRICS)}")
    _require(seeds is None or seeds > 0, f"--seeds must be positive, got {seeds}")
    try:
        ids = parse_run_ids(run_id) if run_id else None
        since_dt = datetime.fromisoformat(since) if since else None
    except ValueError as error:
        raise UsageError(str(error) if run_id and "--run-id" in str(error) else f"--since: {since!r} is not a date like 2026-11-24") from None
    run_filter = RunFilter(
        archs=split_list(arch, ARCHS, "--arch") if arch else (),
        placements=split_list(bn, PLACEMENTS, "--bn") if bn else (),
        impls=split_list(bn_impl, BN_IMPLS, "--bn-impl") if bn_impl else (),
        run_ids=ids, since=since_dt,
    )
    return ReportRequest(fmt, metric, run_filter, seeds)


def build(db: str | None, request: ReportRequest):
    from bnrun.report import build_report

    with open_store(db) as store:
        runs = store.list_runs()
        result = build_report(runs, request.metric, request.run_filter, request.expected_seeds)
        epochs = store.epochs_by_run([r.id for g in result.groups for r in g.runs]) if result.groups else {}
    return result, epochs


def report(db: str | None, request: ReportRequest, standalone: bool = False):
    """A rich renderable (table format) or text; a hint string when nothing matches."""
    from bnrun import formats

    result, _ = build(db, request)
    if not result.groups:
        return EMPTY_HINT
    if request.fmt == "table":
        return formats.to_rich(result)
    return formats.render_text(result, request.fmt, standalone)


def plot(db: str | None, request: ReportRequest, output: Path):
    from bnrun.plot import plot_learning_curves

    result, epochs = build(db, request)
    if not result.groups:
        return EMPTY_HINT
    return plot_learning_curves(list(result.groups), epochs, output)


def emit(content, output: Path | None, console) -> None:
    """Text or a rich renderable, to `output` if given (the empty-store hint always to the console)."""
    if output is None or content == EMPTY_HINT:
        if isinstance(content, str):
            console.file.write(content if content.endswith("\n") else content + "\n")
        else:
            console.print(content)
        return
    from rich.console import Console

    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as handle:
        if isinstance(content, str):
            handle.write(content)
        else:
            Console(file=handle, width=160, color_system=None).print(content)
