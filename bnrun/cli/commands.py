"""The `bnrun` commands: each parses its options into a request, calls one action, prints.

Results go to stdout; progress and errors go to stderr. Expected failures print one line and
exit with a code of `bnrun.errors.ExitCode` (docs/cli.md's table); no command shows a traceback
for them.
"""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer._click import core as click_core
from typer._click import exceptions as click_errors  # Typer's own copy of Click: what its parser raises

from bnrun.analysis.export import EXPORT_FORMATS
from bnrun.analysis.metrics import METRICS
from bnrun.cli.options import BATCH_STATS, EXECUTORS, REPORT_FORMATS, STATISTICS, TRAINING_DIAGNOSTICS, GridOptions
from bnrun.cli.views import CommandConsole
from bnrun.config import DEVICES
from bnrun.errors import BnrunError, ExitCode, printable
from bnrun.registry import MODEL, OPTIONS, PATH, RECIPE, STUDY, Option
from bnrun.requests.parsing import IMPL_LABELS, NUMERIC_FIELDS, FilterOptions, RunSelection, choices_text


def unwrapped(text: str | None) -> str | None:
    """A help text's paragraphs each as one line, for the terminal to wrap: Typer keeps the line breaks of a
    docstring's source past its first paragraph, which at 80 columns left half-filled lines."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split("\n")) for paragraph in paragraphs)


def unwrap_help(command: click_core.Command) -> click_core.Command:
    """`command`'s help, and its subcommands' where it is a group, unwrapped; a switch shown without a type
    (Typer shows <bool> beside --all, as if it took a value)."""
    command.help = unwrapped(command.help)
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "option" and getattr(param, "multiple", False):
            param.metavar = "<str>"  # one value a time, the help saying "repeatable" (Typer shows <list[str]>)
    command.get_help_option = without_type(command.get_help_option)  # --help, which click makes when asked
    for sub in getattr(command, "commands", {}).values():
        unwrap_help(sub)
    return command


def without_type(make_option):
    """`make_option` (a command's get_help_option) giving its option without a type beside it."""

    @functools.wraps(make_option)
    def made(ctx):
        option = make_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return made


class OneLineErrors(typer.core.TyperGroup):
    """Click's own usage errors (a run id that is not a number, an unknown option) as one stderr line, like
    bnrun's: `bnrun: error: ...`, exit 2, instead of Typer's boxed panel. Help texts are unwrapped."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        unwrap_help(self)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except click_errors.ClickException as error:
            err.say(one_line_click_error(error))
            sys.exit(error.exit_code)
        except typer.Abort:
            err.print("bnrun: aborted", highlight=False)
            sys.exit(ExitCode.FAILED)
        sys.exit(code if isinstance(code, int) else 0)


# what pydantic, which parses Typer's numbers, says of a value that is not one, as bnrun's own messages say it
PLAIN_WORDS = {
    "Input should be a valid integer, unable to parse string as an integer": "not an integer",
    "Input should be a valid number, unable to parse string as a number": "not a number",
}


def one_line_click_error(error: click_errors.ClickException) -> str:
    message = " ".join(error.format_message().split())
    if isinstance(error, click_errors.NoSuchOption) and error.possibilities:  # as unknown_choice words a guess
        message = f"no such option: {error.option_name}; did you mean {' or '.join(sorted(error.possibilities))}?"
    for words, plain in PLAIN_WORDS.items():
        message = message.replace(words, plain)
    message = message[:1].lower() + message[1:]  # 'no such option', as bnrun's own lines begin
    context = getattr(error, "ctx", None)
    if isinstance(error, click_errors.UsageError) and context is not None:
        message = message.rstrip(".") + f" (see {context.command_path} --help)"
    return f"bnrun: error: {printable(message)}"


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors,
                  help="Study a from-scratch Batch Norm on Fashion-MNIST: train, evaluate, report.")


out = CommandConsole()
err = CommandConsole(stderr=True)
GRID = GridOptions()  # the training options' defaults (TrainConfig's)
GRID_NOTE = "; a comma list of values is a grid axis"


def panel_options(panel: str) -> tuple[str, ...]:
    return tuple(option.name for option in OPTIONS if option.panel == panel)


TRAIN_PANELS = {
    MODEL + GRID_NOTE: panel_options(MODEL),
    RECIPE + GRID_NOTE: panel_options(RECIPE),
    STUDY: ("seeds", "seed", *panel_options(STUDY), "claim", "claims_file"),
    PATH: (*panel_options(PATH), "device"),
    "What is kept": ("diagnostics", "checkpoint", "force", "dry_run", "yes", "db", "data_dir"),
    "Ray": ("executor", "ray_address", "cpus_per_trial", "gpus_per_trial"),
}


class PanelledCommand(typer.core.TyperCommand):
    """A command whose --help groups its options into rich panels by parameter name (`panels`), so
    that each panel's columns fit 80 columns."""

    panels: dict[str, tuple[str, ...]] = {}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        panel_of = {name: panel for panel, names in self.panels.items() for name in names}
        for param in self.params:
            if param.name in panel_of:
                param.rich_help_panel = panel_of[param.name]


class TrainCommand(PanelledCommand):
    panels = TRAIN_PANELS


FILTER_PANEL = {"Which trials (default: one recipe's, the default where it has any)":
                ("arch", "bn", "bn_impl", "run_id", "since", "where", "everything", "db")}


class ReportCommand(PanelledCommand):
    panels = {"What to show": ("fmt", "output", "standalone", "wide", "metric", "seeds", "by"), **FILTER_PANEL}


class PlotCommand(PanelledCommand):
    panels = {"What to draw": ("output", "x", "metric", "diagnostic"), **FILTER_PANEL}


def option(help_text: str, *names: str, **settings) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help_text, **settings)


DbOption = Annotated[
    Optional[str], option("Store: a SQLite path or SQLAlchemy URL (env BNRUN_DB; default ./bnrun.db).", "--db")
]
DataDirOption = Annotated[
    Optional[Path],
    option("An existing directory where Fashion-MNIST lives or is fetched to (env BNRUN_DATA_DIR; default "
           "~/.cache/bnrun/data); the system copy is only read.", "--data-dir"),
]
WhereOption = Annotated[
    Optional[list[str]],
    option("Filter: OPTION=VALUE[,VALUE...], e.g. epochs=10 or lr=0.1,0.3 (repeatable).", "--where"),
]
ArchFilter = Annotated[Optional[str], option("Filter: comma list of archs.")]
BnFilter = Annotated[Optional[str], option("Filter: comma list of placements.")]
ImplFilter = Annotated[
    Optional[str], option(f"Filter: comma list of {', '.join(IMPL_LABELS)} (custom: fused or not).")
]
RunIdFilter = Annotated[Optional[str], option("Filter: ids and ranges, e.g. 1-12,15.", "--run-id")]
SinceFilter = Annotated[Optional[str], option("Filter: trials started on/after this date (YYYY-MM-DD[THH:MM]).")]
StatusFilter = Annotated[Optional[str], option("Filter: comma list of statuses.")]
TagFilter = Annotated[Optional[list[str]], option("Filter: runs with this tag (repeatable: with every one).")]
SortOption = Annotated[
    str, option("Sort by a field or metric (id, started_at, lr, test_acc_population, ...); -FIELD descending.")
]
LimitOption = Annotated[Optional[int], option("Show only the first N (after sorting).")]
AllOption = Annotated[
    bool, option("Every trial the filters select, on as many screens as it takes (default: one recipe's, one screen).",
                 "--all")
]
RunArguments = Annotated[list[str], typer.Argument(help="Run ids or ranges, e.g. 3 5-7.", show_default=False)]
DeviceOption = Annotated[str, option(f"{choices_text(DEVICES)}.")]


def friendly_errors(command):
    """Turn bnrun's expected failures and Ctrl-C into one stderr line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BnrunError as error:
            err.say(f"bnrun: error: {printable(str(error))}")
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("bnrun: interrupted", highlight=False)
            raise typer.Exit(ExitCode.INTERRUPTED) from None

    return wrapper


def say_wrote(path: Path | None, detail: str = "") -> None:
    """The one stderr line of every command that wrote a file (nothing when it printed to stdout)."""
    if path is not None:
        err.print(f"wrote {path}{detail}", highlight=False, markup=False, soft_wrap=True)


def invocation(context: typer.Context, leave_out: tuple[str, ...] = ("db",)) -> str:
    """The running command as a `bnrun ...` line that makes the same thing again: every option given on the
    command line, in the command's order, values as given (repeated options in their order), without
    the options in `leave_out` (the store: the line must hold on any copy of it)."""
    import shlex

    words = ["bnrun", context.info_name]
    for parameter in context.command.params:
        source = context.get_parameter_source(parameter.name)
        if parameter.name in leave_out or getattr(source, "name", None) != "COMMANDLINE":
            continue
        words += option_words(parameter, context.params[parameter.name])
    return shlex.join(words)


def option_words(parameter, value) -> list[str]:
    name = parameter.opts[0]
    if parameter.is_flag:
        return [name] if value else (parameter.secondary_opts[:1] or [])
    values = value if parameter.multiple else [value]
    return [word for item in values for word in (name, str(item))]


NO_FILTER = FilterOptions()
EVERY_RUN = RunSelection(NO_FILTER)


def with_options(builder, into: str):
    """Give a command the options of `builder` (its parameters, declared once there) in the place of its
    parameter `into`, which receives what `builder` makes of them. Typer reads the options from the
    signature made here."""

    def decorate(command):
        shared = inspect.signature(builder, eval_str=True).parameters
        own = inspect.signature(command, eval_str=True)
        assert into in own.parameters, f"{command.__name__} has no parameter {into!r}"

        @functools.wraps(command)
        def wrapper(**kwargs):
            built = builder(**{name: kwargs.pop(name) for name in shared if name in kwargs})
            return command(**{into: built}, **kwargs)

        parameters = []
        for parameter in own.parameters.values():
            parameters += shared.values() if parameter.name == into else [parameter]
        parameters = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in parameters]
        wrapper.__signature__ = own.replace(parameters=parameters)
        wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return wrapper

    return decorate


def trial_filters(
    arch: ArchFilter = None,
    bn: BnFilter = None,
    bn_impl: ImplFilter = None,
    run_id: RunIdFilter = None,
    since: SinceFilter = None,
    where: WhereOption = None,
) -> FilterOptions:
    """The options that choose trials: report, plot, runs, export runs."""
    return FilterOptions(arch, bn, bn_impl, run_id, since, tuple(where or ()))


@with_options(trial_filters, "filters")
def run_selection(
    filters: FilterOptions = NO_FILTER,
    status: StatusFilter = None,
    tag: TagFilter = None,
    sort: SortOption = RunSelection.sort,
    limit: LimitOption = None,
) -> RunSelection:
    """The options that choose and order runs: runs, export runs."""
    return RunSelection(filters=filters, status=status, tags=tuple(tag or ()), sort=sort, limit=limit)


def training_option(option: Option) -> inspect.Parameter:
    """`train`'s command-line option for a training option of the registry: a comma list, one value, or a
    --name/--no-name switch."""
    if option.flag:
        info = typer.Option(f"{option.flag_name}/--no-{option.flag_name[2:]}", help=option.help, show_default=False)
        annotation = Annotated[Optional[bool], info]
    else:
        annotation = Annotated[Optional[str], typer.Option(option.flag_name, help=option.help)]
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(GRID, option.name),
                             annotation=annotation)


def grid_options(**given) -> GridOptions:
    """The training options as typed: `train`'s registry-generated options."""
    return GridOptions(**given)


PANEL_ORDER = (MODEL, RECIPE, STUDY, PATH)  # --help shows the panels in the order of their first option
grid_options.__signature__ = inspect.Signature(
    [training_option(option) for option in sorted(OPTIONS, key=lambda option: PANEL_ORDER.index(option.panel))])


@app.command(cls=TrainCommand)
@friendly_errors
@with_options(grid_options, "grid")
def train(
    grid: GridOptions = GRID,
    seeds: Annotated[Optional[int], option("Run seeds 0..N-1.")] = None,
    seed: Annotated[Optional[list[int]], option("An explicit seed (repeatable).")] = None,
    diagnostics: Annotated[
        bool,
        option(
            "Also record the batch-norm diagnostics (loss ratio at init, gradient norms, BN input moments, "
            "mode gap, smoothness).",
            "--diagnostics",
        ),
    ] = False,
    checkpoint: Annotated[
        bool,
        option(
            "Keep each completed trial's weights in the store (eval and reproduce need them); "
            "a large sweep may go without."
        ),
    ] = True,
    device: DeviceOption = "auto",
    force: Annotated[bool, option("Rerun trials already completed in the store.", "--force")] = False,
    executor: Annotated[str, option(f"{choices_text(EXECUTORS)}.")] = "local",
    ray_address: Annotated[
        Optional[str], option("Ray cluster to join, e.g. auto or 10.0.0.5:6379 (default: start a local one).")
    ] = None,
    cpus_per_trial: Annotated[float, option("Ray: CPUs each trial reserves (also its torch thread count).")] = 1.0,
    gpus_per_trial: Annotated[
        Optional[float],
        option("Ray: GPUs each trial reserves. Default: 1 with --device cuda, else 0.", show_default=False),
    ] = None,
    dry_run: Annotated[
        bool,
        option("Print the grid and what the store already holds of it, then exit (nothing is trained or created).",
               "--dry-run"),
    ] = False,
    yes: Annotated[bool, option("Train a grid of more than 10,000 trials.", "--yes")] = False,
    claim: Annotated[Optional[str], option(
        "Train what this claim of --claims lacks: its two arms' configurations at the seeds it needs (the "
        "recipe options then come from the claim).")] = None,
    claims_file: Annotated[Path, option("The claims file (with --claim).", "--claims")] = Path("study/claims.toml"),
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Train the grid of every listed option's values × seeds; each trial becomes a row in the store."""
    from bnrun.cli import actions, options, views

    grids, seeds = options.claim_grids(actions.claim_named(claims_file, claim), grid, seeds, seed) if claim else (
        [grid], seeds)
    sweeps = [options.build_sweep(
        arm,
        seeds=seeds,
        explicit_seeds=seed or [],
        device=device,
        force=force,
        data_dir=data_dir,
        diagnostics=diagnostics,
        checkpoint=checkpoint,
        yes=yes,
        executor=executor,
        hardware_known=executor == "local" or ray_address is None,
    ) for arm in grids]
    executor_settings = options.executor_options(executor, ray_address, cpus_per_trial, gpus_per_trial,
                                                 sweeps[0].base.device)
    failed = False
    for sweep in sweeps:
        if dry_run:
            plan, store_name = actions.plan(sweep, db)
            out.print("\n".join(views.plan_lines(plan, store_name)), highlight=False, markup=False)
            out.print(views.plan_table(plan))
            continue
        result = actions.train(sweep, db, executor_settings)
        out.print(actions.sweep_summary(result))
        failed = failed or bool(result.failed)
    if failed:
        raise typer.Exit(ExitCode.FAILED)


@app.command("eval")
@friendly_errors
def eval_(
    run: Annotated[Optional[int], typer.Argument(help="The run to evaluate.", show_default=False)] = None,
    run_id: Annotated[Optional[int], option("The run to evaluate (as the argument).", "--run-id")] = None,
    device: DeviceOption = "auto",
    batch_stats: Annotated[
        Optional[str],
        option(
            "Also predict with the statistics of each test batch of these sizes (comma list, each ≥ 2), e.g. "
            "2,8,32,128."
        ),
    ] = None,
    save: Annotated[
        bool, option("Keep the evaluation in the store (plot --diagnostic batch_stats reads it); default: only read.",
                     "--save")
    ] = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-evaluate a stored trial (validation and test, running and population statistics, optionally batch
    statistics)."""
    from bnrun.cli import actions, views
    from bnrun.cli.options import run_argument, usable_device
    from bnrun.requests.parsing import parse_numbers

    chosen = run_argument(run, run_id)
    sizes = parse_numbers(batch_stats, int, "--batch-stats", 2) if batch_stats else ()
    result = actions.evaluate_stored(db, chosen, data_dir, usable_device(device), sizes, save)
    out.print(views.evaluation_table(result))


@app.command()
@friendly_errors
@with_options(run_selection, "selection")
def runs(
    selection: RunSelection = EVERY_RUN,
    deleted: Annotated[
        bool, option("List the deleted runs instead (bnrun delete; bring one back with bnrun restore).", "--deleted")
    ] = False,
    everything: Annotated[bool, option("Every matching run (in a terminal the default is the newest 30).",
                                       "--all")] = False,
    db: DbOption = None,
) -> None:
    """List the trials in the store: the options that vary among them as columns, the ones they share below."""
    from bnrun.cli import actions, views
    from bnrun.requests.parsing import listing_query

    query = listing_query(selection, deleted, out.is_terminal, everything)
    out.print(views.runs_table(*actions.list_selected(db, query), width=out.width))


@app.command()
@friendly_errors
def show(
    run_id: Annotated[int, typer.Argument(help="The run id.")],
    all_fields: Annotated[
        bool, option("Also the internal fields (claim, process, key, CPU features...).", "--all")
    ] = False,
    db: DbOption = None,
) -> None:
    """One trial: configuration, final metrics, tags and note, the per-epoch table, its stored evaluations."""
    from bnrun.cli import actions, views

    run, epochs, diagnostics, labels, evaluations, weights = actions.show_stored(db, run_id)
    out.print(views.run_table(run, labels, weights, all_fields))
    out.print(views.epochs_table(epochs))
    for table in views.diagnostics_tables(diagnostics, epochs):
        out.print(table)
    if evaluations:
        out.print(views.evaluations_table(evaluations))


@app.command()
@friendly_errors
def reproduce(
    run_id: Annotated[int, typer.Argument(help="The stored run to train again.")],
    scratch: Annotated[
        Optional[Path], option("Keep the reproduced run in this new store (default: a temporary one).")
    ] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Train a stored trial again from its configuration and seed (the store is only read) and compare: exit 0 if
    bit-identical, 1 if not."""
    from bnrun.cli import actions, views

    result = actions.reproduce_stored(db, run_id, scratch, data_dir)
    out.print("\n".join(views.reproduction_lines(result)), highlight=False, markup=False)
    if not result.identical:
        raise typer.Exit(ExitCode.FAILED)


@app.command(cls=ReportCommand)
@friendly_errors
@with_options(trial_filters, "filters")
def report(
    fmt: Annotated[str, option(f"{choices_text(REPORT_FORMATS)}.", "--format")] = "table",
    output: Annotated[
        Optional[Path], option("Write to this file (or a report.EXT inside this directory) instead of stdout.")
    ] = None,
    standalone: Annotated[bool, option("LaTeX only: a complete compilable document.", "--standalone")] = False,
    wide: Annotated[
        bool, option("Table only: every metric and the diagnostics (wider than 80 columns).", "--wide")
    ] = False,
    everything: AllOption = False,
    metric: Annotated[str, option(f"Headline column: {', '.join(METRICS)}.")] = "test_acc_population",
    filters: FilterOptions = NO_FILTER,
    seeds: Annotated[
        Optional[int], option("Seeds each group should have (default: what its sweep asked for, else 3).")
    ] = None,
    by: Annotated[
        Optional[list[str]],
        option(
            "Pivot: this option's values as columns (lr, batch_size, epochs, ...), placements as rows; "
            "diverged trials counted.",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Mean ± std across seeds per configuration, paired comparisons (95% CI, Holm-corrected), in six formats."""
    from bnrun.cli import actions
    from bnrun.cli.options import report_format, report_output
    from bnrun.requests.parsing import one_pivot, report_request

    fmt = report_format(fmt, standalone, wide)
    path = report_output(output, fmt)
    request = report_request(filters, metric, seeds, one_pivot(by), everything)
    content = actions.report(db, request, fmt, standalone, wide)
    say_wrote(actions.emit(content, path, out))


@app.command(cls=PlotCommand)
@friendly_errors
@with_options(trial_filters, "filters")
def plot(
    context: typer.Context,
    output: Annotated[
        Optional[Path],
        option(
            "The figure: .png, .pdf or .svg, or a directory (default: learning_curves.png, METRIC_by_X.png or "
            "DIAGNOSTIC.png)."
        ),
    ] = None,
    everything: Annotated[bool, option("Every trial the filters select, rather than one recipe's; a figure tells "
                                       "only a few series apart, so narrow --all with --where.", "--all")] = False,
    filters: FilterOptions = NO_FILTER,
    metric: Annotated[
        Optional[str], option("The metric for --x (as in report; default test_acc_population).", show_default=False)
    ] = None,
    x: Annotated[
        Optional[str],
        option(
            f"Plot the metric against a numeric option ({', '.join(NUMERIC_FIELDS)}), one line per placement; "
            "diverged trials marked.",
            "--x",
        ),
    ] = None,
    diagnostic: Annotated[
        Optional[str],
        option(
            f"Plot a diagnostic instead: {', '.join(TRAINING_DIAGNOSTICS)} (train --diagnostics) or {BATCH_STATS} "
            "(eval --batch-stats)."
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Learning curves with ±std bands (default), the metric against an option (--x), or a diagnostic."""
    from bnrun.cli import actions
    from bnrun.cli.options import plot_request

    request = plot_request(filters, metric, output, x, diagnostic, everything, command=invocation(context))
    say_wrote(actions.plot(db, request))


@app.command()
@friendly_errors
def compare(
    first: Annotated[int, typer.Argument(help="The first run (a).", show_default=False)],
    second: Annotated[int, typer.Argument(help="The second run (b).", show_default=False)],
    db: DbOption = None,
) -> None:
    """Two runs side by side: the options that differ, the final metrics and their difference, the curves."""
    from bnrun.cli import actions, views

    for table in views.comparison_tables(actions.compare_stored(db, first, second)):
        out.print(table)


@app.command()
@friendly_errors
def tag(
    runs: RunArguments,
    add: Annotated[Optional[list[str]], option("Add this tag (repeatable).")] = None,
    remove: Annotated[Optional[list[str]], option("Remove this tag (repeatable).")] = None,
    note: Annotated[
        Optional[str], option('Your note on the runs, replacing the one they had ("" clears it).', show_default=False)
    ] = None,
    db: DbOption = None,
) -> None:
    """Tag runs and note on them (bnrun runs --tag TAG filters); with neither, print their tags and notes."""
    from bnrun.cli import actions, views
    from bnrun.requests.parsing import run_ids_of, tags_of

    labels, lacking = actions.label_stored(db, run_ids_of(runs), tags_of(add, "--add"), tags_of(remove, "--remove"),
                                           note)
    out.print("\n".join(views.labels_lines(labels, lacking)), highlight=False, markup=False)


@app.command()
@friendly_errors
def delete(
    runs: RunArguments,
    purge: Annotated[
        bool, option("Remove the runs for good: rows, epochs, checkpoints, diagnostics, evaluations, tags.", "--purge")
    ] = False,
    checkpoints: Annotated[
        bool, option("Remove only the runs' stored weights and compact the store: the runs, curves and metrics "
                     "stay; eval, export model and population statistics then have no model to load.", "--checkpoints")
    ] = False,
    yes: Annotated[bool, option("Do not ask for confirmation (needed without a terminal).", "--yes")] = False,
    db: DbOption = None,
) -> None:
    """Delete runs (runs, report and plot leave them out; bnrun restore undoes it), or --purge them for good, or
    drop only their --checkpoints.

    A running trial is never deleted. The deleted runs stay listed by: bnrun runs --deleted."""
    from bnrun.cli import actions
    from bnrun.errors import UsageError
    from bnrun.requests.parsing import require, run_ids_of

    require(not (purge and checkpoints), "--purge and --checkpoints are exclusive: --purge removes the checkpoints too")
    ids = run_ids_of(runs)
    chosen = actions.deletable(db, ids)
    plural = "s" if len(chosen) != 1 else ""
    verb = "purge" if purge else "drop the checkpoints of" if checkpoints else "delete"
    what = f"{verb} {len(chosen)} run{plural} ({', '.join(map(str, ids))})"
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not asking without a terminal: pass --yes to {what}")
        typer.confirm(f"{what[0].upper()}{what[1:]}{', for good' if purge or checkpoints else ''}?", abort=True,
                      err=True)
    if checkpoints:
        removed = actions.drop_checkpoints(db, ids)
        out.print(f"removed {removed} checkpoint{'s' if removed != 1 else ''} of {len(chosen)} run{plural}",
                  highlight=False)
        return
    result = actions.delete_stored(db, ids, purge)
    if purge:
        out.print(
            f"purged runs {', '.join(map(str, result.run_ids))} with {result.epochs} epochs, {result.checkpoints} "
            f"checkpoints, {result.evaluations} evaluations, {result.diagnostics} diagnostics, {result.tags} tags",
            highlight=False,
        )
    else:
        already = {run.id for run in chosen if run.deleted_at is not None}
        deleted = [run_id for run_id in ids if run_id not in already]
        lines = [f"deleted runs {', '.join(map(str, deleted))}; bring them back with: bnrun restore "
                 f"{' '.join(map(str, deleted))}"] if deleted else []
        lines += [f"already deleted, left as they are: runs {', '.join(map(str, sorted(already)))}"] if already else []
        out.print("\n".join(lines), highlight=False)


@app.command()
@friendly_errors
def restore(runs: RunArguments, db: DbOption = None) -> None:
    """Bring deleted runs back (bnrun delete without --purge)."""
    from bnrun.cli import actions
    from bnrun.requests.parsing import run_ids_of

    restored, untouched = actions.restore_stored(db, run_ids_of(runs))
    lines = [f"restored runs {', '.join(map(str, restored))}"] if restored else []
    lines += [f"not deleted, left as they are: runs {', '.join(map(str, untouched))}"] if untouched else []
    out.print("\n".join(lines), highlight=False)


export_app = typer.Typer(no_args_is_help=True, help="Runs and epochs as CSV or JSON; a trained model as a .pt file.")
app.add_typer(export_app, name="export")
ExportFormat = Annotated[str, option(f"{choices_text(EXPORT_FORMATS)}.", "--format")]
OutputOption = Annotated[Optional[Path], option("Write to this file instead of stdout.")]


@export_app.command("runs")
@friendly_errors
@with_options(run_selection, "selection")
def export_runs(
    fmt: ExportFormat = "csv",
    output: OutputOption = None,
    selection: RunSelection = EVERY_RUN,
    deleted: Annotated[bool, option("Export the deleted runs instead.", "--deleted")] = False,
    db: DbOption = None,
) -> None:
    """Every stored field of the runs (filters as in bnrun runs), one row or object per run, with its tags;
    accuracies in percent."""
    from bnrun.cli import actions
    from bnrun.cli.options import export_format

    fmt = export_format(fmt, output)
    query = selection.query(deleted)
    content, count = actions.export_runs(db, query, fmt)
    say_wrote(actions.emit(content, output, out), f" ({count})")


@export_app.command("epochs")
@friendly_errors
def export_epochs(
    runs: RunArguments, fmt: ExportFormat = "csv", output: OutputOption = None, db: DbOption = None
) -> None:
    """The per-epoch rows of the runs (loss, accuracy in percent, learning rate, seconds), one row or object per
    epoch."""
    from bnrun.cli import actions
    from bnrun.cli.options import export_format
    from bnrun.requests.parsing import run_ids_of

    fmt = export_format(fmt, output)
    content, count = actions.export_epochs(db, run_ids_of(runs), fmt)
    say_wrote(actions.emit(content, output, out), f" ({count})")


@export_app.command("model")
@friendly_errors
def export_model(
    run: Annotated[int, typer.Argument(help="The run whose trained model to write.", show_default=False)],
    output: Annotated[Path, option("The .pt file to write.")] = Path("model.pt"),
    statistics: Annotated[
        str, option(f"What the BN layers normalize with: {choices_text(STATISTICS)}.")
    ] = "population",
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write a run's trained model as a .pt file for torch.load(path, weights_only=True) that takes raw images.

    It holds "state_dict" (plain tensors), "model" (build_model's arguments), "input" (the training split's mean
    and std), "classes", "config", "run_id", "test_acc_percent".

    Load it with the lines below. The model is in eval mode and takes raw uint8 (N, 28, 28) images or floats in
    [0, 1].

    model = bnrun.run.export.load_model("model.pt")

    classes = torch.load("model.pt", weights_only=True)["classes"]

    predicted = [classes\\[i] for i in model(images).argmax(1)]"""
    from bnrun.cli import actions
    from bnrun.cli.options import matching_output
    from bnrun.requests.parsing import require_choice

    require_choice(statistics, STATISTICS, "--statistics")
    matching_output(output, "model")
    saved = actions.export_model(db, run, output, statistics, data_dir)
    say_wrote(output, f" (run {run}, {saved['model']['arch']} bn={saved['model']['bn']}, {statistics} statistics)")


CLAIM_FORMATS = ("table", "markdown", "json", "latex")


@app.command()
@friendly_errors
def claims(
    claims_file: Annotated[Path, option("The claims file.", "--claims")] = Path("study/claims.toml"),
    only: Annotated[Optional[list[str]], option("Only this claim (repeatable).", "--id")] = None,
    family: Annotated[Optional[list[str]], option("Only this family's claims (repeatable); Holm still corrects "
                                                  "over the whole family.")] = None,
    fmt: Annotated[str, option(f"{choices_text(CLAIM_FORMATS)}.", "--format")] = "table",
    detail: Annotated[bool, option("markdown: each claim's statement, numbers and evidence (commits, CPUs, "
                                   "pooling) as a list.", "--detail")] = False,
    output: Annotated[Optional[Path], option("Write to this file instead of stdout.")] = None,
    db: DbOption = None,
) -> None:
    """Compute each declared claim's verdict from the store: supported, contradicted, inconclusive or incomplete,
    with its effect, 95 % CI, n, Holm p within its family, and the commits and CPUs its runs come from."""
    from bnrun.cli import actions
    from bnrun.cli.options import matching_output
    from bnrun.requests.parsing import require, require_choice

    require_choice(fmt, CLAIM_FORMATS, "--format")
    require(not detail or fmt == "markdown", "--detail applies to --format markdown")
    matching_output(output, fmt)
    results = actions.claims_of(db, claims_file, tuple(only or ()), tuple(family or ()))
    say_wrote(actions.emit(actions.claims_text(results, fmt, detail), output, out))


@app.command()
@friendly_errors
def ui(
    host: Annotated[str, option("Listen on this address (0.0.0.0: every network interface).")] = "127.0.0.1",
    port: Annotated[int, option("Listen on this port.")] = 8000,
    allowed_hosts: Annotated[Optional[list[str]], option(
        "Also answer requests for this host name (repeatable; * for any): the names a reverse proxy or a team "
        "uses. By default only the bound address's names are answered (against DNS rebinding).",
        "--allowed-hosts")] = None,
    token: Annotated[Optional[str], option(
        "The token a request must carry (?token=, then a cookie); default beyond loopback: a random one, printed "
        "in the URL.")] = None,
    no_token: Annotated[bool, option("Beyond loopback, serve without a token (anyone who reaches the port reads "
                                     "the store).", "--no-token")] = False,
    db: DbOption = None,
) -> None:
    """Browse the store in a web browser, read-only: the report, the runs, each run's curves, comparisons.

    Bound to loopback (the default) it answers only localhost, 127.0.0.1 and [::1] (against DNS rebinding).

    Bound beyond loopback it shows every run, note and figure to whoever reaches the port, so it asks for a token.

    Share the printed URL with a team, or put the view behind a reverse proxy and name it with --allowed-hosts."""
    from bnrun.cli.options import ui_access
    from bnrun.web.server import serve

    hosts, require_token = ui_access(port, allowed_hosts, token, no_token)
    serve(db, host, port, lambda line: err.print(f"bnrun: {line}", highlight=False, markup=False, soft_wrap=True),
          hosts, token, require_token)


def show_version(value: bool) -> None:
    if value:
        import importlib.metadata

        import bnrun

        typer.echo(f"bnrun {bnrun.__version__} (torch {importlib.metadata.version('torch')})")
        raise typer.Exit()


@app.callback()
def bnrun_options(
    version: Annotated[
        bool, option("Print bnrun's and torch's versions and exit.", "--version", callback=show_version, is_eager=True)
    ] = False,
) -> None:
    """Study a from-scratch Batch Norm on Fashion-MNIST: train, evaluate, report."""


def main() -> None:
    app()
