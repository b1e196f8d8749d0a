"""What each CLI command does once its options are parsed: open the store, delegate to the layer
below, hand back what the command prints. Opening the store tells stderr what it changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from bnrun.analysis.comparison import RunDiff, diff_runs
from bnrun.analysis.listing import RunQuery, select_runs
from bnrun.analysis.queries import ReportRequest, batch_stats_of, pivot_of, report_of
from bnrun.cli.options import BATCH_STATS, PlotRequest
from bnrun.cli.views import CommandConsole
from bnrun.config import SweepConfig, counted
from bnrun.errors import NothingMatched, UsageError, unknown_choice, writing
from bnrun.requests.parsing import require
from bnrun.store import OUTCOMES, RunLabels, RunRecord, RunStatus, Store

stderr = CommandConsole(stderr=True)


@contextlib.contextmanager
def open_store(db: str | None, read_only: bool = False, create: bool = False) -> Iterator[Store]:
    """The store, after telling stderr what opening it changed (created, upgraded, runs reaped).
    `read_only` stores are never created, migrated, reaped or written; only `create` (train) makes a new one."""
    store = Store(db, read_only=read_only, create=create)
    if store.migration is not None:
        notice(store.migration.describe(store.name))
    if store.reaped:
        notice(f"marked runs {', '.join(map(str, store.reaped))} failed: their process ended without finishing")
    try:
        yield store
    finally:
        store.close()


def notice(message: str) -> None:
    stderr.say(f"bnrun: {message}")


def train(sweep: SweepConfig, db: str | None, ray_options=None):
    from bnrun.run.progress import RichReporter
    from bnrun.run.sweep import run_sweep
    from bnrun.training.data import check_available
    from bnrun.training.hardware import trains_on_cpu

    check_available(sweep.data_dir)  # before any row is written
    with open_store(db, create=True) as store:
        sweep = settled(sweep, store)
        if ray_options is None and trains_on_cpu(sweep.base.device) and fused_trials_to_run(sweep, store):
            prepare_fused_kernel()
        if ray_options is None:
            return run_sweep(sweep, store, RichReporter())
        from bnrun.run.ray_executor import run_sweep_on_ray

        return run_sweep_on_ray(sweep, store, RichReporter(), ray_options)


def settled(sweep: SweepConfig, store: Store | None) -> SweepConfig:
    """`sweep` with precision auto settled against the store (None: no store yet), said on stderr."""
    from bnrun.run.plan import auto_precision_line, settle_auto_precision

    sweep = sweep if store is None else settle_auto_precision(sweep, store)
    line = auto_precision_line(sweep)
    if line:
        notice(line)
    return sweep


def fused_trials_to_run(sweep: SweepConfig, store: Store) -> bool:
    """Whether any trial this sweep would run (not one the store already holds) trains the fused kernel."""
    from bnrun.run.plan import plan_sweep

    keys = sorted({config.key() for config, _ in sweep.trials() if config.fused})  # as settled per trial
    if not keys:
        return False
    plan = plan_sweep(sweep, store.trial_holders(keys))
    return any(planned.config.fused and planned.to_run > 0 for planned in plan.configs)


def prepare_fused_kernel() -> None:
    """Build (first time on this machine; the build says so in one line) and load the C++ kernel
    before any trial starts, so the wait stays out of the first trial's epoch timings."""
    from bnrun.nn import fused

    fused.cpu_kernel()


def evaluate_stored(db: str | None, run_id: int, data_dir: Path | None, device: str, batch_sizes: tuple[int, ...] = (),
                    save: bool = False):
    """Evaluate a stored trial; the store is only read unless `save` keeps the evaluation in it."""
    from bnrun.run.reevaluation import evaluate_run
    from bnrun.training.hardware import resolve_device

    try:
        device = resolve_device(device)  # a device this machine lacks is a usage error, before the store is opened
    except ValueError as error:
        raise UsageError(str(error)) from None
    with open_store(db, read_only=not save) as store:
        return evaluate_run(store, run_id, data_dir, device, batch_sizes, progress=notice, save=save)


def reproduce_stored(db: str | None, run_id: int, scratch: Path | None, data_dir: Path | None):
    """Retrain a stored trial into a scratch store; the original store is opened read-only."""
    from bnrun.run.progress import RichReporter
    from bnrun.run.reproduction import reproduce_run
    from bnrun.training.data import check_available

    require(
        scratch is None or not scratch.exists(),
        f"--scratch {scratch} exists; give a new path (the reproduced run is kept there)",
    )
    require(
        scratch is None or scratch.parent.is_dir(),
        f"--scratch: directory {scratch.parent if scratch else ''} does not exist",
    )
    with open_store(db, read_only=True) as store:
        require_outcome(store.get_run(run_id))  # an unknown or unfinished run fails before the data are touched
        check_available(data_dir)
        return reproduce_run(store, run_id, data_dir, RichReporter(), scratch)


def require_outcome(run: RunRecord) -> None:
    """Only a trial that ran to an outcome (completed or diverged) can be reproduced: one that was interrupted,
    failed or still runs stopped for a reason of its process, which a retraining would not share."""
    require(run.status in OUTCOMES, f"run {run.id} is {run.status} after {run.epochs_completed} of {run.epochs} "
                                    "epochs: reproduce retrains a run that completed or diverged, and compares the two")


def report(db: str | None, request: ReportRequest, fmt: str, standalone: bool = False, wide: bool = False):
    """A rich renderable (table format) or text; NothingMatched when no trial matches."""
    from bnrun.analysis.rendering import render

    with open_store(db, read_only=True) as store:
        content, epochs, diagnostics = (pivot_of(store, request), {}, {}) if request.by else report_of(store, request)
    if fmt == "html":
        from bnrun.web.html_report import report_html

        return report_html(content, epochs, diagnostics)
    return render(content, fmt, standalone, wide)


def plot(db: str | None, request: PlotRequest) -> Path:
    """Learning curves; or the metric against option `x`; or one diagnostic: the PNG written, carrying
    the request's command and a digest of its data (analysis/provenance.py)."""
    from bnrun.analysis.provenance import made_by

    with made_by(request.command):
        return draw(db, request)


def draw(db: str | None, request: PlotRequest) -> Path:
    from bnrun.analysis import figures
    from bnrun.analysis.metrics import METRICS, scale

    metric = request.report.metric
    with open_store(db, read_only=True) as store:
        if request.x:
            pivot = pivot_of(store, request.report)
            return figures.plot_against_option(pivot, request.output, METRICS[metric], scale(metric))
        result, epochs, _ = report_of(store, request.report)
        if request.diagnostic == BATCH_STATS:
            return figures.plot_batch_stats(batch_stats_of(store, result), request.output, result.recipe)
        if request.diagnostic:
            diagnostics = store.diagnostics_by_run([r.id for g in result.groups for r in g.runs])
            return figures.plot_diagnostic(result, diagnostics, epochs, request.diagnostic, request.output)
    return figures.plot_learning_curves(result, epochs, request.output)


def sweep_summary(result) -> str:
    """What a sweep did: completed and skipped on one line, then a line each for the trials running
    elsewhere, diverged or failed, with their run ids (together they outgrow 80 columns)."""
    lines = [f"{len(result.completed)} completed; {len(result.skipped)} skipped "
             "(already completed or diverged in the store)"]
    for runs, what in ((result.elsewhere, "running elsewhere"), (result.diverged, "diverged"),
                       (result.failed, "failed")):
        if runs:
            lines.append(f"{len(runs)} {what} (runs {', '.join(map(str, runs))})")
    return "\n".join(lines)


def emit(content, output: Path | None, console: Console) -> Path | None:
    """Text or a rich renderable, to `output` if given (the path written), else to the console (None)."""
    if output is None:
        if isinstance(content, str):
            console.file.write(content if content.endswith("\n") else content + "\n")
        else:
            console.print(content)
        return None
    with writing(output), output.open("w") as handle:
        if isinstance(content, str):
            handle.write(content)
        else:
            Console(file=handle, width=console.width, color_system=None).print(content)
    return output


# -- run management: runs, show, compare, tag, delete, restore, export, dry-run -------------------------------

def list_selected(db: str | None, query: RunQuery) -> tuple[list[RunRecord], set[int], dict[int, RunLabels], int]:
    """The runs the query selects (sorted, limited), the ids of `running` ones whose process is
    gone, their labels, and how many matched before the limit."""
    from dataclasses import replace

    with open_store(db, read_only=True) as store:
        runs = store.list_runs(statuses=query.statuses, deleted=query.deleted, tags=query.tags)
        matched = select_runs(runs, replace(query, limit=None))
        if not matched:
            raise nothing_listed(store.count_runs(), query.deleted)
        chosen = matched if query.limit is None else matched[:query.limit]
        return chosen, store.orphan_ids(), store.labels([run.id for run in chosen]), len(matched)


def nothing_listed(held: int, deleted: bool | None) -> NothingMatched:
    """Why a listing is empty: the store holds no run, or the filters, or the choice of the deleted runs
    or the others, leave out the `held` it has."""
    if not held:
        return NothingMatched("the store holds no runs; train some first, e.g.: bnrun train --arch mlp")
    if deleted:
        return NothingMatched("no deleted run matches these filters; bnrun runs lists the others")
    return NothingMatched(f"no run matches these filters (of {held:,} in the store; bnrun runs --deleted lists "
                          "the deleted ones)")


def show_stored(db: str | None, run_id: int):
    """One run with its epochs, diagnostics, labels, stored evaluations and what is known of its weights."""
    with open_store(db, read_only=True) as store:
        run = store.get_run(run_id)
        return (run, store.epochs(run_id), store.diagnostics_by_run([run_id])[run_id], store.labels([run_id])[run_id],
                store.evaluations(run_id), store.checkpoint_info(run_id))


def compare_stored(db: str | None, a: int, b: int) -> RunDiff:
    if a == b:
        raise UsageError(f"compare: run {a} given twice: name two different runs")
    with open_store(db, read_only=True) as store:
        first, second = store.get_runs([a, b])
        epochs = store.epochs_by_run([a, b])
    return diff_runs(first, second, epochs[a], epochs[b])


def label_stored(db: str | None, run_ids: list[int], add: tuple[str, ...], remove: tuple[str, ...],
                 note: str | None) -> tuple[list[RunLabels], dict[str, list[int]]]:
    """Change the runs' tags and note (with nothing to change, only read them): the runs' labels, and the tags
    to remove that some runs lacked (`untagged`). A tag both added and removed is refused: which one was meant
    cannot be told."""
    both_ways = sorted(set(add) & set(remove))
    require(not both_ways, f"tag {', '.join(both_ways)}: given to --add and --remove; give it to one of them")
    if not add and not remove and note is None:
        with open_store(db, read_only=True) as store:
            labels = store.labels(store_ids(store, run_ids))
            return [labels[run_id] for run_id in run_ids], {}
    with open_store(db, read_only=True) as store:
        before = store.labels(store_ids(store, run_ids))  # unknown ids refused before the store is opened for writing
    with open_store(db) as store:
        return store.label_runs(run_ids, add, remove, note), untagged(before, remove)


def untagged(labels: dict[int, RunLabels], remove: tuple[str, ...]) -> dict[str, list[int]]:
    """Each tag to remove that some of the runs lack, with those runs: removing it there changes nothing."""
    lacking = {tag: [run_id for run_id, item in labels.items() if tag not in item.tags] for tag in remove}
    return {tag: run_ids for tag, run_ids in lacking.items() if run_ids}


def store_ids(store: Store, run_ids: list[int]) -> list[int]:
    return [run.id for run in store.get_runs(run_ids)]


def deletable(db: str | None, run_ids: list[int]) -> list[RunRecord]:
    """The runs to delete, read only: unknown ids and running trials refused before anything is asked."""
    with open_store(db, read_only=True) as store:
        runs = store.get_runs(run_ids)
    running = [str(run.id) for run in runs if run.status == RunStatus.RUNNING]
    require(not running, f"run {', '.join(running)} is running; a running trial is never deleted (wait for it to end)")
    return runs


def delete_stored(db: str | None, run_ids: list[int], purge: bool):
    """Soft-delete the runs (a list of records), or purge them (a PurgeRecord)."""
    with open_store(db) as store:
        return store.purge_runs(run_ids) if purge else store.delete_runs(run_ids)


def claim_named(path: Path, name: str):
    """The claim `name` of the claims file at `path`."""
    from bnrun.analysis.claims import load_claims

    claims = {claim.id: claim for claim in load_claims(path)}
    require(name in claims, f"--claim {name!r}: no such claim in {path}; bnrun claims lists them")
    return claims[name]


def claims_of(db: str | None, path: Path, only: tuple[str, ...] = (), families: tuple[str, ...] = ()) -> list:
    """The claims of the file at `path` (those named in `only` and of `families`, if given) computed from the
    store; Holm corrects over each whole family."""
    from bnrun.analysis.claims import evaluate, load_claims

    claims = load_claims(path)
    declared, declared_families = {claim.id for claim in claims}, {claim.family for claim in claims}
    for name in only:
        require(name in declared, f"--id {name!r}: no such claim in {path}; bnrun claims lists them")
    for name in families:
        if name not in declared_families:
            raise UsageError(unknown_choice("--family", name, sorted(declared_families), "family",
                                                f"see the families in {path}"))
    with open_store(db, read_only=True) as store:
        results = evaluate(store, claims)
    return [result for result in results if (not only or result.claim.id in only)
            and (not families or result.claim.family in families)]


def claims_text(results: list, fmt: str, detail: bool = False):
    """The results as a rich table, or markdown (`detail`: a list with statements and evidence), JSON or LaTeX."""
    import json

    from bnrun.analysis import claims
    from bnrun.cli import views

    if fmt == "json":
        return json.dumps([claims.result_record(result) for result in results], indent=2)
    if fmt == "markdown":
        return claims.markdown_detail(results) if detail else claims.markdown(results)
    if fmt == "latex":
        return claims.latex(results)
    return views.claims_table(results)


def drop_checkpoints(db: str | None, run_ids: list[int]) -> int:
    """Remove the runs' stored weights; how many there were."""
    with open_store(db) as store:
        return store.drop_checkpoints(run_ids)


def restore_stored(db: str | None, run_ids: list[int]) -> tuple[list[int], list[int]]:
    """Undo the soft delete of the runs: (the ids restored, the ids that were not deleted)."""
    with open_store(db, read_only=True) as store:
        deleted = [run.id for run in store.get_runs(run_ids) if run.deleted_at is not None]
    if deleted:
        with open_store(db) as store:
            store.restore_runs(deleted)
    return deleted, [run_id for run_id in run_ids if run_id not in deleted]


def export_runs(db: str | None, query: RunQuery, fmt: str) -> tuple[str, str]:
    """The runs as `fmt`, and how many they are ("12 runs")."""
    from bnrun.analysis import export

    runs, _, labels, _ = list_selected(db, query)
    return export.render(export.run_rows(runs, labels), fmt, export.RUN_COLUMNS), counted(len(runs), "run")


def export_epochs(db: str | None, run_ids: list[int], fmt: str) -> tuple[str, str]:
    """The runs' epochs as `fmt`, and how many they are ("20 epochs of 2 runs")."""
    from bnrun.analysis import export

    with open_store(db, read_only=True) as store:
        ids = store_ids(store, run_ids)
        epochs = store.epochs_by_run(ids)
    rows = export.epoch_rows({run_id: epochs[run_id] for run_id in ids})
    count = f"{counted(len(rows), 'epoch')} of {counted(len(ids), 'run')}"
    return export.render(rows, fmt, export.EPOCH_COLUMNS), count


def export_model(db: str | None, run_id: int, output: Path, statistics: str, data_dir: Path | None = None) -> dict:
    from bnrun.run.export import export_model as write_model
    from bnrun.training.data import check_available

    with open_store(db, read_only=True) as store:
        run, blob = store.get_run(run_id), store.load_checkpoint(run_id)
    check_available(data_dir)
    return write_model(run, blob, output, statistics, data_dir)


def plan(sweep: SweepConfig, db: str | None):
    """What `train` would do with this sweep, read only (a missing store is not created)."""
    from bnrun.run.plan import plan_sweep
    from bnrun.store.engine import resolve_url, sqlite_path

    path = sqlite_path(resolve_url(db))
    if path is not None and not path.exists():
        return plan_sweep(settled(sweep, None), [], store_exists=False), str(path)
    with open_store(db, read_only=True) as store:
        sweep = settled(sweep, store)
        holders = store.trial_holders([config.key() for config in sweep.configs()])
        return plan_sweep(sweep, holders), store.name
