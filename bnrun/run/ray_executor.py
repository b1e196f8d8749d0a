"""The Ray executor (`bnrun train --executor ray`, the `ray` extra): the driver migrates the
store, plans the grid, and sends each trial to Ray as a task of plain values (the store URL, the
trial spec, the data directory, a token); a worker opens the store itself and runs
`bnrun.run.trial.execute_trial`. Ray retries a task whose worker or node died; the token lets the new
attempt end the lost one `failed` before it claims the trial again, so each trial still ends
exactly once. Ctrl-C cancels the tasks and ends their rows `interrupted`.

`--device cuda` reserves one GPU per trial unless `--gpus-per-trial` says otherwise, and a task
that reserves a GPU runs in a worker process of its own (`max_calls=1`): a reused worker would keep
the CUDA context of the GPU its first task was given.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from bnrun.config import SweepConfig
from bnrun.errors import UsageError, first_line
from bnrun.run.progress import Reporter
from bnrun.run.sweep import SweepResult, plan, sigterm_as_interrupt
from bnrun.run.trial import TrialOutcome, TrialSpec, execute_trial
from bnrun.store import RunStatus, Store

MAX_RETRIES = 3  # attempts after a worker or node died
INTERRUPTED_NOTE = "interrupted: the Ray driver was stopped (SIGINT/SIGTERM) and cancelled the task"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray instance
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 for a trial on --device cuda, else 0

    def gpus_for(self, device: str) -> float:
        """GPUs each trial on `device` reserves."""
        if self.gpus_per_trial is not None:
            return self.gpus_per_trial
        return 1.0 if device.startswith("cuda") else 0.0


def connect(options: RayOptions) -> None:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'bnrun[ray]'") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as error:
        raise UsageError(
            f"--ray-address {options.address}: cannot connect to a Ray cluster ({first_line(error)})"
        ) from None


def cluster_hosts() -> set[str]:
    """The addresses of the cluster's live nodes."""
    import ray

    return {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


def require_shared_store(store: Store) -> None:
    """A SQLite file is only shared by processes of one machine: refuse it for a cluster that spans several."""
    if store.path is None:
        return
    import ray

    hosts = cluster_hosts()
    elsewhere = hosts - {"127.0.0.1", "localhost", ray.util.get_node_ip_address()}
    if elsewhere:
        raise UsageError(
            f"store {store.path} is a SQLite file, but the Ray cluster has nodes on other hosts "
            f"({', '.join(sorted(elsewhere))}); pass a server URL: --db postgresql://user:password@host/dbname"
        )


def require_gpus(gpus: float) -> None:
    """Refuse a GPU reservation the cluster cannot grant (its tasks would wait forever)."""
    import ray

    total = ray.cluster_resources().get("GPU", 0)
    if gpus > total:
        raise UsageError(f"each trial reserves {gpus:g} GPU (--gpus-per-trial), but the Ray cluster has {total:g}; "
                         "start the workers on GPU machines or pass --device cpu")


def remote_task(function, cpus: float, gpus: float):
    """`function` as a Ray remote function, its resources declared on `ray.remote` itself (a task
    that reserves a GPU gets max_calls=1: a fresh worker process per task)."""
    import ray

    once = {"max_calls": 1} if gpus > 0 else {}
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False, **once)(function)


def run_trial_task(
    store_url: str, spec: dict, data_dir: str | None, token: str, threads: int
) -> tuple[int | None, str]:
    """The Ray task: plain values in, plain values out."""
    outcome = execute_trial(store_url, TrialSpec(**spec), data_dir, token, executor="ray", threads=threads)
    return outcome.run_id, outcome.status


def run_sweep_on_ray(sweep: SweepConfig, store: Store, reporter: Reporter, options: RayOptions) -> SweepResult:
    """Dispatch every trial of the grid to Ray; the store decides, per trial, whether it runs."""
    import ray

    connect(options)
    require_shared_store(store)
    gpus = options.gpus_for(sweep.base.device)
    require_gpus(gpus)
    task = remote_task(run_trial_task, options.cpus_per_trial, gpus)
    threads = max(1, int(options.cpus_per_trial))
    data_dir = str(Path(sweep.data_dir).expanduser()) if sweep.data_dir else None
    specs = plan(sweep)
    result = SweepResult()
    with sigterm_as_interrupt():
        per_trial = f"{options.cpus_per_trial:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
        reporter.sweep_started(
            len(specs), sweep.describe() + f" on Ray ({per_trial} per trial)", tuple(sweep.varied())
        )
        pending = {}
        for spec in specs:
            token = uuid.uuid4().hex
            pending[task.remote(store.url, spec.__dict__, data_dir, token, threads)] = (spec, token)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec, token = pending.pop(done[0])
                run_id, status = outcome_of(done[0], token, store)
                result.add(TrialOutcome(run_id, status))
                reporter.remote_trial_finished(run_id, spec.train_config(), spec.seed, status)
        except KeyboardInterrupt:
            cancel(pending, store)
            raise
        finally:
            reporter.sweep_finished()
    return result


def outcome_of(ref, token: str, store: Store) -> tuple[int | None, str]:
    """The task's (run id, status); a task Ray gave up on (every retry lost, or an error raised
    outside the trial's own handling) ends its row `failed` with Ray's reason."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        reason = first_line(error, 300)
        ended = store.end_attempts([token], RunStatus.FAILED, f"Ray task failed: {reason}")
        return (ended[0] if ended else None), RunStatus.FAILED


def cancel(pending: dict, store: Store) -> None:
    """Cancel the tasks still out, and end their rows `interrupted`."""
    import ray

    for ref in pending:
        ray.cancel(ref, force=True)
    store.end_attempts([token for _, token in pending.values()], RunStatus.INTERRUPTED, INTERRUPTED_NOTE)
