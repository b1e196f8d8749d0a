"""What each CLI command does, below the parsing: validate, open the store, delegate.

Validation happens before the store or the data are touched, so bad input changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from bnrun.config import ARCHS, BN_IMPLS, DEVICES, OPTIMIZERS, PLACEMENTS, PRECISIONS, SCHEDULES, SweepConfig, TrainConfig
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


def parse_numbers(text: str | int | float, kind: type, option: str, minimum: float, strict: bool = False) -> tuple:
    """'0.01,0.1,1' -> (0.01, 0.1, 1.0): a comma list of numbers, each ≥ minimum (> with strict)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    _require(bool(parts), f"{option}: no value given")
    values = []
    for part in parts:
        try:
            value = kind(part)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = value <= minimum if strict else value < minimum
        bound = "positive" if strict else (f"at least {minimum:g}" if minimum else "≥ 0")
        _require(not bad and value == value, f"{option} must be {bound}, got {part}")
        values.append(value)
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class GridOptions:
    """The training options as typed on the command line: each a value or a comma list."""

    arch: str = "cnn"
    bn: str = "pre"
    bn_impl: str = "custom"
    precision: str = "fp32"
    epochs: str | None = None
    batch_size: str = "128"
    lr: str = "0.05"
    momentum: str = "0.9"
    weight_decay: str = "5e-4"
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    train_subset: str | None = None
    depth: str | None = None
    width: str | None = None
    dropout: str = "0"


def grid_axes(options: GridOptions) -> tuple[tuple[str, tuple], ...]:
    """Every option parsed and checked, in the order the grid is walked."""
    subset = parse_numbers(options.train_subset, int, "--train-subset", 2) if options.train_subset else (None,)
    batch_sizes = parse_numbers(options.batch_size, int, "--batch-size", 2)
    return (
        ("arch", split_list(options.arch, ARCHS, "--arch")),
        ("bn", split_list(options.bn, PLACEMENTS, "--bn")),
        ("bn_impl", split_list(options.bn_impl, BN_IMPLS, "--bn-impl")),
        ("precision", split_list(options.precision, PRECISIONS, "--precision")),
        ("optimizer", split_list(options.optimizer, OPTIMIZERS, "--optimizer")),
        ("schedule", split_list(options.schedule, SCHEDULES, "--schedule")),
        ("epochs", parse_numbers(options.epochs, int, "--epochs", 0, strict=True) if options.epochs else (None,)),
        ("batch_size", batch_sizes),
        ("lr", parse_numbers(options.lr, float, "--lr", 0, strict=True)),
        ("momentum", parse_numbers(options.momentum, float, "--momentum", 0)),
        ("weight_decay", parse_numbers(options.weight_decay, float, "--weight-decay", 0)),
        ("train_subset", subset),
        ("depth", parse_numbers(options.depth, int, "--depth", 1) if options.depth else (None,)),
        ("width", parse_numbers(options.width, int, "--width", 1) if options.width else (None,)),
        ("dropout", dropout_rates(options.dropout)),
    )


def dropout_rates(text: str) -> tuple[float, ...]:
    rates = parse_numbers(text, float, "--dropout", 0)
    _require(all(rate < 1 for rate in rates), f"--dropout must be below 1, got {text}")
    return rates


def build_sweep(options: GridOptions, *, seeds: int | None = None, explicit_seeds: list[int] = (), augment: bool = True,
                fused: bool | None = None, channels_last: bool | None = None, device: str = "auto", force: bool = False,
                data_dir: Path | None = None, diagnostics: bool = False, checkpoint: bool = True) -> SweepConfig:
    """Check every option and build the sweep's frozen configuration (torch is imported only
    once everything else checked out, so that bad input is answered at once). `fused` and
    `channels_last` default to the fast path (each applies where it can: the custom BN, the CNN)."""
    axes = grid_axes(options)
    chosen_seeds = _choose_seeds(seeds, list(explicit_seeds))
    _require(device in DEVICES, f"--device: unknown value {device!r}; choose from {', '.join(DEVICES)}")
    _require(not (fused and dict(axes)["bn_impl"] == ("torch",)), "--fused applies to --bn-impl custom only")
    _require(data_dir is None or Path(data_dir).expanduser().is_dir(), f"--data-dir {data_dir} does not exist")
    from bnrun.train import resolve_device

    try:
        device = resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _require_precisions(dict(axes)["precision"], device)
    base = TrainConfig(fused=fused is not False, channels_last=channels_last is not False, augment=augment, device=device)
    return SweepConfig(axes=axes, seeds=chosen_seeds, base=base, force=force, data_dir=data_dir, diagnostics=diagnostics,
                       checkpoint=checkpoint)


def _require_precisions(precisions: tuple[str, ...], device: str) -> None:
    from bnrun.precision import bf16_unsupported

    why = bf16_unsupported(device) if "bf16" in precisions else None
    _require(why is None, f"--precision bf16: {why}; use --precision fp32")


@contextlib.contextmanager
def open_store(db: str | None, read_only: bool = False) -> Iterator[Store]:
    """The store, after telling stderr what opening it changed (created, upgraded, runs reaped).
    `read_only` stores are never created, migrated, reaped or written."""
    store = Store(db, read_only=read_only)
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


EXECUTORS = ("local", "ray")


def executor_options(executor: str, address: str | None, cpus: float, gpus: float):
    """None for the local executor, else the Ray options, checked."""
    _require(executor in EXECUTORS, f"--executor: unknown value {executor!r}; choose from {', '.join(EXECUTORS)}")
    _require(executor == "ray" or (address is None and cpus == 1.0 and gpus == 0.0),
             "--ray-address, --cpus-per-trial and --gpus-per-trial need --executor ray")
    _require(cpus > 0, f"--cpus-per-trial must be positive, got {cpus:g}")
    _require(gpus >= 0, f"--gpus-per-trial must be ≥ 0, got {gpus:g}")
    if executor == "local":
        return None
    from bnrun.ray_executor import RayOptions

    return RayOptions(address, cpus, gpus)


def train(sweep: SweepConfig, db: str | None, ray_options=None):
    from bnrun import data as data_mod
    from bnrun.progress import RichReporter
    from bnrun.sweep import run_sweep

    data_mod.check_available(sweep.data_dir)  # before any row is written
    with open_store(db) as store:
        if any(config.fused for config in sweep.configs()) and _trains_on_cpu(sweep.base.device) and ray_options is None:
            prepare_fused_kernel()
        if ray_options is None:
            return run_sweep(sweep, store, RichReporter())
        from bnrun.ray_executor import run_sweep_on_ray

        return run_sweep_on_ray(sweep, store, RichReporter(), ray_options)


def _trains_on_cpu(device: str) -> bool:
    from bnrun.train import resolve_device

    return device != "cuda" and resolve_device(device) == "cpu"  # resolve_device refuses an absent cuda


def prepare_fused_kernel() -> None:
    """Build (first time on this machine) and load the C++ kernel before any trial starts, so the
    wait is announced and stays out of the first trial's epoch timings."""
    from bnrun.nn import fused

    if not fused.cpu_kernel_built():
        notice("building the fused batch-norm kernel (once per machine, ~25 s)")
    fused.cpu_kernel()


def sweep_summary(result) -> str:
    parts = [f"{len(result.completed)} completed", f"{len(result.skipped)} skipped (already completed or diverged in the store)"]
    if result.elsewhere:
        parts.append(f"{len(result.elsewhere)} running elsewhere (runs {', '.join(map(str, result.elsewhere))})")
    if result.diverged:
        parts.append(f"{len(result.diverged)} diverged (runs {', '.join(map(str, result.diverged))})")
    if result.failed:
        parts.append(f"{len(result.failed)} failed (runs {', '.join(map(str, result.failed))})")
    return "; ".join(parts)


def evaluate(db: str | None, run_id: int, data_dir: Path | None, device: str, batch_stats: str | None = None):
    from bnrun.evaluate import evaluate_run

    sizes = parse_numbers(batch_stats, int, "--batch-stats", 2) if batch_stats else ()
    with open_store(db) as store:
        return evaluate_run(store, run_id, data_dir, device, sizes)


def reproduce(db: str | None, run_id: int, scratch: Path | None, data_dir: Path | None):
    """Retrain a stored trial into a scratch store; the original store is opened read-only."""
    from bnrun import data as data_mod
    from bnrun.progress import RichReporter
    from bnrun.reproduce import reproduce_run
    from bnrun.sweep import DatasetCache

    _require(scratch is None or not scratch.exists(), f"--scratch {scratch} exists; give a new path (the reproduced run is kept there)")
    _require(scratch is None or scratch.parent.is_dir(), f"--scratch: directory {scratch.parent if scratch else ''} does not exist")
    with open_store(db, read_only=True) as store:
        store.get_run(run_id)  # an unknown id fails before the data are touched
        data_mod.check_available(data_dir)
        return reproduce_run(store, run_id, DatasetCache(data_dir).get, RichReporter(), scratch)


def run_filters(arch: str | None, bn: str | None, status: str | None) -> dict[str, tuple[str, ...]]:
    return {
        "archs": split_list(arch, ARCHS, "--arch") if arch else (),
        "placements": split_list(bn, PLACEMENTS, "--bn") if bn else (),
        "statuses": split_list(status, STATUSES, "--status") if status else (),
    }


def list_runs(db: str | None, filters: dict) -> tuple[list[RunRecord], set[int]]:
    """The runs, and the ids of `running` ones whose process is gone (reaped by the next writing command)."""
    with open_store(db, read_only=True) as store:
        return store.list_runs(**filters), store.orphan_ids()


def show_run(db: str | None, run_id: int) -> tuple[RunRecord, list[EpochRecord], list]:
    with open_store(db, read_only=True) as store:
        return store.get_run(run_id), store.epochs(run_id), store.diagnostics_by_run([run_id])[run_id]


@dataclass(frozen=True)
class ReportRequest:
    fmt: str
    metric: str
    run_filter: RunFilter
    expected_seeds: int | None
    by: str | None = None  # pivot: this option's values as columns


EMPTY_HINT = "no completed trials match; run some first, e.g.: bnrun train --arch mlp,cnn --bn pre,post --seeds 3"


def report_request(fmt, metric, arch, bn, bn_impl, run_id, since, seeds, by: str | None = None,
                   where: list[str] = ()) -> ReportRequest:
    from bnrun.formats import FORMATS
    from bnrun.report import METRICS, PIVOT_FIELDS, parse_run_ids, parse_where

    _require(fmt in FORMATS, f"--format: unknown value {fmt!r}; choose from {', '.join(FORMATS)}")
    by = by.replace("-", "_") if by else None
    _require(by is None or by in PIVOT_FIELDS, f"--by: unknown option {by!r}; choose from {', '.join(PIVOT_FIELDS)}")
    _require(metric in METRICS, f"--metric: unknown value {metric!r}; choose from {', '.join(METRICS)}")
    _require(seeds is None or seeds > 0, f"--seeds must be positive, got {seeds}")
    try:
        ids = parse_run_ids(run_id) if run_id else None
        conditions = parse_where(list(where))
        since_dt = datetime.fromisoformat(since) if since else None
    except ValueError as error:
        known = any(flag in str(error) for flag in ("--run-id", "--where"))
        raise UsageError(str(error) if known else f"--since: {since!r} is not a date like 2026-11-24") from None
    run_filter = RunFilter(
        archs=split_list(arch, ARCHS, "--arch") if arch else (),
        placements=split_list(bn, PLACEMENTS, "--bn") if bn else (),
        impls=split_list(bn_impl, BN_IMPLS, "--bn-impl") if bn_impl else (),
        run_ids=ids, since=since_dt, where=conditions,
    )
    return ReportRequest(fmt, metric, run_filter, seeds, by)


def build(db: str | None, request: ReportRequest):
    with open_store(db, read_only=True) as store:
        return build_in(store, request)


def build_in(store: Store, request: ReportRequest):
    from bnrun.report import build_report, diagnostic_summaries

    result = build_report(store.list_runs(), request.metric, request.run_filter, request.expected_seeds)
    run_ids = [r.id for g in result.groups for r in g.runs]
    epochs = store.epochs_by_run(run_ids) if result.groups else {}
    if any(r.diagnostics for g in result.groups for r in g.runs):
        result = replace(result, diagnostics=diagnostic_summaries(result.groups, store.diagnostics_by_run(run_ids), epochs))
    return result, epochs


def build_pivot(db: str | None, request: ReportRequest):
    from bnrun.report import build_pivot as pivot_of

    with open_store(db, read_only=True) as store:
        return pivot_of(store.list_runs(), request.by, request.metric, request.run_filter)


def report(db: str | None, request: ReportRequest, standalone: bool = False):
    """A rich renderable (table format) or text; a hint string when nothing matches."""
    from bnrun import formats

    if request.by:
        pivot = build_pivot(db, request)
        return formats.render_pivot(pivot, request.fmt, standalone) if pivot.rows else EMPTY_HINT
    result, _ = build(db, request)
    if not result.groups:
        return EMPTY_HINT
    if request.fmt == "table":
        return formats.to_rich(result)
    return formats.render_text(result, request.fmt, standalone)


DIAGNOSTICS = ("loss_ratio", "mode_gap", "smoothness", "grad_norm", "batch_stats")


def plot(db: str | None, request: ReportRequest, output: Path, x: str | None = None, diagnostic: str | None = None):
    """Learning curves; or the metric against option `x`; or one diagnostic. The hint when nothing matches."""
    from bnrun import plot as plots
    from bnrun.formats import PERCENT_METRICS
    from bnrun.report import METRICS

    _require(not (x and diagnostic), "--x and --diagnostic are exclusive; give one of them")
    _require(diagnostic is None or diagnostic in DIAGNOSTICS, f"--diagnostic: unknown value {diagnostic!r}; choose from {', '.join(DIAGNOSTICS)}")
    if x:
        pivot = build_pivot(db, replace(request, by=x))
        if not pivot.rows:
            return EMPTY_HINT
        scale = 100.0 if request.metric in PERCENT_METRICS else 1.0
        return plots.plot_against_option(pivot, output, METRICS[request.metric], scale)
    with open_store(db, read_only=True) as store:
        result, epochs = build_in(store, request)
        if not result.groups:
            return EMPTY_HINT
        run_ids = [r.id for g in result.groups for r in g.runs]
        if diagnostic == "batch_stats":
            return plots.plot_batch_stats(batch_stat_rows(store, result.groups), output)
        if diagnostic:
            return plots.plot_diagnostic(list(result.groups), store.diagnostics_by_run(run_ids), epochs, diagnostic, output)
    return plots.plot_learning_curves(list(result.groups), epochs, output)


def batch_stat_rows(store: Store, groups) -> list[tuple[str, dict[int, list[float]]]]:
    """Per group: {batch size: [test accuracy per run]} from each run's latest `eval --batch-stats`."""
    import json

    rows = []
    for group in groups:
        series: dict[int, list[float]] = {}
        for run in group.runs:
            latest = [e for e in store.evaluations(run.id) if e.batch_stats_json]
            for size, (_, accuracy) in (json.loads(latest[-1].batch_stats_json).items() if latest else ()):
                series.setdefault(int(size), []).append(accuracy)
        if series:
            rows.append((f"{group.label()} (n={len(group.runs)})", series))
    if not rows:
        raise UsageError("no evaluation with batch statistics among these runs; run e.g.: bnrun eval --run-id N --batch-stats 2,8,32,128")
    return rows


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
