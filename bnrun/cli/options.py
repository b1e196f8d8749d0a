"""Command-line options parsed and checked into requests: the training grid, the report's and the
plot's filters, the executor. Every parser raises `UsageError` itself; nothing here touches the
store or the data, so bad input changes nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bnrun.analysis.grouping import PIVOT_FIELDS, RunFilter
from bnrun.analysis.metrics import METRICS
from bnrun.analysis.queries import ReportRequest
from bnrun.analysis.rendering import FORMATS
from bnrun.config import (
    ARCHS,
    BN_IMPLS,
    DEVICES,
    FAST_PATH,
    OPTIMIZERS,
    PLACEMENTS,
    PRECISIONS,
    SCHEDULES,
    SweepConfig,
    TrainConfig,
)
from bnrun.errors import UsageError
from bnrun.store import STATUSES

EXECUTORS = ("local", "ray")
DIAGNOSTICS = ("loss_ratio", "mode_gap", "smoothness", "grad_norm", "batch_stats")
DEFAULTS = TrainConfig()  # the training defaults; the CLI's are these, spelled as options


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def split_list(value: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma list of allowed values, deduplicated in order; UsageError names the unknown ones."""
    items = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise UsageError(
            f"{option}: unknown value {', '.join(unknown) or repr(value)}; choose from {', '.join(allowed)} "
            "(comma-separated)"
        )
    return items


def optional_list(value: str | None, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """`split_list`, or () when the option was not given."""
    return split_list(value, allowed, option) if value else ()


def parse_numbers(text: str | int | float, kind: type, option: str, minimum: float, strict: bool = False) -> tuple:
    """'0.01,0.1,1' -> (0.01, 0.1, 1.0): a comma list of numbers, each ≥ minimum (> with strict)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    require(bool(parts), f"{option}: no value given")
    values = []
    for part in parts:
        try:
            value = kind(part)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = value <= minimum if strict else value < minimum
        bound = "positive" if strict else (f"at least {minimum:g}" if minimum else "≥ 0")
        require(not bad and value == value, f"{option} must be {bound}, got {part}")
        values.append(value)
    return tuple(dict.fromkeys(values))


def parse_run_ids(text: str) -> frozenset[int]:
    """'1-12,15' -> {1, ..., 12, 15}."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise UsageError(f"--run-id: {part!r} is not an id or a range like 1-12")
        require(not high or int(high) >= int(low), f"--run-id: {part!r} runs backwards; write {high}-{low}")
        ids.update(range(int(low), int(high or low) + 1))
    require(bool(ids), f"--run-id: no id in {text!r}")
    return frozenset(ids)


IMPL_LABELS = ("custom", "custom+fused", "torch")  # --bn-impl and --where bn_impl=: names and the tables' labels
CHOICES = {"arch": ARCHS, "bn": PLACEMENTS, "bn_impl": IMPL_LABELS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
           "precision": PRECISIONS}
BOOLEANS = {"true": True, "false": False}


def option_kind(name: str) -> type:
    """A training option's value type, read off TrainConfig's defaults (the options that default to None
    take integers)."""
    default = getattr(DEFAULTS, name)
    return int if default is None else type(default)


def option_value(name: str, text: str) -> object:
    """One --where value as the store holds it: a choice, a bool (true/false), a number, or none."""
    where = f"--where {name}={text}"
    if name in CHOICES:
        require(text in CHOICES[name], f"{where}: choose from {', '.join(CHOICES[name])}")
        return text
    if text.lower() == "none":
        require(getattr(DEFAULTS, name) is None, f"{where}: {name} always has a value")
        return None
    if option_kind(name) is bool:
        require(text.lower() in BOOLEANS, f"{where}: {name} is true or false")
        return BOOLEANS[text.lower()]
    try:
        value = option_kind(name)(text)
    except ValueError:
        kind = "an integer" if option_kind(name) is int else "a number"
        raise UsageError(f"{where}: {text!r} is not {kind}") from None
    require(math.isfinite(value), f"{where}: not a finite number")
    return value


def parse_where(items: list[str]) -> tuple[tuple[str, tuple], ...]:
    """['epochs=10', 'lr=0.1,0.3'] -> (('epochs', (10,)), ('lr', (0.1, 0.3))): each option's allowed values,
    typed as the store holds them; an option named twice keeps the values both allow (none: contradictory)."""
    allowed: dict[str, tuple] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not sep or not parts:
            raise UsageError(f"--where: {item!r} is not OPTION=VALUE, e.g. epochs=10 or lr=0.1,0.3")
        if name not in PIVOT_FIELDS:
            raise UsageError(f"--where: unknown option {name!r}; choose from {', '.join(PIVOT_FIELDS)}")
        values = tuple(dict.fromkeys(option_value(name, part) for part in parts))
        allowed[name] = both(allowed[name], values, f"--where {name}") if name in allowed else values
    return tuple(allowed.items())


def both(first: tuple, second: tuple, what: str) -> tuple:
    """The values two conditions on one option both allow; UsageError when none."""
    common = tuple(value for value in first if value in second)
    require(bool(common), f"contradictory filters: {what} cannot be both {spelled(first)} and {spelled(second)}")
    return common


def spelled(values: tuple) -> str:
    def one(value: object) -> str:
        if value is None or isinstance(value, bool):
            return str(value).lower()
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ",".join(one(value) for value in values)


def parse_since(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since: {text!r} is not a date like 2026-11-24") from None


def number_text(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class GridOptions:
    """The training options as typed on the command line: each a value or a comma list. The
    defaults are TrainConfig's (epochs: the per-arch default; model options: the assignment's)."""

    arch: str = DEFAULTS.arch
    bn: str = DEFAULTS.bn
    bn_impl: str = DEFAULTS.bn_impl
    precision: str = DEFAULTS.precision
    epochs: str | None = None
    batch_size: str = str(DEFAULTS.batch_size)
    lr: str = number_text(DEFAULTS.lr)
    momentum: str = number_text(DEFAULTS.momentum)
    weight_decay: str = number_text(DEFAULTS.weight_decay)
    optimizer: str = DEFAULTS.optimizer
    schedule: str = DEFAULTS.schedule
    train_subset: str | None = None
    depth: str | None = None
    width: str | None = None
    dropout: str = number_text(DEFAULTS.dropout)


def grid_axes(options: GridOptions) -> tuple[tuple[str, tuple], ...]:
    """Every option parsed and checked, in the order the grid is walked."""

    def optional_numbers(text: str | None, kind: type, option: str, minimum: float, strict: bool = False) -> tuple:
        return parse_numbers(text, kind, option, minimum, strict) if text else (None,)

    return (
        ("arch", split_list(options.arch, ARCHS, "--arch")),
        ("bn", split_list(options.bn, PLACEMENTS, "--bn")),
        ("bn_impl", split_list(options.bn_impl, BN_IMPLS, "--bn-impl")),
        ("precision", split_list(options.precision, PRECISIONS, "--precision")),
        ("optimizer", split_list(options.optimizer, OPTIMIZERS, "--optimizer")),
        ("schedule", split_list(options.schedule, SCHEDULES, "--schedule")),
        ("epochs", optional_numbers(options.epochs, int, "--epochs", 0, strict=True)),
        ("batch_size", parse_numbers(options.batch_size, int, "--batch-size", 2)),
        ("lr", parse_numbers(options.lr, float, "--lr", 0, strict=True)),
        ("momentum", parse_numbers(options.momentum, float, "--momentum", 0)),
        ("weight_decay", parse_numbers(options.weight_decay, float, "--weight-decay", 0)),
        ("train_subset", optional_numbers(options.train_subset, int, "--train-subset", 2)),
        ("depth", optional_numbers(options.depth, int, "--depth", 1)),
        ("width", optional_numbers(options.width, int, "--width", 1)),
        ("dropout", dropout_rates(options.dropout)),
    )


def dropout_rates(text: str) -> tuple[float, ...]:
    rates = parse_numbers(text, float, "--dropout", 0)
    require(all(rate < 1 for rate in rates), f"--dropout must be below 1, got {text}")
    return rates


def choose_seeds(seeds: int | None, explicit: list[int]) -> tuple[int, ...]:
    require(seeds is None or not explicit, "--seeds and --seed are exclusive; give one of them")
    if explicit:
        require(all(s >= 0 for s in explicit), "--seed must be ≥ 0")
        return tuple(dict.fromkeys(explicit))
    count = 1 if seeds is None else seeds
    require(count > 0, f"--seeds must be a positive count, got {count}")
    return tuple(range(count))


def build_sweep(
    options: GridOptions,
    *,
    seeds: int | None = None,
    explicit_seeds: list[int] = (),
    augment: bool = DEFAULTS.augment,
    fused: bool | None = None,
    channels_last: bool | None = None,
    device: str = "auto",
    force: bool = False,
    data_dir: Path | None = None,
    diagnostics: bool = False,
    checkpoint: bool = True,
) -> SweepConfig:
    """Check every option and build the sweep's frozen configuration (torch is imported only
    once everything else checked out, so that bad input is answered at once). `fused` and
    `channels_last` unset take FAST_PATH's value (each applies where it can: the custom BN, the CNN)."""
    axes = grid_axes(options)
    chosen_seeds = choose_seeds(seeds, list(explicit_seeds))
    require(device in DEVICES, f"--device: unknown value {device!r}; choose from {', '.join(DEVICES)}")
    require(not (fused and dict(axes)["bn_impl"] == ("torch",)), "--fused applies to --bn-impl custom only")
    require(data_dir is None or Path(data_dir).expanduser().is_dir(), f"--data-dir {data_dir} does not exist")
    from bnrun.training.hardware import resolve_device

    try:
        device = resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    require_precisions(dict(axes)["precision"], device)
    fast = {"fused": fused, "channels_last": channels_last}
    base = TrainConfig(
        **{name: FAST_PATH[name] if value is None else value for name, value in fast.items()},
        augment=augment,
        device=device,
    )
    return SweepConfig(
        axes=axes,
        seeds=chosen_seeds,
        base=base,
        force=force,
        data_dir=data_dir,
        diagnostics=diagnostics,
        checkpoint=checkpoint,
    )


def require_precisions(precisions: tuple[str, ...], device: str) -> None:
    from bnrun.training import precision

    why = precision.bf16_unsupported(device) if "bf16" in precisions else None
    require(why is None, f"--precision bf16: {why}; use --precision fp32")


def executor_options(executor: str, address: str | None, cpus: float, gpus: float):
    """None for the local executor, else the Ray options, checked."""
    require(executor in EXECUTORS, f"--executor: unknown value {executor!r}; choose from {', '.join(EXECUTORS)}")
    require(
        executor == "ray" or (address is None and cpus == 1.0 and gpus == 0.0),
        "--ray-address, --cpus-per-trial and --gpus-per-trial need --executor ray",
    )
    require(cpus > 0, f"--cpus-per-trial must be positive, got {cpus:g}")
    require(gpus >= 0, f"--gpus-per-trial must be ≥ 0, got {gpus:g}")
    if executor == "local":
        return None
    from bnrun.run.ray_executor import RayOptions

    return RayOptions(address, cpus, gpus)


@dataclass(frozen=True)
class RunListFilter:
    """`bnrun runs`' filters."""

    archs: tuple[str, ...] = ()
    placements: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()


def run_list_filter(arch: str | None, bn: str | None, status: str | None) -> RunListFilter:
    return RunListFilter(
        optional_list(arch, ARCHS, "--arch"),
        optional_list(bn, PLACEMENTS, "--bn"),
        optional_list(status, STATUSES, "--status"),
    )


@dataclass(frozen=True)
class FilterOptions:
    """Which trials a report or a plot covers, as typed on the command line."""

    arch: str | None = None
    bn: str | None = None
    bn_impl: str | None = None
    run_id: str | None = None
    since: str | None = None
    where: tuple[str, ...] = field(default_factory=tuple)

    def run_filter(self) -> RunFilter:
        """The filter, with --arch/--bn/--bn-impl and --where on the same option merged (UsageError when
        together they allow nothing)."""
        where = dict(parse_where(list(self.where)))
        lists = {"arch": optional_list(self.arch, ARCHS, "--arch"), "bn": optional_list(self.bn, PLACEMENTS, "--bn"),
                 "bn_impl": optional_list(self.bn_impl, IMPL_LABELS, "--bn-impl")}
        for name, given in lists.items():
            if name in where:
                lists[name] = merged(name, given, where.pop(name))
        return RunFilter(
            archs=lists["arch"],
            placements=lists["bn"],
            impls=lists["bn_impl"],
            run_ids=parse_run_ids(self.run_id) if self.run_id else None,
            since=parse_since(self.since) if self.since else None,
            where=tuple(where.items()),
        )


def merged(name: str, given: tuple[str, ...], where: tuple[str, ...]) -> tuple[str, ...]:
    """--arch/--bn/--bn-impl's values with --where's on the same option (for bn_impl, custom includes
    custom+fused); UsageError when none is left."""
    if not given:
        return where
    if name != "bn_impl":
        return both(given, where, f"--{name} and --where {name}")

    def covers(a: str, b: str) -> bool:
        return a == b or (a == "custom" and b == "custom+fused")

    pairs = [(a, b) for a in given for b in where if covers(a, b) or covers(b, a)]
    common = tuple(dict.fromkeys(b if covers(a, b) else a for a, b in pairs))
    require(bool(common), f"contradictory filters: --bn-impl {','.join(given)} and --where bn_impl={','.join(where)}")
    return common


def report_request(
    filters: FilterOptions, metric: str, seeds: int | None = None, by: str | None = None, everything: bool = False
) -> ReportRequest:
    """`everything` (--all): every trial instead of the default recipe's, which only an unfiltered report selects."""
    by = by.replace("-", "_") if by else None
    require(by is None or by in PIVOT_FIELDS, f"--by: unknown option {by!r}; choose from {', '.join(PIVOT_FIELDS)}")
    require(metric in METRICS, f"--metric: unknown value {metric!r}; choose from {', '.join(METRICS)}")
    require(seeds is None or seeds > 0, f"--seeds must be positive, got {seeds}")
    run_filter = filters.run_filter()
    require(
        not everything or (run_filter.is_empty() and by is None),
        "--all applies only without filters and pivots (those already choose the trials); drop --all",
    )
    return ReportRequest(metric, run_filter, seeds, by, everything)


REPORT_FILES = {"table": "report.txt", "latex": "report.tex", "markdown": "report.md", "csv": "report.csv",
                "json": "report.json"}  # the file `report --output DIRECTORY` writes


def report_format(fmt: str, standalone: bool = False, wide: bool = False) -> str:
    require(fmt in FORMATS, f"--format: unknown value {fmt!r}; choose from {', '.join(FORMATS)}")
    require(not standalone or fmt == "latex", "--standalone applies to --format latex only")
    require(not wide or fmt == "table", f"--wide applies to --format table only (--format {fmt} has every column)")
    return fmt


def report_output(output: Path | None, fmt: str) -> Path | None:
    """Where the report goes: None for stdout; a directory gets REPORT_FILES' name inside it."""
    if output is None:
        return None
    return output / REPORT_FILES[fmt] if output.is_dir() else output


FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_output(output: Path | None, default_name: str) -> Path:
    """The figure's path: `default_name` when not given, inside `output` when it is a directory; the
    extension (the file's format) must be one of FIGURE_FORMATS."""
    path = Path(default_name) if output is None else (output / default_name if output.is_dir() else output)
    extension = path.suffix.lower().lstrip(".")
    require(
        extension in FIGURE_FORMATS,
        f"--output {path}: {'no extension' if not extension else f'unknown extension .{extension}'}; "
        f"end the file name in {', '.join('.' + f for f in FIGURE_FORMATS)}",
    )
    return path


@dataclass(frozen=True)
class PlotRequest:
    """Learning curves (neither `x` nor `diagnostic`), the metric against option `x`, or one diagnostic."""

    report: ReportRequest
    output: Path
    x: str | None = None
    diagnostic: str | None = None


def plot_request(
    filters: FilterOptions,
    metric: str | None,
    output: Path | None,
    x: str | None,
    diagnostic: str | None,
    everything: bool = False,
) -> PlotRequest:
    require(not (x and diagnostic), "--x and --diagnostic are exclusive; give one of them")
    require(
        diagnostic is None or diagnostic in DIAGNOSTICS,
        f"--diagnostic: unknown value {diagnostic!r}; choose from {', '.join(DIAGNOSTICS)}",
    )
    require(metric is None or x is not None, "--metric applies to --x only (learning curves and diagnostics "
            "have their own axes); add --x OPTION or drop --metric")
    x = x.replace("-", "_") if x else None
    require(x is None or x in PIVOT_FIELDS, f"--x: unknown option {x!r}; choose from {', '.join(PIVOT_FIELDS)}")
    metric = metric or "test_acc_population"
    name = f"{metric}_by_{x}.png" if x else (f"{diagnostic}.png" if diagnostic else "learning_curves.png")
    path = figure_output(output, name)
    return PlotRequest(report_request(filters, metric, by=x, everything=everything), path, x, diagnostic)
