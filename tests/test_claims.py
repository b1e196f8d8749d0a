"""`bnrun claims`: declared claims computed from the store. Each rule on hand-made runs whose paired
differences are known (superiority, equivalence by TOST against scipy's one-sided tests,
non-inferiority), Holm within a family, incomplete claims naming their missing trials, the
evidence audit flagging undeclared pooling, the claims file's errors in one line, and the shipped
study's claims file on the shipped store."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from scipy import stats
from typer.testing import CliRunner

from bnrun.analysis.claims import Claim, evaluate, load_claims
from bnrun.cli import app
from bnrun.errors import ExitCode, UsageError
from bnrun.store import EpochRecord, FinalMetrics, Store
from conftest import REPO, SHIPPED

runner = CliRunner()
CLAIMS = REPO / "study" / "claims.toml"
PRE = [0.900, 0.905, 0.910, 0.902, 0.908, 0.904]  # test accuracies by seed
POST = [0.898, 0.904, 0.907, 0.901, 0.905, 0.902]
NONE = [0.880, 0.884, 0.889, 0.881, 0.886, 0.883]


def add_run(store: Store, bn: str, seed: int, accuracy: float, commit: str = "c1", cpu: str = "cpu", lr: float = 0.05,
            val: float | None = None) -> int:
    fields = dict(arch="mlp", bn=bn, bn_impl="custom", fused=False, seed=seed, epochs=2, batch_size=128, lr=lr,
                  momentum=0.9, weight_decay=5e-4, optimizer="sgd", schedule="onecycle", augment=True,
                  train_subset=None, device="cpu", bnrun_version="0", torch_version="0", python_version="3",
                  git_commit=commit, cpu_model=cpu)
    run_id = store.claim_run(fields, f"{bn}-{commit}-{lr}", "{}").run_id
    store.add_epoch(run_id, EpochRecord(1, 0.5, 0.8, 0.5, 0.8, 0.05, 1.0, 0.9))
    val = accuracy if val is None else val
    store.complete_run(run_id, FinalMetrics(0.2, 0.95, val, val, 0.3, accuracy, 0.3, accuracy), None)
    return run_id


@pytest.fixture
def arms(tmp_path) -> Path:
    db = tmp_path / "claims.db"
    store = Store(str(db))
    for bn, values in (("pre", PRE), ("post", POST), ("none", NONE)):
        for seed, accuracy in enumerate(values):
            add_run(store, bn, seed, accuracy)
    store.close()
    return db


def claim(**settings) -> Claim:
    values = dict(id="c", statement="s", rule="superiority", select=(("arch", ("mlp",)),), a=(("bn", ("pre",)),),
                  b=(("bn", ("none",)),), family="f", min_seeds=6)
    return Claim(**{**values, **settings})


def verdicts(db: Path, *claims: Claim):
    store = Store(str(db), read_only=True)
    try:
        return evaluate(store, list(claims))
    finally:
        store.close()


def differences(a, b) -> list[float]:
    return [100 * (x - y) for x, y in zip(a, b)]


def test_superiority_is_the_paired_t_test_of_the_declared_arms(arms):
    (result,) = verdicts(arms, claim())
    expected = stats.ttest_rel([100 * v for v in PRE], [100 * v for v in NONE])
    assert result.verdict == "supported" and result.n == 6
    assert result.effect == pytest.approx(sum(differences(PRE, NONE)) / 6)
    assert result.p == pytest.approx(expected.pvalue) and result.p_holm == pytest.approx(expected.pvalue)
    (reverse,) = verdicts(arms, claim(a=(("bn", ("none",)),), b=(("bn", ("pre",)),)))
    assert reverse.verdict == "contradicted"


def test_equivalence_is_tost_against_the_declared_margin(arms):
    diffs = differences(PRE, POST)
    lower = stats.ttest_1samp(diffs, -0.5, alternative="greater").pvalue
    upper = stats.ttest_1samp(diffs, 0.5, alternative="less").pvalue
    (result,) = verdicts(arms, claim(rule="equivalence", margin=0.5, b=(("bn", ("post",)),)))
    assert result.p == pytest.approx(max(lower, upper)) and result.verdict == "supported"
    (narrow,) = verdicts(arms, claim(rule="equivalence", margin=0.05, b=(("bn", ("post",)),)))
    assert narrow.verdict == "contradicted"  # the whole 95 % CI lies beyond ±0.05
    (wide_apart,) = verdicts(arms, claim(rule="equivalence", margin=0.5))  # pre − none is ~2 points
    assert wide_apart.verdict == "contradicted"


def test_non_inferiority_and_an_inconclusive_claim_says_how_many_seeds(arms):
    (result,) = verdicts(arms, claim(rule="non-inferiority", margin=0.3, a=(("bn", ("post",)),),
                                     b=(("bn", ("pre",)),)))
    assert result.verdict == "supported"
    (unsure,) = verdicts(arms, claim(rule="equivalence", margin=0.25, b=(("bn", ("post",)),)))
    assert unsure.verdict == "inconclusive" and unsure.seeds_needed > 6


def test_holm_corrects_within_the_family_only(arms):
    first, second, alone = verdicts(arms, claim(id="a"), claim(id="b", b=(("bn", ("post",)),)),
                                    claim(id="c", b=(("bn", ("post",)),), family="other"))
    assert first.p_holm == pytest.approx(min(1, 2 * first.p)) or first.p_holm == pytest.approx(2 * min(first.p, second.p))
    assert alone.p_holm == pytest.approx(alone.p)


def test_an_incomplete_claim_names_the_trials_it_lacks(arms):
    (result,) = verdicts(arms, claim(min_seeds=8))
    assert result.verdict == "incomplete" and result.missing == ("a seed 6", "b seed 6", "a seed 7", "b seed 7")


def test_runs_on_two_commits_are_flagged_unless_the_claim_declares_it(arms):
    store = Store(str(arms))
    add_run(store, "pre", 6, 0.906, commit="c2", cpu="other")
    add_run(store, "none", 6, 0.884, commit="c2", cpu="other")
    store.close()
    (flagged,) = verdicts(arms, claim(min_seeds=7))
    assert flagged.pooled == ("commit", "cpu") and flagged.undeclared_pooling == ("commit", "cpu")
    (declared,) = verdicts(arms, claim(min_seeds=7, pooled=("commit", "cpu"), pooling_reason="r"))
    assert declared.undeclared_pooling == ()


def test_a_tuned_claim_compares_each_arm_at_its_best_setting_by_validation(tmp_path):
    db = tmp_path / "tuned.db"
    store = Store(str(db))
    for seed in range(4):  # pre is best at lr 0.1 by validation, though its test accuracy is higher at 0.05
        add_run(store, "pre", seed, 0.95, lr=0.05, val=0.80)
        add_run(store, "pre", seed, 0.90 + seed / 1000, lr=0.1, val=0.90)
        add_run(store, "none", seed, 0.85 + seed / 500, lr=0.05, val=0.85)
    store.close()
    tuned = claim(min_seeds=4, select=(("arch", ("mlp",)), ("lr", (0.05, 0.1))), tune=("lr",))
    (incomplete,) = verdicts(db, tuned)  # none lacks its lr 0.1 setting: the choice waits for every setting
    assert incomplete.verdict == "incomplete" and "b lr 0.1 seed 0" in incomplete.missing
    store = Store(str(db))
    for seed in range(4):
        add_run(store, "none", seed, 0.10, lr=0.1, val=0.10)
    store.close()
    (result,) = verdicts(db, tuned)
    assert result.chosen == ("lr 0.1", "lr 0.05")
    assert result.effect == pytest.approx(sum(differences([0.90 + s / 1000 for s in range(4)],
                                                          [0.85 + s / 500 for s in range(4)])) / 4)
    with pytest.raises(UsageError, match="tune names options"):
        load_toml(tmp_path, "tune=['lr']\nselect={lr=0.1}\n")


def load_toml(tmp_path: Path, extra: str):
    path = tmp_path / "claims.toml"
    path.write_text("[[claims]]\nid='x'\nstatement='s'\nrule='superiority'\na={bn='pre'}\nb={bn='none'}\n"
                    f"family='f'\nmin_seeds=3\n{extra}")
    return load_claims(path)


def test_deleting_a_run_changes_the_claims_n(tmp_path):
    copy = tmp_path / "study.db"
    shutil.copyfile(SHIPPED, copy)
    before = {r["id"]: r for r in json.loads(invoke("--format", "json", "--db", str(copy)).stdout)}
    decided = next(r for r in before.values() if r["n"] > 2)
    with sqlite3.connect(copy) as connection:
        connection.execute("UPDATE runs SET deleted_at = CURRENT_TIMESTAMP WHERE id = ?", (decided["run_ids"][0],))
    after = {r["id"]: r for r in json.loads(invoke("--format", "json", "--db", str(copy)).stdout)}
    assert after[decided["id"]]["n"] == decided["n"] - 1


def invoke(*args: str):
    return runner.invoke(app, ["claims", "--claims", str(CLAIMS), *args])


def test_the_shipped_claims_on_the_shipped_store():
    result = invoke("--format", "json", "--db", str(SHIPPED))
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) >= 10
    for record in records:
        for key in ("verdict", "rule", "effect", "ci95", "n", "holm_p", "audit"):
            assert key in record
        assert record["audit"]["commit"] is not None
        if record["verdict"] in ("supported", "contradicted"):
            assert len(record["audit"]["commit"]) == 1 or "commit" in record["pooling_declared"], record["id"]
            assert not record["undeclared_pooling"], record["id"]
    assert any(record["rule"] == "equivalence" and record["margin"] for record in records)
    families = {record["family"] for record in records}
    assert {"headline-cnn", "headline-mlp", "depth", "regularization-bn", "batch-noise", "learning-rate",
            "placement-robustness", "depth32-tuned"} <= families


@pytest.mark.parametrize("fmt", ["table", "markdown", "latex"])
def test_every_format_renders(fmt):
    result = invoke("--format", fmt, "--db", str(SHIPPED))
    assert result.exit_code == 0 and "cnn-placement" in result.stdout


def test_the_table_keeps_every_claim_id_whole_within_80_columns():
    from bnrun.analysis.claims import load_claims

    ids = [claim.id for claim in load_claims(CLAIMS)]
    result = runner.invoke(app, ["claims", "--claims", str(CLAIMS), "--db", str(SHIPPED)], env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and max(map(len, lines)) <= 80
    first_words = {line.split()[0] for line in lines if line.strip()}
    assert set(ids) <= first_words  # each id on a line of its own, copyable into --id and train --claim


@pytest.mark.parametrize("text,message", [
    ("", "no [[claims]]"),
    ("[[claims]]\nid = 'x'\n", "no statement"),
    ("[[claims]]\nid='x'\nstatement='s'\nrule='equivalence'\na={bn='pre'}\nb={bn='post'}\nfamily='f'\nmin_seeds=3\n",
     "needs a positive margin"),
    ("[[claims]]\nid='x'\nstatement='s'\nrule='best'\na={}\nb={}\nfamily='f'\nmin_seeds=3\n", "rule 'best'"),
    ("[[claims]]\nid='x'\nstatement='s'\nrule='describe'\na={speed=1}\nb={}\nfamily='f'\nmin_seeds=3\n",
     "unknown option 'speed'"),
    ("[[claims", "not a claims file"),
])
def test_a_bad_claims_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "claims.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        load_claims(path)
    result = runner.invoke(app, ["claims", "--claims", str(path), "--db", str(SHIPPED)])
    assert result.exit_code == ExitCode.USAGE and len(result.stderr.strip().splitlines()) == 1


def test_train_claim_plans_what_the_claim_lacks(tmp_path):
    copy = tmp_path / "study.db"
    shutil.copyfile(SHIPPED, copy)
    result = runner.invoke(app, ["train", "--claim", "cnn-placement", "--claims", str(CLAIMS), "--precision", "fp32",
                                 "--fused", "--channels-last", "--dry-run", "--db", str(copy)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("every trial:") == 2 and "study=referee-cnn" in result.stdout  # one plan per arm
    assert "12 completed" in result.stdout  # the grid the claim names is the stored one
    refused = runner.invoke(app, ["train", "--claim", "cnn-placement", "--claims", str(CLAIMS), "--lr", "0.1",
                                  "--dry-run", "--db", str(copy)])
    assert refused.exit_code == ExitCode.USAGE and "drop --lr" in refused.stderr
    unknown = runner.invoke(app, ["train", "--claim", "nope", "--claims", str(CLAIMS), "--dry-run", "--db", str(copy)])
    assert unknown.exit_code == ExitCode.USAGE and "no such claim" in unknown.stderr


def test_family_selects_claims_and_keeps_holm_over_the_whole_family():
    every = {r["id"]: r for r in json.loads(invoke("--format", "json", "--db", str(SHIPPED)).stdout)}
    chosen = json.loads(invoke("--family", "headline-cnn", "--format", "json", "--db", str(SHIPPED)).stdout)
    assert chosen and {r["family"] for r in chosen} == {"headline-cnn"}
    assert all(r["holm_p"] == every[r["id"]]["holm_p"] for r in chosen)
    unknown = invoke("--family", "nope", "--db", str(SHIPPED))
    assert unknown.exit_code == ExitCode.USAGE and f"--family: unknown family 'nope'; see the families in {CLAIMS}" in unknown.stderr
