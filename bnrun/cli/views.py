"""Rich tables for the terminal: runs, one run, an evaluation. Presentation only."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bnrun.analysis.comparison import difference, value_text
from bnrun.analysis.diagnostic_summaries import mode_gap
from bnrun.analysis.metrics import signed
from bnrun.config import TRAIN_FIELDS, bn_text, counted, impl_text, option_text
from bnrun.registry import OPTIONS, PATH
from bnrun.store import CheckpointInfo, DiagnosticRecord, EpochRecord, EvaluationRecord, RunLabels, RunRecord, RunStatus

if TYPE_CHECKING:  # importing the run layer would pull in torch for every table
    from bnrun.analysis.comparison import RunDiff
    from bnrun.run.plan import SweepPlan
    from bnrun.run.reevaluation import EvalResult
    from bnrun.run.reproduction import Reproduction

class CommandConsole:
    """Rich's console, built afresh for each use: its width is COLUMNS if set, else the terminal's, else 80
    (also when piped), read when the command prints, not when bnrun was imported."""

    def __init__(self, **settings) -> None:
        self.settings = settings

    def __getattr__(self, name: str):
        return getattr(Console(**self.settings), name)

    def say(self, message: str) -> None:
        """A message (an error, a notice): one line where the stream is piped or a file, for grep and scripts;
        folded between words on a terminal narrower than it, which would otherwise cut it mid-word."""
        console = Console(**self.settings)
        console.print(message, markup=False, highlight=False, soft_wrap=not console.is_terminal)


STATUS_STYLE = {
    RunStatus.COMPLETED: "green",
    RunStatus.RUNNING: "cyan",
    RunStatus.FAILED: "red",
    RunStatus.INTERRUPTED: "yellow",
    RunStatus.DIVERGED: "magenta",
}


# Tables that fit 80 columns: a rule under the header, no vertical lines, one space between columns.
COMPACT = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def epochs_table(epochs: list[EpochRecord]) -> Table:
    table = Table(title="epochs", **COMPACT)
    for column in ("epoch", "train loss", "train %", "val loss", "val %", "lr", "seconds"):
        table.add_column(column, justify="right")
    for e in epochs:
        table.add_row(
            str(e.epoch),
            num(e.train_loss),
            pct(e.train_acc),
            num(e.val_loss),
            pct(e.val_acc),
            f"{e.lr:.4g}",
            f"{e.seconds:.1f}",
        )
    return table


def evaluation_table(result: EvalResult) -> Table:
    run, ev = result.run, result.evaluation
    title = (f"run {run.id}: {run.arch} {bn_text(run.bn, run.bn_impl, run.fused)} seed={run.seed}, "
             + (f"evaluation {ev.id}" if ev.id is not None else "not stored (--save keeps it)"))
    table = Table(title=title, min_width=len(title), **COMPACT)  # the title on one line where the terminal allows
    for column in ("statistics", "val %", "test %", "test loss", "stored test %", "same"):
        table.add_column(column, justify="left" if column == "statistics" else "right")
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
    title = "one-step loss ratio at initialization, r(η) = L(w − η∇L)/L(w) (Bjorck et al. 2018)"
    ratio = Table(title=title, min_width=48, **COMPACT)  # the title in two lines, not a thin column
    ratio.add_column("η", justify="right")
    ratio.add_column("r(η)", justify="right")
    for (_, _, eta), value in sorted(diagnostic_values(records, "loss_ratio").items(), key=lambda item: item[0][2]):
        ratio.add_row(f"{eta:.3g}", num(value))
    return [ratio, epoch_probe_table(records, epochs), layer_table(records)]


def epoch_probe_table(records: list[DiagnosticRecord], epochs: list[EpochRecord]) -> Table:
    table = Table(
        title="per epoch: prediction vs batch-statistics validation accuracy; smoothness along the gradient "
              "(Santurkar et al. 2018)",
        **COMPACT,
    )
    # headers broken by hand: rich would rather cut a word than fold a header
    for column in ("epoch", "val %\nrunning", "val %\nbatch\nstats", "gap", "loss\nrange", "max\n‖Δ∇L‖", "β-smoothness",
                   "probe\ns"):
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
    title = f"per layer, at initialization → after epoch {last}: gradient norm; BN input mean and std"
    table = Table(title=title, **COMPACT)
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
        f"run {original.id} ({original.arch} {bn_text(original.bn, original.bn_impl, original.fused)}, "
        f"seed {original.seed}) "
        f"trained again{'' if result.scratch is None else f' into {result.scratch}'}: {new.status}, "
        f"{new.epochs_completed}/{new.epochs} epochs"
    ]
    if result.identical:
        epochs = "the epoch" if new.epochs_completed == 1 else f"all {new.epochs_completed} epochs"
        lines.append(f"bit-identical: {epochs} and the final metrics match exactly")
    else:
        first = result.epoch_differences or result.final_differences
        if result.epoch_differences:
            lines.append(f"differs first at {first[0].where}:")
        elif result.final_differences:
            lines.append("every epoch matches; the final metrics differ:")
        else:
            lines.append(f"status differs: stored {original.status}, reproduced {new.status}")
        for d in first:  # a field's two values on lines of their own: full floats do not fit 80 columns side by side
            lines.append(f"  {d.field}:" + ("" if d.amount is None else f" Δ {d.amount:+.3g}"))
            lines += [f"    stored     {d.stored!r}", f"    reproduced {d.reproduced!r}"]
    if result.provenance_differences:
        lines.append("provenance that differs:")
        lines += [f"  {difference}" for difference in result.provenance_differences]
    else:
        lines.append("provenance: same commit, versions, CPU features, threads and device")
    return lines


# -- run management: runs, show, compare, tag, dry-run --------------------------------------------------


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{value:.0f}s")


COLUMN_NAMES = {option.name: option.header for option in OPTIONS if option.short}


def runs_table(
    runs: list[RunRecord], orphans: set[int], labels: dict[int, RunLabels], total: int, width: int = 80
) -> Table:
    """The runs with the options that vary among them as columns (as many as fit `width`, the
    most telling first; the others named below), the shared ones in the caption; numbers and
    labels never wrap, statuses, tags and notes fold."""
    from bnrun.analysis.listing import option_value, shared_options, varying_options

    more = "" if total == len(runs) else f" (of {total:,} matching; --limit N or --all for more)"
    title = counted(len(runs), "run") + more
    tags = {run.id: ", ".join(labels[run.id].tags) for run in runs if run.id in labels and labels[run.id].tags}
    notes = {run.id: "; ".join(text for text in (run.user_note, run.note) if text) for run in runs}
    notes = {run_id: text for run_id, text in notes.items() if text}
    status_width = max([len(run.status) for run in runs] + [6])
    folding = [word_width(texts.values()) for texts in (tags, notes) if texts]
    fixed = [max([len(str(run.id)) for run in runs] + [2]), status_width, 6, 6, 6, 5, *folding]
    candidates = tuple(name for name in varying_options(runs) if name != "epochs")  # the epochs column shows them
    varying, hidden = fitting_columns(runs, candidates, width - sum(w + 2 for w in fixed), option_value)
    shared = shared_options(runs)
    parts = []
    if shared:  # a single run's too: its table has no column of options
        head = "all" if len(runs) > 1 else "options"
        parts.append(f"{head}: " + ", ".join(f"{name}={option_text(value)}" for name, value in shared.items()))
    if hidden:
        parts.append("also varying (see bnrun show, or filter with --where): " + ", ".join(hidden))
    caption = "; ".join(parts) or None
    table = Table(title=title, caption=caption, caption_justify="left", **COMPACT)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("status", min_width=status_width)  # a mark like "(deleted)" folds below the status
    for name in varying:
        table.add_column(COLUMN_NAMES.get(name, name), justify="left" if name in LABELS else "right", no_wrap=True)
    for name in ("epochs", "test %\npop", "test %\nrun", "time"):
        table.add_column(name, justify="right", no_wrap=True)
    if tags:
        table.add_column("tags", overflow="fold", min_width=word_width(tags.values()))
    if notes:
        table.add_column("note", overflow="fold", min_width=word_width(notes.values()))
    for run in runs:
        style = STATUS_STYLE.get(run.status, "")
        status = f"[{style}]{run.status}[/]" + (" [red](process gone)[/]" if run.id in orphans else "")
        status += " [dim](deleted)[/]" if run.deleted_at else ""
        cells = [
            str(run.id),
            status,
            *(option_text(option_value(run, name)) for name in varying),
            f"{run.epochs_completed}/{run.epochs}",
            pct(run.test_acc_population),
            pct(run.test_acc_running),
            seconds(run.duration_s),
        ]
        if tags:
            cells.append(escape(tags.get(run.id, "")))
        if notes:
            cells.append(escape(notes.get(run.id, "")))
        table.add_row(*cells)
    return table


LONGEST_WORD = 20  # a tags or note column is as wide as its longest word up to this; only longer words fold


def word_width(texts) -> int:
    """The width that folds `texts` at word boundaries: their longest word's (8 to LONGEST_WORD)."""
    return min(LONGEST_WORD, max([len(word) for text in texts for word in text.split()] + [8]))


INTERNAL = (
    "config_key",
    "config_json",
    "heartbeat_at",
    "host",
    "pid",
    "claim",
    "claim_token",
    "cpu_features",
    "torch_threads",
    "grid_seeds",
    "epochs_completed",
    "bn_impl",
    "fused",
)
METRIC_ROWS = (
    ("test acc. (population)", "test_acc_population"),
    ("test acc. (running avg.)", "test_acc_running"),
    ("best val. acc.", "best_val_acc"),
    ("final val. acc.", "val_acc"),
    ("final train acc.", "train_acc"),
    ("train acc. (population)", "train_acc_population"),
)
LOSS_ROWS = (
    ("final train loss", "train_loss"),
    ("test loss (population)", "test_loss_population"),
    ("test loss (running avg.)", "test_loss_running"),
    ("train loss (population)", "train_loss_population"),
)


LABELS = ("arch", "bn", "impl", "optimizer", "schedule", "precision")
# The order in which varying options claim the listing's columns: what tells runs apart first.
COLUMN_PRIORITY = (*("impl" if option.name == "bn_impl" else option.name for option in OPTIONS if option.panel != PATH),
                   "seed", *(option.name for option in OPTIONS if option.panel == PATH))


def fitting_columns(runs: list[RunRecord], varying: tuple[str, ...], budget: int, value_of) -> tuple[list, list]:
    """The varying options that fit `budget` characters as columns (in COLUMN_PRIORITY order,
    shown in listing order), and the ones left out."""
    shown, left = [], []
    def rank(name: str) -> int:
        return COLUMN_PRIORITY.index(name) if name in COLUMN_PRIORITY else len(COLUMN_PRIORITY)

    for name in sorted(varying, key=rank):
        cell = max([len(COLUMN_NAMES.get(name, name))] + [len(option_text(value_of(run, name))) for run in runs])
        if cell + 2 <= budget:
            shown.append(name)
            budget -= cell + 2
        else:
            left.append(name)
    return [name for name in varying if name in shown], left


def weights_text(weights: CheckpointInfo | None) -> str:
    """Whether a completed run's weights are in the store, which bnrun eval and bnrun export model need."""
    if weights is None:
        return "not kept (bnrun eval and export model need them)"
    return f"kept, {weights.size_bytes / 1e6:.1f} MB (bnrun eval, bnrun export model)"


def run_table(run: RunRecord, labels: RunLabels | None, weights: CheckpointInfo | None = None,
              everything: bool = False) -> Table:
    """One run: what it is, how it ended, what it measured, whether its weights are kept, where it ran.
    Internal fields (the claim, the process, the key) only with `everything`."""
    table = Table(title=f"run {run.id}", show_header=False, box=box.SIMPLE, pad_edge=False)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("status", run.status + (f" (deleted {when(run.deleted_at)})" if run.deleted_at else "")),
        ("implementation", impl_text(run.bn, run.bn_impl, run.fused)),
        ("epochs", f"{run.epochs_completed}/{run.epochs}"),
    ]
    if run.status == RunStatus.COMPLETED:
        rows.append(("weights", weights_text(weights)))
    if labels is not None and labels.tags:
        rows.append(("tags", ", ".join(labels.tags)))
    if run.user_note:
        rows.append(("note (yours)", run.user_note))
    if run.note:
        rows.append(("why it ended", run.note))
    rows += [(label, pct_sign(getattr(run, name))) for label, name in METRIC_ROWS]
    rows += [(label, num(getattr(run, name))) for label, name in LOSS_ROWS]
    rows += [("started", when(run.started_at)), ("ended", when(run.ended_at)), ("duration", seconds(run.duration_s))]
    skip = {
        "id",
        "status",
        "note",
        "user_note",
        "deleted_at",
        "started_at",
        "ended_at",
        "duration_s",
        "epochs",
        *(name for _, name in METRIC_ROWS),
        *(name for _, name in LOSS_ROWS),
    }
    unrecorded = []
    for key, value in run.__dict__.items():
        if key in skip or (key in INTERNAL and not everything):
            continue
        if value is None and key not in TRAIN_FIELDS and not everything:  # a CPU run's CUDA fields, say
            unrecorded.append(key)
            continue
        rows.append((key, when(value) if isinstance(value, datetime) else option_text(num_or(value))))
    if unrecorded:
        rows.append(("not recorded", ", ".join(unrecorded)))
    for key, value in rows:
        table.add_row(key, escape(value))
    return table


def num_or(value: object) -> object:
    """Floats to 4 significant digits; anything else as it is."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def pct_sign(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def evaluations_table(evaluations: list[EvaluationRecord]) -> Table | None:
    """The run's stored evaluations (bnrun eval)."""
    if not evaluations:
        return None
    table = Table(title="evaluations (bnrun eval)", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("eval", "when", "device", "val % run", "val % pop", "test % run", "test % pop", "same"):
        table.add_column(
            column, justify="right" if column not in ("when", "device") else "left", no_wrap=column == "when"
        )
    for e in evaluations:
        table.add_row(
            str(e.id),
            when(e.created_at),
            e.device,
            pct(e.val_acc_running),
            pct(e.val_acc_population),
            pct(e.test_acc_running),
            pct(e.test_acc_population),
            "yes" if e.matches_stored else "[red]no[/]",
        )
    return table


def comparison_tables(diff: RunDiff) -> list:
    """`bnrun compare`: configuration, final metrics, per-epoch curves."""
    a, b = diff.a.id, diff.b.id
    shared = ", ".join(f"{name}={option_text(value)}" for name, value in diff.shared)
    config = Table(title=f"run {a} vs run {b}: configuration", box=box.SIMPLE_HEAD, pad_edge=False)
    config.add_column("option", no_wrap=True)
    for run_id in (a, b):
        config.add_column(f"run {run_id}", overflow="fold")
    for name, va, vb in diff.options:
        mark = "" if va == vb else "[bold]"
        config.add_row(f"{mark}{name}", option_text(va), option_text(vb))
    metrics = Table(title="final metrics", box=box.SIMPLE_HEAD, pad_edge=False)
    metrics.add_column("metric", no_wrap=True)
    for header in (f"run {a}", f"run {b}", f"{b} − {a}"):
        metrics.add_column(header, justify="right", no_wrap=True)
    for label, kind, va, vb in diff.metrics:
        metrics.add_row(label, value_text(kind, va), value_text(kind, vb), difference(kind, va, vb))
    curves = Table(title="per epoch", box=box.SIMPLE_HEAD, pad_edge=False)
    curves.add_column("epoch", justify="right", no_wrap=True)
    for header in (f"train loss {a}", f"train loss {b}", f"val % {a}", f"val % {b}"):
        curves.add_column(header, justify="right")
    for epoch, ea, eb in diff.curves:
        curves.add_row(
            str(epoch),
            num(ea and ea.train_loss, ".4f"),
            num(eb and eb.train_loss, ".4f"),
            pct(ea and ea.val_acc),
            pct(eb and eb.val_acc),
        )
    same = Text(f"same in both: {shared}\n" if shared else "", style="dim")
    return [config, same, metrics, curves]


def labels_lines(labels: list[RunLabels], lacking: dict[str, list[int]] | None = None) -> list[str]:
    """'run 3: tags a, b; note: text' per run, then each tag to remove that runs did not have."""
    lines = [
        f"run {item.run_id}: tags {', '.join(item.tags) or '—'}"
        + (f"; note: {item.user_note}" if item.user_note else "")
        for item in labels
    ]
    lines += [f"not tagged {tag}, left as they are: runs {', '.join(map(str, run_ids))}"
              for tag, run_ids in (lacking or {}).items()]
    return lines


PLAN_ROWS = 40  # configurations listed by --dry-run; the totals always cover all


def plan_table(plan: SweepPlan) -> Table:
    """`train --dry-run`: each configuration (the options that vary), what the store holds of it and
    what would run."""
    shown = plan.configs[:PLAN_ROWS]
    more = len(plan.configs) - len(shown)
    caption = f"and {more} more configurations (counted in the totals)" if more else None
    table = Table(
        title=f"{counted(len(plan.configs), 'configuration')} × "
              f"{counted(plan.configs[0].seeds if plan.configs else 0, 'seed')}",
        caption=caption,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption_justify="left",
    )
    for name in plan.varied:
        table.add_column(COLUMN_NAMES.get(name, name), overflow="fold")
    for column in ("done", RunStatus.DIVERGED, RunStatus.RUNNING, "to run"):
        table.add_column(column, justify="right", no_wrap=True)
    for planned in shown:
        options = [option_text(getattr(planned.config, name)) for name in plan.varied]
        table.add_row(
            *options, str(planned.completed), str(planned.diverged), str(planned.running), str(planned.to_run)
        )
    return table


def plan_lines(plan: SweepPlan, store_name: str) -> list[str]:
    """The grid's size, the options every trial shares, and the totals."""
    first = plan.configs[0].config if plan.configs else None
    shared = [
        f"{name}={option_text(getattr(first, name))}"
        for name in TRAIN_FIELDS
        if first is not None and name not in plan.varied
    ]
    held = (
        "no store yet (training creates it)"
        if not plan.store_exists
        else (
            f"the store holds {plan.total(RunStatus.COMPLETED):,} completed, {plan.total(RunStatus.DIVERGED):,} "
            f"diverged, {plan.total(RunStatus.RUNNING):,} running"
        )
    )
    to_run = f"{store_name}: {held}; {plan.total('to_run'):,} to run"
    return [plan.description, "every trial: " + ", ".join(shared), to_run]


def claims_table(results: list) -> Table:
    """`bnrun claims`: one row per claim (its id, rule, verdict, effect with its 95 % CI, n, Holm p); the
    statements, the evidence audit and the trials missing are in --format markdown and json."""
    from bnrun.analysis.claims import rule_text
    from bnrun.analysis.stats import p_text

    table = Table(title="bnrun claims", box=box.SIMPLE_HEAD, caption="a − b in points; --format json, or markdown "
                  "with --detail, for the statements, missing trials and each claim's commits and CPUs")
    longest_id = max((len(result.claim.id) for result in results), default=0)
    for name, justify in (("claim (rule)", "left"), ("verdict (n)", "left"), ("a − b (95% CI)", "right"),
                          ("Holm p", "right")):
        # each row two lines, so that 80 columns hold it: the claim's id whole (what --id and train --claim
        # take) over its rule, the verdict over its n, the effect over its interval
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name != "claim (rule)",
                         min_width=longest_id if name == "claim (rule)" else None)
    for result in results:
        ci = f"[{signed(result.ci[0])}, {signed(result.ci[1])}]" if result.ci else "—"
        verdict = result.verdict + ("*" if result.undeclared_pooling else "")
        claim = Text(result.claim.id)
        claim.append(f"\n{rule_text(result.claim)}", style="dim")
        table.add_row(claim, f"{verdict}\nn = {result.n}", f"{signed(result.effect)}\n{ci}", p_text(result.p_holm))
    if any(result.undeclared_pooling for result in results):
        table.caption += "; * its runs pool commits, CPUs or kernels the claim does not declare"
    return table
