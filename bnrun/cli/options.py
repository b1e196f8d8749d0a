"""Command-line options parsed and checked into requests: the training grid, the report's and the
plot's filters, the executor. Every parser raises `UsageError` itself; nothing here touches the
store or the data, so bad input changes nothing."""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from bnrun.analysis.export import EXPORT_FORMATS
from bnrun.analysis.grouping import PIVOT_FIELDS, RunFilter, spelled
from bnrun.analysis.listing import RunQuery
from bnrun.analysis.metrics import METRICS
from bnrun.analysis.queries import ReportRequest
from bnrun.analysis.rendering import FORMATS
from bnrun.config import (
    ARCHS,
    AUTO_PRECISION,
    BN_IMPLS,
    DEVICES,
    FAST_PATH,
    INITS,
    MOMENTUM_SPREAD,
    OPTIMIZERS,
    PLACEMENTS,
    PRECISIONS,
    SCHEDULES,
    STORED_INT_MAX,
    STUDY_LENGTH,
    STUDY_PATTERN,
    TRAINING_SPLIT,
    SweepConfig,
    TrainConfig,
)
from bnrun.errors import UsageError
from bnrun.store import STATUSES

EXECUTORS = {"local": "one trial after another, here", "ray": "one Ray task per trial"}
MAX_TRIALS = 10_000  # a larger grid needs --yes
TRAINING_DIAGNOSTICS = ("loss_ratio", "mode_gap", "smoothness", "grad_norm")  # recorded by train --diagnostics
BATCH_STATS = "batch_stats"  # recorded by eval --batch-stats
DIAGNOSTICS = (*TRAINING_DIAGNOSTICS, BATCH_STATS)
# What a trained model's BN layers normalize with in prediction (export model --statistics).
STATISTICS = {"population": "statistics over the training split", "running": None}
DEFAULTS = TrainConfig()  # the training defaults; the CLI's are these, spelled as options


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def require_choice(value: str, choices: tuple[str, ...] | dict[str, str | None], option: str) -> str:
    """`value` if it is one of `choices`, else UsageError naming them."""
    require(value in choices, f"{option}: unknown value {value!r}; choose from {', '.join(choices)}")
    return value


def choices_text(choices: tuple[str, ...] | dict[str, str | None]) -> str:
    """('a', 'b', 'c') -> 'a, b or c' (a --help text); a dict's descriptions, where given, in
    parentheses after each name."""
    about = choices if isinstance(choices, dict) else {}
    names = [f"{name} ({about[name]})" if about.get(name) else name for name in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


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


def parse_numbers(text: str | int | float, kind: type, option: str, minimum: float, strict: bool = False,
                  maximum: float = STORED_INT_MAX) -> tuple:
    """'0.01,0.1,1' -> (0.01, 0.1, 1.0): a comma list of numbers, each ≥ minimum (> with strict) and
    at most `maximum` (by default the largest integer the store holds)."""
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
        require(math.isfinite(value), f"{option} must be a finite number, got {part}")
        require(not bad, f"{option} must be {bound}, got {part}")
        require(value <= maximum, f"{option} must be at most {maximum:,}, got {part}")
        values.append(value)
    return tuple(dict.fromkeys(values))


MAX_ID_RANGE = 1_000_000  # ids one range may span: the ids are listed, so 1-10^12 is refused, not listed


def parse_run_ids(text: str) -> frozenset[int]:
    """'1-12,15' -> {1, ..., 12, 15}: ids up to the largest the store holds, a range spanning at most
    MAX_ID_RANGE of them."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        if not (low.isascii() and low.isdigit()) or (high and not (high.isascii() and high.isdigit())):
            raise UsageError(f"--run-id: {part!r} is not an id or a range like 1-12")
        first, last = int(low), int(high or low)
        require(last >= first, f"--run-id: {part!r} runs backwards; write {high}-{low}")
        require(last <= STORED_INT_MAX, f"--run-id: {part!r}: run ids go up to {STORED_INT_MAX}")
        require(last - first < MAX_ID_RANGE, f"--run-id: {part!r} spans more than {MAX_ID_RANGE:,} ids")
        ids.update(range(first, last + 1))
    require(bool(ids), f"--run-id: no id in {text!r}")
    return frozenset(ids)


IMPL_LABELS = ("custom", "custom+fused", "torch")  # --bn-impl and --where bn_impl=: names and the tables' labels
CHOICES = {"arch": ARCHS, "bn": PLACEMENTS, "bn_impl": IMPL_LABELS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
           "precision": PRECISIONS, "init": INITS}
BOOLEANS = {"true": True, "false": False}


def option_kind(name: str) -> type:
    """A training option's value type, read off TrainConfig's annotations (`int | None` is int)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return next((kind for kind in typing.get_args(hint) if kind is not type(None)), hint)


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
    if option_kind(name) is str:
        return text
    try:
        value = option_kind(name)(text)
    except ValueError:
        kind = "an integer" if option_kind(name) is int else "a number"
        raise UsageError(f"{where}: {text!r} is not {kind}") from None
    require(math.isfinite(value), f"{where}: not a finite number")
    require(abs(value) <= STORED_INT_MAX, f"{where}: beyond any value the store holds")
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
    require(bool(common),
            f"contradictory filters: {what} cannot be both {spelled_list(first)} and {spelled_list(second)}")
    return common


def spelled_list(values: tuple) -> str:
    return ",".join(spelled(value) for value in values)


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
    precision: str = FAST_PATH["precision"]
    epochs: str | None = None
    batch_size: str = str(DEFAULTS.batch_size)
    lr: str = number_text(DEFAULTS.lr)
    momentum: str | None = None  # None: the default (an explicit value must have an effect)
    weight_decay: str = number_text(DEFAULTS.weight_decay)
    optimizer: str = DEFAULTS.optimizer
    schedule: str = DEFAULTS.schedule
    train_subset: str | None = None
    depth: str | None = None
    width: str | None = None
    dropout: str = number_text(DEFAULTS.dropout)
    init: str = DEFAULTS.init
    ghost_batch: str | None = None
    target_loss: str | None = None
    study: str | None = None  # one tag, not a list


def grid_axes(options: GridOptions) -> tuple[tuple[str, tuple], ...]:
    """Every option parsed and checked, in the order the grid is walked."""

    def optional_numbers(text: str | None, kind: type, option: str, minimum: float, strict: bool = False,
                         maximum: float = STORED_INT_MAX) -> tuple:
        return parse_numbers(text, kind, option, minimum, strict, maximum) if text else (None,)

    return (
        ("arch", split_list(options.arch, ARCHS, "--arch")),
        ("bn", split_list(options.bn, PLACEMENTS, "--bn")),
        ("bn_impl", split_list(options.bn_impl, BN_IMPLS, "--bn-impl")),
        ("precision", split_list(options.precision, (*PRECISIONS, AUTO_PRECISION), "--precision")),
        ("optimizer", split_list(options.optimizer, OPTIMIZERS, "--optimizer")),
        ("schedule", split_list(options.schedule, SCHEDULES, "--schedule")),
        ("epochs", optional_numbers(options.epochs, int, "--epochs", 0, strict=True)),
        ("batch_size", parse_numbers(options.batch_size, int, "--batch-size", 2, maximum=TRAINING_SPLIT)),
        ("lr", parse_numbers(options.lr, float, "--lr", 0, strict=True)),
        ("momentum", momentum_values(options.momentum or number_text(DEFAULTS.momentum))),
        ("weight_decay", parse_numbers(options.weight_decay, float, "--weight-decay", 0)),
        ("train_subset", optional_numbers(options.train_subset, int, "--train-subset", 2, maximum=TRAINING_SPLIT)),
        ("depth", optional_numbers(options.depth, int, "--depth", 1)),
        ("width", optional_numbers(options.width, int, "--width", 1)),
        ("dropout", dropout_rates(options.dropout)),
        ("init", split_list(options.init, INITS, "--init")),
        ("ghost_batch", optional_numbers(options.ghost_batch, int, "--ghost-batch", 2)),
        ("target_loss", optional_numbers(options.target_loss, float, "--target-loss", 0, strict=True)),
        ("study", (study_tag(options.study),)),
    )


def claim_grids(claim, given: GridOptions, seeds: int | None,
                explicit: list[int] | None) -> tuple[list[GridOptions], int | None]:
    """The grids that train a claim's two arms (its `select` and each arm's options, the other options at
    their defaults), and the seeds (the claim's min_seeds unless --seeds or --seed says otherwise). A
    recipe option given on the command line beside --claim is refused: the claim declares the recipe."""
    differing = [name for name in GridOptions.__dataclass_fields__ if name != "precision"
                 and getattr(given, name) != getattr(GridOptions(), name)]
    require(not differing, f"--claim {claim.id}: the claim declares the recipe; drop --{differing[0].replace('_', '-')}"
            if differing else "")
    grids = []
    for arm in (claim.a, claim.b):
        options = dict(claim.select) | dict(arm)
        unknown = [name for name in options if name not in GridOptions.__dataclass_fields__]
        require(not unknown, f"--claim {claim.id}: {', '.join(unknown)} cannot be trained from a claim")
        texts = {name: None if values == (None,) else ",".join(spelled(value) for value in values)
                 for name, values in options.items()}
        grids.append(replace(given, **texts))
    return grids, (claim.min_seeds if seeds is None and not explicit else seeds)


def study_tag(text: str | None) -> str | None:
    """--study checked: one tag (bnrun.config.STUDY_PATTERN), or None (no tag)."""
    if text is None:
        return None
    require(
        re.fullmatch(STUDY_PATTERN, text) is not None and len(text) <= STUDY_LENGTH and text.lower() != "none",
        f"--study: {text!r} is not a tag: a letter or digit, then letters, digits, '.', '_' or '-', at most "
        f"{STUDY_LENGTH} characters, not 'none'",
    )
    return text


def momentum_values(text: str) -> tuple[float, ...]:
    values = parse_numbers(text, float, "--momentum", 0)
    require(all(value < 1 for value in values), f"--momentum must be below 1, got {text}")
    return values


def require_momentum_cycle(axes: dict[str, tuple]) -> None:
    """Under onecycle SGD's momentum cycles MOMENTUM_SPREAD around the option (bnrun.config):
    it must stay within [0, 1), so a nonzero value lies in [0.05, 0.95)."""
    if "onecycle" not in axes["schedule"] or "sgd" not in axes["optimizer"]:
        return
    bad = [number_text(m) for m in axes["momentum"] if m and not (MOMENTUM_SPREAD <= m < 1 - MOMENTUM_SPREAD)]
    require(
        not bad,
        f"--momentum {', '.join(bad)}: under --schedule onecycle momentum cycles ±{MOMENTUM_SPREAD:g} around "
        f"it, so give 0 (no momentum) or a value in [{MOMENTUM_SPREAD:g}, {1 - MOMENTUM_SPREAD:g})",
    )


def require_effect(
    options: GridOptions, axes: dict[str, tuple], fused: bool | None, channels_last: bool | None
) -> None:
    """An option given on the command line must change some trial of the grid."""
    require(
        options.momentum is None or "sgd" in axes["optimizer"],
        "--momentum applies to --optimizer sgd only (AdamW has none; under onecycle its beta1 cycles 0.85-0.95)",
    )
    require(not (fused and axes["bn_impl"] == ("torch",)), "--fused applies to --bn-impl custom only")
    require(not (fused and axes["bn"] == ("none",)), "--fused applies to batch norm: --bn pre or post")
    require(
        channels_last is None or "cnn" in axes["arch"], "--channels-last/--no-channels-last applies to --arch cnn only"
    )
    require(
        axes["bn"] != ("none",) or axes["bn_impl"] == (DEFAULTS.bn_impl,), "--bn-impl applies to --bn pre or post only"
    )
    require_ghost_batches(axes)
    require_batches_fit(axes)


def require_batches_fit(axes: dict[str, tuple]) -> None:
    """A batch must fit the training images it is drawn from (--train-subset's, or the training split)."""
    bad = [f"{batch} > {subset:,}" for batch in axes["batch_size"]
           for subset in (size or TRAINING_SPLIT for size in axes["train_subset"]) if batch > subset]
    require(not bad, f"--batch-size larger than the training images it is drawn from ({', '.join(bad)})")


def require_ghost_batches(axes: dict[str, tuple]) -> None:
    """--ghost-batch N splits each SGD batch into chunks of N: N must divide every --batch-size, BN
    must be there, and some N must be smaller than a batch (N equal to the batch is plain BN)."""
    sizes = [size for size in axes["ghost_batch"] if size is not None]
    if not sizes:
        return
    require(axes["bn"] != ("none",), "--ghost-batch applies to batch norm: --bn pre or post")
    bad = [f"{size} (batch {batch})" for size in sizes for batch in axes["batch_size"] if batch % size]
    require(not bad, f"--ghost-batch must divide --batch-size (and be at most it): {', '.join(bad)}")
    require(
        any(size < batch for size in sizes for batch in axes["batch_size"]),
        "--ghost-batch equal to --batch-size is plain batch norm; give a smaller chunk size",
    )


def grid_size(axes: dict[str, tuple], seed_count: int, base: TrainConfig) -> int:
    """How many trials the grid holds, without building its list of trials (nor, when the
    product of the axes alone is beyond the limit, its configurations)."""
    product = math.prod(len(values) for values in axes.values())
    if product > MAX_TRIALS * 10:  # repeated configurations never shrink a grid tenfold
        return product * seed_count
    configs = SweepConfig(axes=tuple(axes.items()), seeds=(0,), base=base).configs()
    return len(configs) * seed_count


def require_grid_size(count: int, seed_count: int, yes: bool) -> None:
    require(
        yes or count <= MAX_TRIALS,
        f"the grid holds {count:,} trials ({count // seed_count:,} configurations × "
        f"{seed_count:,} seeds), more than {MAX_TRIALS:,}; pass --yes to train it, or "
        "--dry-run to look at it",
    )


def dropout_rates(text: str) -> tuple[float, ...]:
    rates = parse_numbers(text, float, "--dropout", 0)
    require(all(rate < 1 for rate in rates), f"--dropout must be below 1, got {text}")
    return rates


def seed_count(seeds: int | None, explicit: list[int]) -> int:
    """How many seeds the options ask for, checked, without listing them."""
    require(seeds is None or not explicit, "--seeds and --seed are exclusive; give one of them")
    if explicit:
        require(all(s >= 0 for s in explicit), "--seed must be ≥ 0")
        return len(set(explicit))
    count = 1 if seeds is None else seeds
    require(count > 0, f"--seeds must be a positive count, got {count}")
    return count


def choose_seeds(seeds: int | None, explicit: list[int]) -> tuple[int, ...]:
    seed_count(seeds, explicit)
    return tuple(dict.fromkeys(explicit)) if explicit else tuple(range(1 if seeds is None else seeds))


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
    yes: bool = False,
    executor: str = "local",
    hardware_known: bool = True,
) -> SweepConfig:
    """Check every option and build the sweep's frozen configuration (torch is imported only
    once everything else checked out, so that bad input is answered at once). `fused` and
    `channels_last` unset take FAST_PATH's value (each applies where it can: the custom BN, the CNN).
    A grid of more than MAX_TRIALS trials needs `yes`; it is counted before it is built. `--device
    cuda` is checked here unless Ray trains elsewhere (then the cluster's GPUs are counted), and
    precision auto is bf16 only where `hardware_known` (the trials run on this machine's kind)."""
    axes = grid_axes(options)
    count = seed_count(seeds, list(explicit_seeds))
    require_momentum_cycle(dict(axes))
    require_effect(options, dict(axes), fused, channels_last)
    fast = {"fused": fused, "channels_last": channels_last}
    fast_base = TrainConfig(**{name: FAST_PATH[name] if value is None else value for name, value in fast.items()})
    require_grid_size(grid_size(dict(axes), count, fast_base), count, yes)
    chosen_seeds = choose_seeds(seeds, list(explicit_seeds))
    usable_device(device)
    require(data_dir is None or Path(data_dir).expanduser().is_dir(), f"--data-dir {data_dir} does not exist")
    from bnrun.training.hardware import resolve_device

    try:
        device = device if executor == "ray" and device == "cuda" else resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    require_precisions(dict(axes)["precision"], device)
    bf16_units = has_bf16_units(device, hardware_known)
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
        bf16_units=bf16_units,
    )


def require_precisions(precisions: tuple[str, ...], device: str) -> None:
    from bnrun.training import precision

    why = precision.bf16_unsupported(device) if "bf16" in precisions else None
    require(why is None, f"--precision bf16: {why}; use --precision fp32")


def has_bf16_units(device: str, known: bool) -> bool:
    """Whether `device` here has bf16 units, for precision auto; False where the trials run on nodes
    not known here (a Ray cluster joined with --ray-address)."""
    from bnrun.training import precision

    return known and precision.bf16_unsupported(device) is None


def executor_options(executor: str, address: str | None, cpus: float, gpus: float | None, device: str = "cpu"):
    """None for the local executor, else the Ray options, checked (`gpus` None: the executor's
    rule, one GPU per trial on --device cuda)."""
    require_choice(executor, EXECUTORS, "--executor")
    require(
        executor == "ray" or (address is None and cpus == 1.0 and gpus is None),
        "--ray-address, --cpus-per-trial and --gpus-per-trial need --executor ray",
    )
    require(cpus > 0, f"--cpus-per-trial must be positive, got {cpus:g}")
    if gpus is not None:
        require(gpus >= 0, f"--gpus-per-trial must be ≥ 0, got {gpus:g}")
        require(gpus == 0 or device == "cuda",
                f"--gpus-per-trial {gpus:g}: a trial on --device {device} never uses a GPU; pass --device cuda")
    if executor == "local":
        return None
    from bnrun.run.ray_executor import RayOptions

    return RayOptions(address, cpus, gpus)


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


def one_pivot(by: list[str] | None) -> str | None:
    """--by's value: repeatable on the command line only so that a second one is refused, not silently kept."""
    by = by or []
    require(len(by) <= 1, f"--by given {len(by)} times ({', '.join(by)}): a report pivots on one option; "
                          "hold the others with --where")
    return by[0] if by else None


def report_request(
    filters: FilterOptions, metric: str, seeds: int | None = None, by: str | None = None, everything: bool = False
) -> ReportRequest:
    """`everything` (--all): every trial the filters accept, not one recipe's on one screen."""
    require(by is None or by.strip() != "", "--by: give an option to pivot on, e.g. --by lr")
    by = by.replace("-", "_") if by else None
    require(by is None or by in PIVOT_FIELDS, f"--by: unknown option {by!r}; choose from {', '.join(PIVOT_FIELDS)}")
    require_choice(metric, METRICS, "--metric")
    require(seeds is None or seeds > 0, f"--seeds must be positive, got {seeds}")
    return ReportRequest(metric, filters.run_filter(), seeds, by, everything)


REPORT_FORMATS = (*FORMATS, "html")  # html: bnrun.web's self-contained page
REPORT_FILES = {"table": "report.txt", "latex": "report.tex", "markdown": "report.md", "csv": "report.csv",
                "json": "report.json", "html": "report.html"}  # the file `report --output DIRECTORY` writes


def report_format(fmt: str, standalone: bool = False, wide: bool = False) -> str:
    require_choice(fmt, REPORT_FORMATS, "--format")
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
    command: str | None = None  # the `bnrun plot ...` line, recorded in the figure


def plot_request(
    filters: FilterOptions,
    metric: str | None,
    output: Path | None,
    x: str | None,
    diagnostic: str | None,
    everything: bool = False,
    command: str | None = None,
) -> PlotRequest:
    require(not (x and diagnostic), "--x and --diagnostic are exclusive; give one of them")
    if diagnostic is not None:
        require_choice(diagnostic, DIAGNOSTICS, "--diagnostic")
    require(metric is None or x is not None, "--metric applies to --x only (learning curves and diagnostics "
            "have their own axes); add --x OPTION or drop --metric")
    require(x is None or x.strip() != "", "--x: give a numeric option to put on the x axis, e.g. --x lr")
    x = x.replace("-", "_") if x else None
    numeric = [name for name in PIVOT_FIELDS if option_kind(name) in (int, float)]
    require(x is None or x in PIVOT_FIELDS, f"--x: unknown option {x!r}; choose from {', '.join(numeric)}")
    require(x is None or x in numeric, f"--x: {x!r} is not a numeric option; choose from {', '.join(numeric)}")
    metric = metric or "test_acc_population"
    name = f"{metric}_by_{x}.png" if x else (f"{diagnostic}.png" if diagnostic else "learning_curves.png")
    path = figure_output(output, name)
    return PlotRequest(report_request(filters, metric, by=x, everything=everything), path, x, diagnostic, command)


# -- run management ---------------------------------------------------------------------------------------

TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/=+-]{0,63}")


def run_ids_of(values: list[str], option: str = "RUN") -> list[int]:
    """['3', '5-7,9'] -> [3, 5, 6, 7, 9]: run ids as arguments, each an id or a range, in order."""
    ids: list[int] = []
    for value in values:
        try:
            ids.extend(sorted(parse_run_ids(value)))
        except UsageError:
            raise UsageError(f"{option}: {value!r} is not a run id or a range like 5-7") from None
    require(bool(ids), f"{option}: give at least one run id")
    return list(dict.fromkeys(ids))


def tags_of(values: list[str] | None, option: str) -> tuple[str, ...]:
    tags = tuple(dict.fromkeys(values or ()))
    bad = [tag for tag in tags if not TAG_PATTERN.fullmatch(tag)]
    require(
        not bad,
        f"{option}: {bad[0]!r} is not a tag (letters, digits and _ . : / = + -, up to 64, no spaces)" if bad else "",
    )
    return tags


@dataclass(frozen=True)
class RunSelection:
    """Which runs `bnrun runs` and `bnrun export runs` cover, in which order, how many, as typed."""

    filters: FilterOptions
    status: str | None = None
    tags: tuple[str, ...] = ()
    sort: str = "id"
    limit: int | None = None

    def query(self, deleted: bool = False) -> RunQuery:
        """The query (UsageError for an unknown sort key, a limit below 1 or an unknown status)."""
        from bnrun.analysis.listing import sort_key_name

        try:
            sort_key_name(self.sort)
        except ValueError as error:
            raise UsageError(str(error)) from None
        require(self.limit is None or self.limit > 0, f"--limit must be a positive count, got {self.limit}")
        return RunQuery(
            run_filter=self.filters.run_filter(),
            statuses=optional_list(self.status, STATUSES, "--status"),
            tags=tags_of(list(self.tags), "--tag"),
            deleted=deleted,
            sort=self.sort,
            limit=self.limit,
        )


SCREEN_RUNS = 30  # the runs `bnrun runs` lists in a terminal without --limit or --all


def listing_query(selection: RunSelection, deleted: bool, terminal: bool, everything: bool) -> RunQuery:
    """`bnrun runs`' query: in a terminal, without --limit or --all, the newest SCREEN_RUNS runs (newest first
    unless --sort says otherwise)."""
    require(not (everything and selection.limit is not None), "--all and --limit are exclusive; give one of them")
    query = selection.query(deleted)
    if not terminal or everything or selection.limit is not None:
        return query
    return replace(query, limit=SCREEN_RUNS, sort="-id" if selection.sort == RunSelection.sort else query.sort)


def export_format(fmt: str) -> str:
    return require_choice(fmt, EXPORT_FORMATS, "--format")


def run_argument(run: int | None, run_id: int | None) -> int:
    """The run as an argument (`bnrun eval 3`) or, as before, `--run-id 3`."""
    require(run is not None or run_id is not None, "give the run id: bnrun eval RUN (or --run-id RUN)")
    require(
        run is None or run_id is None or run == run_id, f"two run ids given ({run} and --run-id {run_id}); give one"
    )
    return run if run is not None else run_id


HOST_NAME = re.compile(r"\*|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def ui_access(port: int, allowed_hosts: list[str] | None, token: str | None,
              no_token: bool) -> tuple[tuple[str, ...], bool | None]:
    """`bnrun ui`'s access options checked: the extra host names, and whether a token is required
    (None: the bound address decides)."""
    require(0 < port < 65536, f"--port must be 1-65535, got {port}")
    hosts = tuple(allowed_hosts or ())
    for name in hosts:
        require(HOST_NAME.fullmatch(name) is not None, f"--allowed-hosts: {name[:80]!r} is not a host name")
    require(not (token is not None and no_token), "--token and --no-token are exclusive; give one of them")
    require(token is None or re.fullmatch(r"[A-Za-z0-9_-]{16,256}", token) is not None,
            "--token: 16 to 256 letters, digits, '-' or '_'")
    return hosts, (False if no_token else None)


def usable_device(device: str) -> str:
    """--device checked: one of DEVICES (whether this machine has cuda is resolve_device's to say)."""
    return require_choice(device, DEVICES, "--device")
