"""Batch-norm diagnostics per group (runs trained with `--diagnostics`, evaluations with
`--batch-stats`): the numbers the report summarizes and the series the figures draw."""

from __future__ import annotations

from bnrun.analysis.grouping import Group
from bnrun.analysis.stats import Summary, summarize
from bnrun.analysis.styles import Style, group_styles
from bnrun.errors import UsageError
from bnrun.store import DiagnosticRecord, EpochRecord, EvaluationRecord


def mode_gap(val_acc: float, val_acc_batch_stats: float) -> float:
    """BN's train/test-mode gap in points: prediction-mode validation accuracy minus the accuracy
    with batch statistics (Wu & Johnson 2021)."""
    return 100 * (val_acc - val_acc_batch_stats)


DIAGNOSTIC_SUMMARIES = {
    "stable_eta": "largest η with r(η) < 1 at init",
    "mode_gap": "val. gap, prediction − batch stats, last epoch (points)",
    "beta_smoothness": "β-smoothness, last epoch",
    "loss_range": "loss range along ∇L, last epoch",
}


def run_diagnostic_summary(records: list[DiagnosticRecord], epochs: list[EpochRecord]) -> dict[str, float]:
    """The per-run numbers the report aggregates (only those the run has)."""
    values: dict[str, float] = {}
    helps = [r.x for r in records if r.kind == "loss_ratio" and r.value is not None and r.value < 1]
    if any(r.kind == "loss_ratio" for r in records):
        values["stable_eta"] = max(helps) if helps else 0.0
    last = max((r.epoch for r in records), default=0)
    final = {r.kind: r.value for r in records if r.epoch == last and r.name == "model" and r.value is not None}
    epoch = next((e for e in epochs if e.epoch == last), None)
    if epoch is not None and "val_acc_batch_stats" in final:
        values["mode_gap"] = mode_gap(epoch.val_acc, final["val_acc_batch_stats"])
    for kind in ("beta_smoothness", "loss_range"):
        if kind in final:
            values[kind] = final[kind]
    return values


def diagnostic_summaries(groups: tuple[Group, ...], diagnostics: dict, epochs: dict) -> dict[tuple, dict[str, Summary]]:
    """{group key: {summary name: mean ± std over the group's runs with diagnostics}}."""
    result = {}
    for group in groups:
        per_run = [run_diagnostic_summary(diagnostics.get(r.id, []), epochs.get(r.id, [])) for r in group.runs]
        per_run = [values for values in per_run if values]
        if per_run:
            result[group.key] = {
                name: summarize([v[name] for v in per_run if name in v]) for name in DIAGNOSTIC_SUMMARIES
            }
    return result


def diagnostic_series(
    group: Group, diagnostics: dict, epochs: dict, kind: str, axis_field: str
) -> dict[float, list[float]]:
    """{x: [value per run]} of one diagnostic for a group's runs."""
    series: dict[float, list[float]] = {}
    for run in group.runs:
        for x, value in run_diagnostic(diagnostics.get(run.id, []), epochs.get(run.id, []), kind, axis_field).items():
            series.setdefault(x, []).append(value)
    return series


def run_diagnostic(
    records: list[DiagnosticRecord], epochs: list[EpochRecord], kind: str, axis_field: str
) -> dict[float, float]:
    """{x: value} of one diagnostic kind for one run (mode_gap and grad_norm_total derived from the records)."""
    if kind == "mode_gap":
        batch = {r.epoch: r.value for r in records if r.kind == "val_acc_batch_stats" and r.value is not None}
        return {e.epoch: mode_gap(e.val_acc, batch[e.epoch]) for e in epochs if e.epoch in batch}
    if kind == "grad_norm_total":
        totals: dict[float, float] = {}
        for r in records:
            if r.kind == "grad_norm" and r.value is not None:
                totals[r.epoch] = totals.get(r.epoch, 0.0) + r.value**2
        return {e: v**0.5 for e, v in totals.items()}
    return {getattr(r, axis_field): r.value for r in records if r.kind == kind and r.value is not None}


def batch_stat_rows(
    groups: tuple[Group, ...], evaluations: dict[int, list[EvaluationRecord]], varying: tuple[str, ...] = ()
) -> list[tuple[str, dict[int, list[float]], Style]]:
    """Per group: {batch size: [test accuracy per run]} from each run's latest stored `eval --batch-stats`;
    each labelled with the `varying` options too and n, the runs evaluated, and drawn in the group's style."""
    rows = []
    for group, style in zip(groups, group_styles(list(groups))):
        series: dict[int, list[float]] = {}
        evaluated = 0
        for run in group.runs:
            latest = [e for e in evaluations.get(run.id, []) if e.batch_stats_json]
            evaluated += bool(latest)
            for size, (_, accuracy) in latest[-1].batch_stats().items() if latest else ():
                series.setdefault(size, []).append(accuracy)
        if series:
            rows.append((f"{group.label(varying)} (n={evaluated})", series, style))
    if not rows:
        raise UsageError(
            "no stored evaluation with batch statistics among these runs; run e.g.: bnrun eval N "
            "--batch-stats 2,8,32,128 --save"
        )
    return rows
