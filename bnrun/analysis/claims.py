"""Claims as data: each verdict of the study computed from a declared claim (Lakens, 2017, "Equivalence
tests"; registered reports), never typed.

A claim (study/claims.toml) fixes, before its verdict is read: its statement; its runs (options
every run shares, `select`, and the two arms `a` and `b`, paired by seed); the metric; its family,
over which Holm corrects; its decision rule; the seeds it needs; and, where its runs span more than
one commit, CPU, kernel build, thread count, precision or executor, the pooling it accepts and why.

The rules, each on the paired difference a − b (in the metric's unit, points for accuracies), with
α = 0.05 and the p-value Holm-adjusted within the family:
- `superiority` (a > b): supported when Holm p < α and the 95 % CI lies above 0, contradicted when
  Holm p < α and it lies below 0, else inconclusive;
- `equivalence` (|a − b| < margin, TOST): supported when the larger one-sided p (Holm) < α, i.e. the
  90 % CI lies within ±margin; contradicted when the 95 % CI lies wholly outside it;
- `non-inferiority` (a − b > −margin): supported when the one-sided p (Holm) < α, contradicted when
  the 95 % CI lies below −margin;
- `describe`: the numbers, no test.
A claim may `tune` options over the values its runs declare (lists in `select` or in an arm): each arm
then stands at its own best setting of them, the one with the highest mean `tune_by` metric (final
validation accuracy by default) over its seeds, and its test metric is what the rule compares. Every
setting must hold the claim's seeds: the choice is made among all of them or not at all.
A claim with fewer paired seeds than it declares is incomplete, with the trials it lacks; an
inconclusive one says how many seeds the observed spread would need to decide.
"""

from __future__ import annotations

import functools
import itertools
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bnrun.analysis.grouping import PIVOT_FIELDS, RunFilter
from bnrun.analysis.metrics import CHANCE, HIGHER_IS_BETTER, METRICS, metric_value, scale, signed
from bnrun.analysis.queries import filtered_runs
from bnrun.analysis.stats import CONFIDENCE, holm_adjust, p_text, paired_t_test
from bnrun.config import TRAIN_FIELDS, TrainConfig
from bnrun.errors import UsageError
from bnrun.store import RunRecord, RunStatus, Store

RULES = ("superiority", "equivalence", "non-inferiority", "describe")
ALPHA = 0.05
VERDICTS = ("supported", "contradicted", "inconclusive", "incomplete", "described")
# The runs a filter accepts: `filtered_runs` on one store, read once per filter while claims are evaluated.
RunsOf = Callable[[RunFilter], list[RunRecord]]
# What a claim's runs must share, or declare pooled: the run record's field for each.
AUDITED = {"commit": "git_commit", "cpu": "cpu_model", "kernel": "kernel_isa", "threads": "torch_threads",
           "precision": "precision", "executor": "executor"}
ARM_OPTIONS = (*PIVOT_FIELDS, "bn_impl")
ACCURACIES = HIGHER_IS_BETTER & {"test_acc_population", "test_acc_running", "best_val_acc", "val_acc"}
MAX_SEEDS = 1000
MAX_CLAIMS_BYTES = 1 << 20  # the power search stops here: beyond it a claim is not decidable by seeds


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    rule: str
    select: tuple[tuple[str, tuple], ...]
    a: tuple[tuple[str, tuple], ...]
    b: tuple[tuple[str, tuple], ...]
    family: str
    min_seeds: int
    metric: str = "test_acc_population"
    margin: float | None = None
    pooled: tuple[str, ...] = ()
    pooling_reason: str = ""
    diverged_at_chance: bool = False  # a diverged trial counts at chance accuracy (declared: `diverged = "chance"`)
    tune: tuple[str, ...] = ()  # options each arm takes at its best setting (by `tune_by`)
    tune_by: str = "val_acc"


@dataclass(frozen=True)
class Audit:
    """The distinct values of each audited field among a claim's runs."""

    values: dict[str, tuple] = field(default_factory=dict)

    def spread(self) -> tuple[str, ...]:
        return tuple(name for name, values in self.values.items() if len(values) > 1)


@dataclass(frozen=True)
class Result:
    claim: Claim
    verdict: str
    n: int
    effect: float | None = None  # mean a − b, in the metric's display unit
    spread: float | None = None  # the paired differences' sample std, same unit
    ci: tuple[float, float] | None = None  # 95 %
    p: float | None = None  # the rule's p-value (two-sided, TOST's larger one-sided, or one-sided)
    p_holm: float | None = None
    seeds_needed: int | None = None
    missing: tuple[str, ...] = ()  # the trials an incomplete claim lacks
    audit: Audit = Audit()
    run_ids: tuple[int, ...] = ()
    chosen: tuple[str, str] | None = None  # a tuned claim's setting for each arm, e.g. ("lr 0.01", "lr 0.05")

    @property
    def pooled(self) -> tuple[str, ...]:
        return self.audit.spread()

    @property
    def undeclared_pooling(self) -> tuple[str, ...]:
        return tuple(name for name in self.pooled if name not in self.claim.pooled)


# -- the claims file -------------------------------------------------------------------------------------------

def load_claims(path: Path) -> list[Claim]:
    """The claims of a TOML file (a `[[claims]]` table each), checked; UsageError names the first problem."""
    path = Path(path)
    if not path.is_file():  # a directory or a device (/dev/zero reads forever) is no claims file
        raise UsageError(f"--claims {path}: no such file" if not path.exists() else f"--claims {path}: not a file")
    if path.stat().st_size > MAX_CLAIMS_BYTES:
        raise UsageError(f"--claims {path}: larger than {MAX_CLAIMS_BYTES:,} bytes; not a claims file")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--claims {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as error:
        raise UsageError(f"--claims {path}: not a claims file ({error})") from None
    claims = [claim_of(entry, index) for index, entry in enumerate(data.get("claims", []), 1)]
    ids = [claim.id for claim in claims]
    duplicate = next((name for name in ids if ids.count(name) > 1), None)
    if duplicate:
        raise UsageError(f"--claims {path}: claim id {duplicate!r} is declared twice")
    if not claims:
        raise UsageError(f"--claims {path}: no [[claims]] in it")
    return claims


def claim_of(entry: dict, index: int) -> Claim:
    where = f"claim {entry.get('id', index)!r}"
    for key in ("id", "statement", "rule", "a", "b", "family", "min_seeds"):
        if key not in entry:
            raise UsageError(f"{where}: no {key}")
    rule = entry["rule"]
    if rule not in RULES:
        raise UsageError(f"{where}: rule {rule!r}; choose from {', '.join(RULES)}")
    margin = entry.get("margin")
    if rule in ("equivalence", "non-inferiority") and not (isinstance(margin, int | float) and margin > 0):
        raise UsageError(f"{where}: the {rule} rule needs a positive margin, declared with the claim")
    metric = entry.get("metric", "test_acc_population")
    if metric not in METRICS:
        raise UsageError(f"{where}: metric {metric!r}; choose from {', '.join(METRICS)}")
    pooled = tuple(entry.get("pooled", ()))
    unknown = [name for name in pooled if name not in AUDITED]
    if unknown or (pooled and not entry.get("pooling_reason")):
        raise UsageError(f"{where}: pooled names {', '.join(AUDITED)} only, with a pooling_reason")
    select, a, b = (options_of(entry.get(key, {}), where) for key in ("select", "a", "b"))
    tune, tune_by = tuned_options(entry, select, a, b, where)
    return Claim(entry["id"], entry["statement"], rule, select, a, b, entry["family"],
                 int(entry["min_seeds"]), metric, margin, pooled, entry.get("pooling_reason", ""),
                 diverged_at_chance(entry, metric, where), tune, tune_by)


def tuned_options(entry: dict, select, a, b, where: str) -> tuple[tuple[str, ...], str]:
    """The claim's `tune` (options whose values it lists) and `tune_by` (an accuracy), checked."""
    tune, tune_by = tuple(entry.get("tune", ())), entry.get("tune_by", "val_acc")
    for arm in (a, b):
        listed = {name for name, values in (dict(select) | dict(arm)).items() if len(values) > 1}
        if tune and not set(tune) <= listed:
            raise UsageError(f"{where}: tune names options whose values both arms list ({', '.join(sorted(listed))})")
    if tune_by not in ACCURACIES:
        raise UsageError(f"{where}: tune_by {tune_by!r}; choose from {', '.join(sorted(ACCURACIES))}")
    return tune, tune_by


def diverged_at_chance(entry: dict, metric: str, where: str) -> bool:
    value = entry.get("diverged")
    if value is None:
        return False
    if value != "chance" or metric not in ACCURACIES:
        raise UsageError(f"{where}: diverged = \"chance\" is the one choice, for an accuracy metric")
    return True


def options_of(table: dict, where: str) -> tuple[tuple[str, tuple], ...]:
    """{'lr': 0.1, 'bn': ['pre', 'post']} -> (('bn', ('pre', 'post')), ('lr', (0.1,))): each option's allowed values."""
    unknown = [name for name in table if name not in ARM_OPTIONS]
    if unknown:
        raise UsageError(f"{where}: unknown option {unknown[0]!r}; choose from {', '.join(ARM_OPTIONS)}")
    def values(name: str, value: object) -> tuple:
        return tuple(stored_value(name, item) for item in (value if isinstance(value, list) else [value]))

    return tuple(sorted((name, values(name, value)) for name, value in table.items()))


def stored_value(name: str, value: object) -> object:
    """A claim's option value as the store holds it: "none" is an option left unset (TOML has no null)."""
    unset = name in TRAIN_FIELDS and getattr(TrainConfig(), name) is None
    return None if unset and value == "none" else value


# -- computing a claim -----------------------------------------------------------------------------------------

def arm_filter(claim: Claim, arm: tuple[tuple[str, tuple], ...]) -> RunFilter:
    options = dict(claim.select) | dict(arm)
    impls = options.pop("bn_impl", ())
    archs, placements = options.pop("arch", ()), options.pop("bn", ())
    return RunFilter(archs=archs, placements=placements, impls=impls, where=tuple(sorted(options.items())))


def counted_runs(runs_of: RunsOf, claim: Claim, arm) -> list[RunRecord]:
    """The arm's completed runs (and diverged ones, where the claim counts them at chance), oldest first."""
    kept = (RunStatus.COMPLETED, RunStatus.DIVERGED) if claim.diverged_at_chance else (RunStatus.COMPLETED,)
    runs = [run for run in runs_of(arm_filter(claim, arm)) if run.status in kept]
    return sorted(runs, key=lambda run: run.id)


def arm_runs(runs_of: RunsOf, claim: Claim, arm) -> dict[int, RunRecord]:
    """The arm's runs by seed (the latest where a seed was trained more than once)."""
    return {run.seed: run for run in counted_runs(runs_of, claim, arm)}


def settings_of(claim: Claim, arm) -> list[tuple]:
    """Every setting of a tuned claim's options for an arm: the product of the values it lists."""
    options = dict(claim.select) | dict(arm)
    return list(itertools.product(*(options[name] for name in claim.tune)))


def tuned_arm(runs_of: RunsOf, claim: Claim, arm) -> tuple[dict[int, RunRecord], str | None, tuple[str, ...]]:
    """A tuned arm at its best setting: its runs by seed, the setting in words, and the trials any
    setting lacks (the choice waits for all of them)."""
    if not claim.tune:
        return arm_runs(runs_of, claim, arm), None, ()
    by_setting: dict[tuple, dict[int, RunRecord]] = {}
    for run in counted_runs(runs_of, claim, arm):
        by_setting.setdefault(tuple(getattr(run, name) for name in claim.tune), {})[run.seed] = run
    lacking = tuple(f"{setting_text(claim, setting)} seed {seed}" for setting in settings_of(claim, arm)
                    for seed in range(claim.min_seeds) if seed not in by_setting.get(setting, {}))
    if lacking:
        return {}, None, lacking
    def tuning_score(setting: tuple) -> float:
        values = [tuned_value(run, claim) for run in by_setting[setting].values()]
        return sum(values) / len(values)

    best = max(settings_of(claim, arm), key=tuning_score)
    return by_setting[best], setting_text(claim, best), ()


def tuned_value(run: RunRecord, claim: Claim) -> float:
    value = CHANCE if run.status == RunStatus.DIVERGED else metric_value(run, claim.tune_by)
    return CHANCE if value is None else value


def setting_text(claim: Claim, setting: tuple) -> str:
    """'lr 0.01, schedule warmup'."""
    return ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in zip(claim.tune, setting))


def claim_value(run: RunRecord, claim: Claim) -> float | None:
    """The claim's metric of a run, in its display unit; a diverged run at chance where the claim says so."""
    value = CHANCE if run.status == RunStatus.DIVERGED else metric_value(run, claim.metric)
    return None if value is None else value * scale(claim.metric)


def audit_of(runs: Iterable[RunRecord]) -> Audit:
    runs = list(runs)
    values = {name: {getattr(run, column) for run in runs} for name, column in AUDITED.items()}
    values["kernel"].discard(None)  # torch's BN and no BN run no kernel: not a second build
    return Audit({name: tuple(sorted(found, key=str)) for name, found in values.items()})


def missing_trials(claim: Claim, a: dict[int, RunRecord], b: dict[int, RunRecord]) -> tuple[str, ...]:
    lacking = []
    for seed in range(claim.min_seeds):
        lacking += [f"{side} seed {seed}" for side, runs in (("a", a), ("b", b)) if seed not in runs]
    return tuple(lacking)


def evaluate(store: Store, claims: list[Claim]) -> list[Result]:
    """Every claim computed from the store, Holm-corrected within each family (the runs of an arm that several
    claims share read once)."""
    runs_of = functools.cache(functools.partial(filtered_runs, store))
    results = [evaluate_one(runs_of, claim) for claim in claims]
    return with_family_holm(results)


def evaluate_one(runs_of: RunsOf, claim: Claim) -> Result:
    (a, chosen_a, lacking_a), (b, chosen_b, lacking_b) = (tuned_arm(runs_of, claim, arm) for arm in (claim.a, claim.b))
    seeds = sorted(set(a) & set(b))
    pairs = [(claim_value(a[s], claim), claim_value(b[s], claim)) for s in seeds]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    runs = [a[s] for s in seeds] + [b[s] for s in seeds]
    chosen = (chosen_a, chosen_b) if claim.tune and chosen_a and chosen_b else None
    base = dict(n=len(pairs), audit=audit_of(runs), run_ids=tuple(sorted(run.id for run in runs)), chosen=chosen)
    missing = tuple(f"a {trial}" for trial in lacking_a) + tuple(f"b {trial}" for trial in lacking_b)
    missing = missing or missing_trials(claim, a, b)
    if len(pairs) < max(claim.min_seeds, 2):
        return Result(claim, "incomplete", missing=missing or ("a paired seed with the metric",), **base)
    test = paired_t_test([x for x, _ in pairs], [y for _, y in pairs], CONFIDENCE)
    ci = (test.ci_low, test.ci_high) if test.ci_low is not None else None
    return Result(claim, "described" if claim.rule == "describe" else "pending", effect=test.mean_diff,
                  spread=test.std_diff, ci=ci, p=rule_p(claim, len(pairs), test.mean_diff, test.std_diff), **base)


def rule_p(claim: Claim, n: int, mean: float, std: float | None) -> float | None:
    """The rule's p-value from the paired differences' mean and sample std (None: no test)."""
    from scipy.stats import t

    if claim.rule == "describe":
        return None
    if not std:  # no spread: the mean decides alone
        decided = {"superiority": mean != 0, "equivalence": abs(mean) < claim.margin,
                   "non-inferiority": mean > -claim.margin}[claim.rule]
        return 0.0 if decided else 1.0
    se = std / math.sqrt(n)
    if claim.rule == "superiority":
        return float(2 * t.sf(abs(mean) / se, n - 1))
    if claim.rule == "equivalence":
        return float(max(t.sf((mean + claim.margin) / se, n - 1), t.cdf((mean - claim.margin) / se, n - 1)))
    return float(t.sf((mean + claim.margin) / se, n - 1))


def with_family_holm(results: list[Result]) -> list[Result]:
    families: dict[str, list[int]] = {}
    for index, result in enumerate(results):
        if result.verdict == "pending":
            families.setdefault(result.claim.family, []).append(index)
    decided = list(results)
    for members in families.values():
        adjusted = holm_adjust([results[i].p for i in members])
        for index, p_holm in zip(members, adjusted):
            decided[index] = decide(results[index], p_holm)
    return decided


def decide(result: Result, p_holm: float) -> Result:
    claim, (low, high), mean = result.claim, result.ci, result.effect
    verdict = "inconclusive"
    if claim.rule == "superiority":
        if p_holm < ALPHA and low > 0:
            verdict = "supported"
        elif p_holm < ALPHA and high < 0:
            verdict = "contradicted"
    elif claim.rule == "equivalence":
        if p_holm < ALPHA:
            verdict = "supported"
        elif low > claim.margin or high < -claim.margin:
            verdict = "contradicted"
    elif p_holm < ALPHA:
        verdict = "supported"
    elif high < -claim.margin:
        verdict = "contradicted"
    needed = seeds_needed(claim, mean, result.spread) if verdict == "inconclusive" else None
    return replace(result, verdict=verdict, p_holm=p_holm, seeds_needed=needed)


def seeds_needed(claim: Claim, mean: float, std: float | None) -> int | None:
    """The paired seeds at which the observed mean and spread would decide the claim (before Holm), or
    None where no number of seeds would (a mean of 0 for superiority, one beyond the margin for equivalence)."""
    import numpy as np
    from scipy.stats import t

    if not std or (claim.rule == "superiority" and not mean):
        return None
    n = np.arange(3, MAX_SEEDS + 1)
    se = std / np.sqrt(n)
    if claim.rule == "superiority":
        decided = abs(mean) / se > t.ppf(1 - ALPHA / 2, n - 1)
    elif claim.rule == "equivalence":
        decided = claim.margin - abs(mean) > t.ppf(1 - ALPHA, n - 1) * se
    elif claim.rule == "non-inferiority":
        decided = (mean + claim.margin) / se > t.ppf(1 - ALPHA, n - 1)
    else:
        return None
    return int(n[decided.argmax()]) if decided.any() else None


# -- the results as records and text ---------------------------------------------------------------------------

def result_record(result: Result) -> dict:
    """One claim's result as plain values (`claims --format json`): the unit is the metric's ("points" for
    accuracies), named in the field."""
    claim = result.claim
    unit = "points" if scale(claim.metric) == 100.0 else "value"
    return {
        "id": claim.id, "statement": claim.statement, "rule": claim.rule, "margin": claim.margin,
        "metric": claim.metric, "unit": unit, "family": claim.family, "min_seeds": claim.min_seeds,
        "verdict": result.verdict, "n": result.n, "effect": result.effect,
        "ci95": list(result.ci) if result.ci else None, "p": result.p, "holm_p": result.p_holm,
        "seeds_needed": result.seeds_needed, "missing": list(result.missing),
        "audit": {name: [value for value in values] for name, values in result.audit.values.items()},
        "pooled": list(result.pooled), "pooling_declared": list(claim.pooled),
        "pooling_reason": claim.pooling_reason or None, "undeclared_pooling": list(result.undeclared_pooling),
        "run_ids": list(result.run_ids), "tuned": list(claim.tune), "tuned_by": claim.tune_by if claim.tune else None,
        "chosen": {"a": result.chosen[0], "b": result.chosen[1]} if result.chosen else None,
    }


def numbers_text(result: Result) -> str:
    """'a − b +0.03 points, 95 % CI [−0.13, +0.19], n = 12, Holm p 0.01' (what each verdict rests on)."""
    if result.effect is None:
        return f"n = {result.n}; lacking {', '.join(result.missing[:6])}" + (" …" if len(result.missing) > 6 else "")
    unit = " points" if scale(result.claim.metric) == 100.0 else ""
    parts = [f"a − b {signed(result.effect)}{unit}"]
    if result.chosen:
        parts.append(f"a at {result.chosen[0]} and b at {result.chosen[1]} (best by {result.claim.tune_by})")
    if result.ci:
        parts.append(f"95 % CI [{signed(result.ci[0])}, {signed(result.ci[1])}]")
    parts.append(f"n = {result.n}")
    if result.p_holm is not None:
        parts.append(f"Holm p {p_text(result.p_holm)}")
    if result.seeds_needed:
        parts.append(f"about {result.seeds_needed} seeds would decide it")
    return ", ".join(parts)


def rule_text(claim: Claim) -> str:
    """'superiority', 'equivalence ±0.25', 'non-inferiority −0.5', 'describe'."""
    if claim.rule == "equivalence":
        return f"equivalence ±{claim.margin:g}"
    if claim.rule == "non-inferiority":
        return f"non-inferiority −{claim.margin:g}"
    return claim.rule


def evidence_text(result: Result) -> str:
    """The runs' commits, CPUs and kernel builds, and the pooling, in a few words."""
    audit = result.audit.values
    commits = ", ".join(str(commit)[:7] for commit in audit.get("commit", ()))
    text = f"commit {commits}; {' / '.join(str(cpu) for cpu in audit.get('cpu', ()))}"
    if result.undeclared_pooling:
        text += f"; pooled, undeclared: {', '.join(result.undeclared_pooling)}"
    elif result.pooled:
        text += f"; pooled ({', '.join(result.pooled)}): {result.claim.pooling_reason}"
    return text


def markdown(results: list[Result]) -> str:
    """A table of the verdicts: claim, rule, verdict, a − b, 95 % CI, n, Holm p (points for accuracies)."""
    rows = ["| claim | rule | verdict | a − b | 95 % CI | n | Holm p |", "|---|---|---|---:|---:|---:|---:|"]
    for result in results:
        ci = f"[{signed(result.ci[0])}, {signed(result.ci[1])}]" if result.ci else "—"
        pooled = " (pooled, undeclared)" if result.undeclared_pooling else ""
        rows.append(f"| `{result.claim.id}` | {rule_text(result.claim)} | **{result.verdict}**{pooled} | "
                    f"{signed(result.effect)} | {ci} | {result.n} | {p_text(result.p_holm)} |")
    return "\n".join(rows)


def markdown_detail(results: list[Result]) -> str:
    """A list item per claim: the statement, the verdict in bold, its numbers and evidence."""
    lines = []
    for result in results:
        claim = result.claim
        lines.append(f"- **{result.verdict}** ({rule_text(claim)}; family {claim.family}) `{claim.id}`: "
                     f"{claim.statement} {numbers_text(result)} ({evidence_text(result)}).")
    return "\n".join(lines)


def latex(results: list[Result]) -> str:
    """A booktabs longtable of the claims (it breaks across pages, its header repeated), two lines a claim as
    the terminal's table: the id over its rule, the verdict over n, the effect over its CI, Holm p; numbers in
    math mode, so that a minus is a minus."""
    from bnrun.analysis.latex import latex_escape

    header = r"claim (rule) & verdict ($n$) & $a - b$ (95\% CI) & Holm $p$ \\"
    rows = ["% needs \\usepackage{booktabs,longtable}", r"{\footnotesize", r"\begin{longtable}{llrr}", r"\toprule",
            header, r"\midrule", r"\endhead", r"\bottomrule", r"\endfoot"]
    for result in results:
        ci = "" if not result.ci else f"$[{result.ci[0]:+.2f}, {result.ci[1]:+.2f}]$"
        effect = "--" if result.effect is None else f"${result.effect:+.2f}$"
        rows.append(f"{latex_escape(result.claim.id)} & {result.verdict} & {effect} & "
                    f"{latex_escape(p_text(result.p_holm))} \\\\")
        rows.append(f"\\quad {latex_escape(rule_text(result.claim))} & $n = {result.n}$ & {ci} & \\\\[2pt]")
    return "\n".join([*rows, r"\end{longtable}", "}"])
