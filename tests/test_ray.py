"""The Ray executor on a real local cluster of a head and two worker nodes
(`ray.cluster_utils.Cluster`): a grid of small trials on the real data subset, one worker node
killed mid-trial. Every trial ends completed exactly once; the lost attempt is failed, with its note."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from bnrun.store.storage import LOST_ATTEMPT_NOTE
from conftest import bnrun_command, default_sigint, run_bnrun

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GRID = ["train", "--arch", "mlp", "--bn", "pre,none", "--seeds", "2", "--epochs", "8", "--train-subset", "20000",
        "--executor", "ray", "--cpus-per-trial", "1"]


def rows(db, sql: str) -> list[tuple]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as connection:
        result = [tuple(r) for r in connection.execute(text(sql))]
    engine.dispose()
    return result


@pytest.fixture(scope="module")
def cluster():
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def running(db) -> int:
    """Rows in `running` status (0 while the store is still being created)."""
    try:
        return rows(db, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0]
    except OperationalError:
        return 0


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_marks_them_interrupted(cluster, tmp_path):
    cluster, _ = cluster
    db = tmp_path / "interrupted.db"
    driver = subprocess.Popen(bnrun_command(*GRID, "--ray-address", cluster.address, "--db", str(db)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    wait_for(lambda: db.exists() and running(db) == 2)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "interrupted" in stderr.splitlines()[-1]
    statuses = rows(db, "SELECT status, claim FROM runs ORDER BY id")
    assert statuses == [("interrupted", None), ("interrupted", None)], statuses  # the claims are free again


def test_grid_on_two_worker_nodes_survives_a_dead_node(cluster, tmp_path):
    cluster, workers = cluster
    db = tmp_path / "ray.db"
    driver = subprocess.Popen(bnrun_command(*GRID, "--ray-address", cluster.address, "--db", str(db)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def two_trials_training() -> bool:
        if driver.poll() is not None:
            pytest.fail(driver.communicate()[1])
        return db.exists() and running(db) == 2 and rows(db, "SELECT count(*) FROM epochs")[0][0] >= 1

    wait_for(two_trials_training)
    cluster.remove_node(workers[0], allow_graceful=False)  # the node and its worker die mid-trial
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert "4 completed" in stdout
    completed = rows(db, "SELECT config_key, seed, count(*) FROM runs WHERE status = 'completed' GROUP BY config_key, seed")
    assert len(completed) == 4 and all(count == 1 for *_, count in completed)
    lost = rows(db, "SELECT status, note, claim FROM runs WHERE status != 'completed'")
    assert lost == [("failed", LOST_ATTEMPT_NOTE, None)], (rows(db, "SELECT id, status, pid, epochs_completed, note FROM runs"), stdout, stderr)
    assert rows(db, "SELECT DISTINCT executor FROM runs") == [("ray",)]
    report = run_bnrun("report", "--format", "json", "--db", str(db))
    assert '"n": 2' in report.stdout and '"n": 3' not in report.stdout


def test_sqlite_refused_for_a_cluster_on_other_hosts(monkeypatch, tmp_path):
    from bnrun.errors import UsageError
    from bnrun.run import ray_executor
    from bnrun.store import Store

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray_executor, "cluster_hosts", lambda: {ray.util.get_node_ip_address(), "10.1.2.3"})
    store = Store(str(tmp_path / "local.db"))
    with pytest.raises(UsageError, match="pass a server URL"):
        ray_executor.require_shared_store(store)
    store.close()
