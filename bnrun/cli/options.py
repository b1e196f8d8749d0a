"""Command-line options parsed and checked into requests: the training grid, the report's and the
plot's filters, the executor. Every parser raises `UsageError` itself; nothing here touches the
store or the data, so bad input changes nothing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path

from bnrun.analysis.export import EXPORT_FORMATS
from bnrun.analysis.grouping import PIVOT_FIELDS, spelled
from bnrun.analysis.queries import ReportRequest
from bnrun.analysis.rendering import FORMATS
from bnrun.config import (
    AUTO_PRECISION,
    DEVICES,
    FAST_PATH,
    MOMENTUM_SPREAD,
    PRECISIONS,
    STORED_INT_MAX,
    STUDY_LENGTH,
    STUDY_PATTERN,
    TRAINING_SPLIT,
    SweepConfig,
    TrainConfig,
)
from bnrun.errors import UsageError, unknown_choice
from bnrun.registry import OPTIONS, PATH, Option
from bnrun.requests.parsing import (
    DEFAULTS,
    NUMERIC_FIELDS,
    FilterOptions,
    number_text,
    parse_numbers,
    report_request,
    require,
    require_choice,
    split_list,
)

EXECUTORS = {"local": "one trial after another, here", "ray": "one Ray task per trial"}
MAX_TRIALS = 10_000  # a larger grid needs --yes
MAX_GRID = 1_000_000  # no grid is larger, --yes or not: its plan alone would not fit in memory
TRAINING_DIAGNOSTICS = ("loss_ratio", "mode_gap", "smoothness", "grad_norm")  # recorded by train --diagnostics
BATCH_STATS = "batch_stats"  # recorded by eval --batch-stats
DIAGNOSTICS = (*TRAINING_DIAGNOSTICS, BATCH_STATS)
# What a trained model's BN layers normalize with in prediction (export model --statistics).
STATISTICS = {"population": "statistics over the training split", "running": None}


def typed_default(option: Option) -> object:
    """An option's value on the command line when it is not given: a switch's None (the fast path's
    default, or the option's), else the default as typed, None where the training code decides (the
    arch's epochs, an unset option; momentum, so that an explicit value can be told apart)."""
    if option.flag:
        return None
    if option.name in FAST_PATH:
        return FAST_PATH[option.name]
    if option.optional or option.name in ("epochs", "momentum"):
        return None
    return spelled(option.default)


# The training options as typed on the command line: each a value or a comma list (a switch: True, False or
# None for its default), one field per option of the registry.
GridOptions = make_dataclass(
    "GridOptions",
    [(option.name, bool | None if option.flag else str | None, field(default=typed_default(option)))
     for option in OPTIONS],
    frozen=True,
)
GridOptions.__module__ = __name__
GRID_OPTIONS = tuple(option for option in OPTIONS if not option.flag)


def grid_axes(options: GridOptions) -> tuple[tuple[str, tuple], ...]:
    """Every option parsed and checked, in the registry's order (the order the grid is walked)."""
    axes = [(option.name, option_values(option, getattr(options, option.name))) for option in GRID_OPTIONS]
    flags = [(option.name, (flag_value(option, getattr(options, option.name)),)) for option in OPTIONS
             if option.flag and option.name not in FAST_PATH]
    return tuple(axes + flags)


def flag_value(option: Option, value: bool | None) -> bool:
    return option.default if value is None else value


def option_values(option: Option, text: str | None) -> tuple:
    """One option's comma list parsed and checked against the registry's declaration."""
    if option.name == "precision":
        return split_list(text, (*PRECISIONS, AUTO_PRECISION), option.flag_name)
    if not option.grid:
        return (single_value(option, text),)
    if text is None:
        return (None,) if option.optional or option.name == "epochs" else (option.default,)
    if option.choices:
        return split_list(text, option.choices, option.flag_name)
    values = parse_numbers(text, option.kind, option.flag_name, option.minimum or 0, option.positive,
                           STORED_INT_MAX if option.maximum is None else option.maximum)
    if option.below is not None:
        require(all(value < option.below for value in values),
                f"{option.flag_name} must be below {option.below:g}, got {text}")
    return values


def single_value(option: Option, text: str | None) -> object:
    """A one-value option (the study tag) checked: one tag (bnrun.config.STUDY_PATTERN), or None."""
    if text is None:
        return None
    require(
        re.fullmatch(STUDY_PATTERN, text) is not None and len(text) <= STUDY_LENGTH and text.lower() != "none",
        f"{option.flag_name}: {text!r} is not a tag: a letter or digit, then letters, digits, '.', '_' or '-', at "
        f"most {STUDY_LENGTH} characters, not 'none'",
    )
    return text


def claim_grids(claim, given: GridOptions, seeds: int | None,
                explicit: list[int] | None) -> tuple[list[GridOptions], int | None]:
    """The grids that train a claim's two arms (its `select` and each arm's options, the other options at
    their defaults), and the seeds (the claim's min_seeds unless --seeds or --seed says otherwise). A
    recipe option given on the command line beside --claim is refused: the claim declares the recipe."""
    differing = [option.name for option in OPTIONS if option.panel != PATH
                 and getattr(given, option.name) != getattr(GridOptions(), option.name)]
    require(not differing, f"--claim {claim.id}: the claim declares the recipe; drop --{differing[0].replace('_', '-')}"
            if differing else "")
    grids = []
    for arm in (claim.a, claim.b):
        options = dict(claim.select) | dict(arm)
        unknown = [name for name in options if name not in GridOptions.__dataclass_fields__]
        require(not unknown, f"--claim {claim.id}: {', '.join(unknown)} cannot be trained from a claim")
        texts = {name: None if values == (None,) else ",".join(spelled(value) for value in values)
                 for name, values in options.items()}
        grids.append(without_inert_switches(replace(given, **texts)))
    return grids, (claim.min_seeds if seeds is None and not explicit else seeds)



def without_inert_switches(arm: GridOptions) -> GridOptions:
    """A claim's arm with --fused and --channels-last left unset where they have no effect (no custom BN, no
    CNN), so that one command line trains both arms."""
    if arm.bn == "none" or arm.bn_impl == "torch":
        arm = replace(arm, fused=None)
    return arm if arm.arch == "cnn" else replace(arm, channels_last=None)

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
    require(count <= MAX_GRID, f"the grid holds {count:,} trials, more than any grid may ({MAX_GRID:,}), --yes or not")
    require(
        yes or count <= MAX_TRIALS,
        f"the grid holds {count:,} trials ({count // seed_count:,} configurations × "
        f"{seed_count:,} seeds), more than {MAX_TRIALS:,}; pass --yes to train it, or "
        "--dry-run to look at it",
    )


def seed_count(seeds: int | None, explicit: list[int]) -> int:
    """How many seeds the options ask for, checked, without listing them."""
    require(seeds is None or not explicit, "--seeds and --seed are exclusive; give one of them")
    if explicit:
        require(all(0 <= s <= STORED_INT_MAX for s in explicit), f"--seed must be from 0 to {STORED_INT_MAX}")
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
    once everything else checked out, so that bad input is answered at once). The switches `fused` and
    `channels_last` unset take FAST_PATH's value (each applies where it can: the custom BN, the CNN).
    A grid of more than MAX_TRIALS trials needs `yes`; it is counted before it is built. `--device
    cuda` is checked here unless Ray trains elsewhere (then the cluster's GPUs are counted), and
    precision auto is bf16 only where `hardware_known` (the trials run on this machine's kind)."""
    axes = grid_axes(options)
    count = seed_count(seeds, list(explicit_seeds))
    require_momentum_cycle(dict(axes))
    fused, channels_last = options.fused, options.channels_last
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
    return output / REPORT_FILES[fmt] if output.is_dir() else matching_output(output, fmt)


FIGURE_FORMATS = ("png", "pdf", "svg")
# The extension each kind of file bnrun writes takes (a model: torch.save's .pt).
SUFFIXES = {**{fmt: Path(name).suffix for fmt, name in REPORT_FILES.items()},
            **{fmt: f".{fmt}" for fmt in FIGURE_FORMATS}, "model": ".pt"}


MODEL_SUFFIXES = ("", ".pt", ".pth")  # torch.save's names: a model is not written as .onnx or .safetensors


def matching_output(output: Path | None, kind: str) -> Path | None:
    """`output`, refused where its extension is another kind's (x.csv for --format json), or is not torch.save's
    for a model: a mistyped format or name, caught before the file is written. A name without an extension, or
    with one bnrun does not write, is taken as given."""
    if output is None or output.is_dir():
        return output
    suffix = output.suffix.lower()
    require(kind != "model" or suffix in MODEL_SUFFIXES,
            f"--output {output.name}: the model is written by torch.save; end it in .pt or .pth")
    other = next((name for name, known in SUFFIXES.items() if known == suffix and name != kind), None)
    what = "a model" if kind == "model" else f"{kind} output"
    require(other is None or suffix == SUFFIXES.get(kind),
            f"--output {output.name}: {suffix} is for {other} output, not {what}; end it in {SUFFIXES[kind]}")
    return output


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
    listed = "see bnrun plot --help, e.g. lr"
    if x is not None and x not in PIVOT_FIELDS:
        raise UsageError(unknown_choice("--x", x, NUMERIC_FIELDS, listed_in=listed))
    require(x is None or x in NUMERIC_FIELDS, f"--x: {x!r} is not numeric; {listed}")
    metric = metric or "test_acc_population"
    name = f"{metric}_by_{x}.png" if x else (f"{diagnostic}.png" if diagnostic else "learning_curves.png")
    path = figure_output(output, name)
    return PlotRequest(report_request(filters, metric, by=x, everything=everything), path, x, diagnostic, command)


# -- run management ---------------------------------------------------------------------------------------

def export_format(fmt: str, output: Path | None = None) -> str:
    require_choice(fmt, EXPORT_FORMATS, "--format")
    matching_output(output, fmt)
    return fmt


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
    require(device.lower() != "gpu", f"--device {device}: a GPU is --device cuda (auto takes it where there is one)")
    return require_choice(device, DEVICES, "--device")
