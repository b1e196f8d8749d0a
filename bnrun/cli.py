"""The `bnrun` command line: parses options, builds a configuration, delegates, prints.

Results go to stdout; progress and errors go to stderr. Expected failures print one line and
exit non-zero (2 for bad input, 130 for an interrupt); no command shows a traceback for them.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bnrun.errors import BnrunError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Study a from-scratch Batch Norm on Fashion-MNIST: train, evaluate, report.")
# Piped output (files, tests, CI logs) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DbOption = Annotated[Optional[str], typer.Option("--db", help="Store: a SQLite path or SQLAlchemy URL (env BNRUN_DB; default ./bnrun.db).")]
DataDirOption = Annotated[Optional[Path], typer.Option("--data-dir", help="Where Fashion-MNIST lives or goes (env BNRUN_DATA_DIR; default ~/.cache/bnrun/data).")]
WhereOption = Annotated[Optional[list[str]], typer.Option("--where", help="Filter: OPTION=VALUE, e.g. epochs=10 or batch_size=128 (repeatable).")]


def friendly_errors(command):
    """Turn bnrun's expected failures and Ctrl-C into one stderr line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BnrunError as error:
            err.print(f"bnrun: error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("bnrun: interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


LIST = "; a comma list makes a grid axis"


@app.command()
@friendly_errors
def train(
    arch: Annotated[str, typer.Option(help="mlp or cnn" + LIST + " (mlp,cnn).")] = "cnn",
    bn: Annotated[str, typer.Option(help="BN placement: none, pre = g(BN(f(x))), post = BN(g(f(x)))" + LIST + ".")] = "pre",
    bn_impl: Annotated[str, typer.Option(help="custom (bnrun.nn) or torch (reference baseline)" + LIST + ".")] = "custom",
    seeds: Annotated[Optional[int], typer.Option(help="Run seeds 0..N-1.")] = None,
    seed: Annotated[Optional[list[int]], typer.Option(help="An explicit seed (repeatable).")] = None,
    epochs: Annotated[Optional[str], typer.Option(help="Epochs (default: mlp 20, cnn 10)" + LIST + ".")] = None,
    batch_size: Annotated[str, typer.Option(help="Mini-batch size" + LIST + ".")] = "128",
    lr: Annotated[str, typer.Option(help="Peak learning rate" + LIST + " (0.01,0.1,1).")] = "0.05",
    momentum: Annotated[str, typer.Option(help="SGD momentum (Nesterov)" + LIST + ".")] = "0.9",
    weight_decay: Annotated[str, typer.Option(help="Weight decay" + LIST + ".")] = "5e-4",
    optimizer: Annotated[str, typer.Option(help="sgd or adam" + LIST + ".")] = "sgd",
    schedule: Annotated[str, typer.Option(help="onecycle, cosine or constant" + LIST + ".")] = "onecycle",
    augment: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    train_subset: Annotated[Optional[str], typer.Option(help="Use only the first N training images" + LIST + ".")] = None,
    depth: Annotated[Optional[str], typer.Option(help="Hidden blocks (default: the assignment's model, MLP 256-128, CNN 2 conv blocks)" + LIST + ".")] = None,
    width: Annotated[Optional[str], typer.Option(help="MLP hidden width (default 128 with --depth) or CNN base channels (default 32)" + LIST + ".")] = None,
    dropout: Annotated[str, typer.Option(help="Dropout rate after each hidden block" + LIST + ".")] = "0",
    precision: Annotated[str, typer.Option(help="fp32, or bf16 (autocast; needs AVX512-BF16/AMX or a bf16 GPU)" + LIST + ".")] = "fp32",
    fused: Annotated[Optional[bool], typer.Option("--fused/--no-fused", help="The custom BN's fused fast path (C++ kernel on CPU, torch.compile on GPU). Default: on.", show_default=False)] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="The CNN in channels_last (NHWC) memory order. Default: on.", show_default=False)] = None,
    diagnostics: Annotated[bool, typer.Option(help="Also record batch-norm diagnostics: one-step loss ratio at init, gradient norms, BN input moments, train/test-mode gap, smoothness probes.")] = False,
    checkpoint: Annotated[bool, typer.Option(help="Keep each completed trial's weights in the store (eval and reproduce need them); a large sweep may go without.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    force: Annotated[bool, typer.Option(help="Rerun trials already completed in the store.")] = False,
    executor: Annotated[str, typer.Option(help="local (one trial after another, here) or ray (one Ray task per trial).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join, e.g. auto or 10.0.0.5:6379 (default: start a local one).")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="Ray: CPUs each trial reserves (also its torch thread count).")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="Ray: GPUs each trial reserves.")] = 0.0,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Train the grid of every listed option's values × seeds; each trial becomes a row in the store."""
    from bnrun import commands

    options = commands.GridOptions(arch=arch, bn=bn, bn_impl=bn_impl, precision=precision, epochs=epochs, batch_size=batch_size, lr=lr,
                                   momentum=momentum, weight_decay=weight_decay, optimizer=optimizer, schedule=schedule,
                                   train_subset=train_subset, depth=depth, width=width, dropout=dropout)
    sweep = commands.build_sweep(options, seeds=seeds, explicit_seeds=seed or [], augment=augment, fused=fused,
                                 channels_last=channels_last, device=device, force=force, data_dir=data_dir, diagnostics=diagnostics,
                                 checkpoint=checkpoint)
    result = commands.train(sweep, db, commands.executor_options(executor, ray_address, cpus_per_trial, gpus_per_trial))
    out.print(commands.sweep_summary(result))
    if result.failed:
        raise typer.Exit(1)


@app.command("eval")
@friendly_errors
def eval_(
    run_id: Annotated[int, typer.Option("--run-id", help="The run to evaluate.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    batch_stats: Annotated[Optional[str], typer.Option(help="Also predict with the statistics of each test batch of these sizes (comma list, each ≥ 2), e.g. 2,8,32,128.")] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-evaluate a stored trial (validation and test, running and population statistics, optionally batch statistics)."""
    from bnrun import commands, views

    result = commands.evaluate(db, run_id, data_dir, device, batch_stats)
    out.print(views.evaluation_table(result))


@app.command()
@friendly_errors
def runs(
    arch: Annotated[Optional[str], typer.Option(help="Filter: comma list of archs.")] = None,
    bn: Annotated[Optional[str], typer.Option(help="Filter: comma list of placements.")] = None,
    status: Annotated[Optional[str], typer.Option(help="Filter: comma list of statuses.")] = None,
    db: DbOption = None,
) -> None:
    """List the trials in the store."""
    from bnrun import commands, views

    filters = commands.run_filters(arch, bn, status)
    out.print(views.runs_table(*commands.list_runs(db, filters)))


@app.command()
@friendly_errors
def show(run_id: Annotated[int, typer.Argument(help="The run id.")], db: DbOption = None) -> None:
    """One trial: configuration, final metrics and the per-epoch table."""
    from bnrun import commands, views

    run, epochs, diagnostics = commands.show_run(db, run_id)
    out.print(views.run_table(run))
    out.print(views.epochs_table(epochs))
    for table in views.diagnostics_tables(diagnostics, epochs):
        out.print(table)


@app.command()
@friendly_errors
def reproduce(
    run_id: Annotated[int, typer.Argument(help="The stored run to train again.")],
    scratch: Annotated[Optional[Path], typer.Option(help="Keep the reproduced run in this new store (default: a temporary one).")] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Train a stored trial again from its configuration and seed (the store is only read) and compare: exit 0 if bit-identical, 1 if not."""
    from bnrun import commands, views

    result = commands.reproduce(db, run_id, scratch, data_dir)
    out.print("\n".join(views.reproduction_lines(result)), highlight=False, markup=False)
    if not result.identical:
        raise typer.Exit(1)


ReportFormat = Annotated[str, typer.Option("--format", help="table, latex, markdown, csv or json.")]


@app.command()
@friendly_errors
def report(
    fmt: ReportFormat = "table",
    output: Annotated[Optional[Path], typer.Option(help="Write to this file instead of stdout.")] = None,
    standalone: Annotated[bool, typer.Option(help="LaTeX: a complete compilable document.")] = False,
    metric: Annotated[str, typer.Option(help="Headline column: test_acc_population, test_acc_running, best_val_acc, val_acc, train_loss, seconds_per_epoch.")] = "test_acc_population",
    arch: Annotated[Optional[str], typer.Option(help="Filter: comma list of archs.")] = None,
    bn: Annotated[Optional[str], typer.Option(help="Filter: comma list of placements.")] = None,
    bn_impl: Annotated[Optional[str], typer.Option(help="Filter: custom, torch.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Filter: ids and ranges, e.g. 1-12,15.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Filter: trials started on/after this date (YYYY-MM-DD[THH:MM]).")] = None,
    where: WhereOption = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds each group should have (default: what its sweep asked for, else 3).")] = None,
    by: Annotated[Optional[str], typer.Option(help="Pivot: this option's values as columns (lr, batch_size, epochs, ...), placements as rows; diverged trials counted.")] = None,
    db: DbOption = None,
) -> None:
    """Mean ± std across seeds per configuration, paired comparisons (95% CI, Holm-corrected), in five formats."""
    from bnrun import commands

    request = commands.report_request(fmt, metric, arch, bn, bn_impl, run_id, since, seeds, by, where or [])
    text = commands.report(db, request, standalone)
    commands.emit(text, output, out)


@app.command()
@friendly_errors
def plot(
    output: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("learning_curves.png"),
    arch: Annotated[Optional[str], typer.Option(help="Filter: comma list of archs.")] = None,
    bn: Annotated[Optional[str], typer.Option(help="Filter: comma list of placements.")] = None,
    bn_impl: Annotated[Optional[str], typer.Option(help="Filter: custom, torch.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Filter: ids and ranges, e.g. 1-12,15.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Filter: trials started on/after this date.")] = None,
    where: WhereOption = None,
    x: Annotated[Optional[str], typer.Option("--x", help="Plot the metric against this option (lr, batch_size, ...), one line per placement; diverged trials marked.")] = None,
    metric: Annotated[str, typer.Option(help="The metric for --x (as in report).")] = "test_acc_population",
    diagnostic: Annotated[Optional[str], typer.Option(help="Plot a diagnostic instead: loss_ratio, mode_gap, smoothness, grad_norm (train --diagnostics) or batch_stats (eval --batch-stats).")] = None,
    db: DbOption = None,
) -> None:
    """Learning curves with ±std bands (default), the metric against an option (--x), or a diagnostic, as a PNG."""
    from bnrun import commands

    request = commands.report_request("table", metric, arch, bn, bn_impl, run_id, since, None, where=where or [])
    written = commands.plot(db, request, output, x, diagnostic)
    err.print(written if isinstance(written, str) else f"wrote {written}", highlight=False)


def main() -> None:
    app()
