"""The CUDA path, checked without a GPU: data gathered and flipped on the splits' device, a
training step that never waits for the device, the numerics settings and versions a CUDA run
records, and Ray's resource rules for `--device cuda` (on Ray's fake GPU resources). The compiled
batch-norm path on CPU tensors is in tests/test_compiled_path.py; `benchmarks/gpu_check.sh` is
the check for a machine with a GPU."""

from __future__ import annotations

import os
import sqlite3

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bnrun.config import TrainConfig
from bnrun.errors import UsageError
from bnrun.run import provenance as provenance_module
from bnrun.training import hardware
from bnrun.training.data import FashionMNISTData, Split, shuffled_batches
from bnrun.training.evaluation import evaluate_split
from bnrun.training.loop import Diverged, epoch_scores, make_optimizer, make_scheduler, train_epoch
from bnrun.training.models import model_of


def random_split(n: int, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator))


# -- data on the device ---------------------------------------------------------------------------


def test_batches_are_gathered_and_flipped_on_the_splits_device():
    split = random_split(300)
    on_cpu = list(shuffled_batches(split, 128, torch.Generator().manual_seed(3), flip=True))
    elsewhere = list(shuffled_batches(split.to("meta"), 128, torch.Generator().manual_seed(3), flip=True))
    assert [x.shape for x, _ in on_cpu] == [x.shape for x, _ in elsewhere] == [(128, 1, 28, 28)] * 2 + [(44, 1, 28, 28)]
    assert all(x.device.type == "meta" and y.device.type == "meta" for x, y in elsewhere)


def test_the_cpu_dataset_is_not_copied():
    data = FashionMNISTData(random_split(10), random_split(4), random_split(4), 0.0, 1.0)
    assert data.to("cpu") is data and data.train.to("cpu") is data.train
    moved = data.to("meta")
    assert moved.val.images.device.type == "meta" and moved.mean == 0.0


# -- no host synchronization inside a training step ------------------------------------------------

# What makes the host wait for an accelerator: reading a value (item, int, float, bool), a tensor
# built from host data (torch.tensor: a blocking copy), an output whose size depends on the data,
# and any copy between devices.
READS = {"aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.lift_fresh_copy.default",
         "aten.nonzero.default", "aten.masked_select.default", "aten.is_nonzero.default", "aten.equal.default"}


class HostSyncs(TorchDispatchMode):
    """Counts the operations that would synchronize with a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        out = func(*args, **kwargs)
        moved = isinstance(out, torch.Tensor) and any(out.device != d for d in devices)
        if str(func) in READS or moved:
            self.calls.append(str(func))
        return out


class StepCounter:
    """A progress display that notes how many host syncs had happened at the end of each step."""

    def __init__(self, syncs: HostSyncs) -> None:
        self.syncs, self.after_step = syncs, []

    def epoch_started(self, epoch, epochs, batches) -> None: ...
    def epoch_finished(self, record) -> None: ...

    def batch(self) -> None:
        self.after_step.append(len(self.syncs.calls))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_a_training_step_never_synchronizes(arch):
    config = TrainConfig(arch=arch, epochs=1, batch_size=64, fused=False)
    torch.manual_seed(0)
    model = model_of(config)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, 5)
    split = random_split(300)
    with HostSyncs() as syncs:
        counter = StepCounter(syncs)
        loss, accuracy, _ = train_epoch(model, optimizer, scheduler, split, config, torch.Generator().manual_seed(0),
                                        counter)
    assert counter.after_step == [0] * 5, syncs.calls  # five steps, not one read among them
    assert len(syncs.calls) <= 1, syncs.calls  # the epoch's accuracy (its losses are read with tolist)
    assert loss > 0 and 0 <= accuracy <= 1


def test_evaluation_reads_the_device_once():
    config = TrainConfig(arch="mlp", fused=False)
    model = model_of(config)
    with HostSyncs() as syncs:
        evaluate_split(model, random_split(700), "cpu")  # 6 batches of 128
    assert syncs.calls == ["aten._local_scalar_dense.default"] * 2, syncs.calls  # the loss sum, the count


def test_epoch_scores_are_summed_as_python_floats_and_find_the_first_nonfinite_loss():
    losses = [torch.tensor(v) for v in (0.1, 0.7, 1 / 3)]
    outputs = [torch.eye(10)[:2], torch.eye(10)[:3], torch.eye(10)[:1]]
    targets = [torch.tensor([0, 1]), torch.tensor([0, 0, 2]), torch.tensor([5])]
    loss, accuracy = epoch_scores(losses, [2, 3, 1], outputs, targets)
    expected = 0.0
    for value, size in zip(losses, [2, 3, 1]):
        expected += value.item() * size
    assert loss == expected / 6 and accuracy == 4 / 6
    with pytest.raises(Diverged, match=r"became nan at sample 5 \(found at the end of the epoch\)"):
        epoch_scores([torch.tensor(0.1), torch.tensor(float("nan")), torch.tensor(0.2)], [2, 3, 1], outputs, targets)


# -- numerics settings and versions on CUDA -------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """torch as on a machine with an H100, CUDA 12.4, cuDNN 9.1.0 and driver 550.54.15."""
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    monkeypatch.setattr(hardware, "NVIDIA_PROC_VERSION", proc)
    hardware.gpu_driver.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    yield
    hardware.gpu_driver.cache_clear()


def test_a_cuda_run_records_versions_and_numerics_settings(fake_cuda):
    fields = provenance_module.provenance("cuda")
    assert fields["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert (fields["cuda_version"], fields["cudnn_version"], fields["gpu_driver"]) == ("12.4", "9.1.0", "550.54.15")
    assert (fields["tf32"], fields["cudnn_deterministic"]) == (False, True)


def test_a_cpu_run_records_no_cuda_fields(fake_cuda):
    fields = provenance_module.provenance("cpu")
    assert [fields[name] for name in ("cuda_version", "cudnn_version", "gpu_driver", "tf32", "cudnn_deterministic")] \
        == [None] * 5


def test_cudnn_8_versions_and_the_driver_from_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 8902)
    assert hardware.cudnn_version() == "8.9.2"
    monkeypatch.setattr(hardware, "NVIDIA_PROC_VERSION", tmp_path / "absent")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 535.104.05\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    hardware.gpu_driver.cache_clear()
    try:
        assert hardware.gpu_driver() == "535.104.05"
    finally:
        hardware.gpu_driver.cache_clear()


def test_cuda_settings_are_applied_on_cuda_only():
    # torch's own test utilities (imported by tests/test_module_info.py) forbid setting cuDNN flags
    # outside a `flags()` block; bnrun sets them once per trial, as a process that trains does
    allow_mutation = getattr(torch.backends, "__allow_nonbracketed_mutation")
    with allow_mutation():
        check_cuda_settings()


def check_cuda_settings():
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic = False
        hardware.apply_cuda_settings("cpu")
        assert torch.backends.cudnn.deterministic is False
        hardware.apply_cuda_settings("cuda")
        assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[:2]
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def test_the_cuda_fields_are_stored_and_compared_by_reproduce(fake_cuda, tmp_path):
    from bnrun.run.trial import run_fields
    from bnrun.store import Store

    config = TrainConfig(arch="mlp", device="cuda")
    store = Store(str(tmp_path / "cuda.db"))
    claim = store.claim_run(run_fields(config, 0), config.key(), "{}")
    store.close()
    with sqlite3.connect(tmp_path / "cuda.db") as connection:
        row = connection.execute("SELECT cuda_version, cudnn_version, gpu_driver, tf32, cudnn_deterministic "
                                 "FROM runs WHERE id = ?", (claim.run_id,)).fetchone()
    assert row == ("12.4", "9.1.0", "550.54.15", 0, 1)
    a = provenance_module.provenance("cuda")
    assert provenance_module.differences(a, {**a, "tf32": True}) == ["tf32: False → True"]


# -- Ray: --device cuda reserves a GPU per trial, each in a worker of its own ----------------------


def test_device_cuda_reserves_one_gpu_per_trial_unless_told_otherwise():
    from bnrun.cli.options import executor_options
    from bnrun.run.ray_executor import RayOptions

    assert RayOptions().gpus_for("cuda") == 1.0 and RayOptions().gpus_for("cpu") == 0.0
    assert RayOptions(gpus_per_trial=0.5).gpus_for("cuda") == 0.5
    assert executor_options("ray", None, 1.0, None, "cuda") == RayOptions(None, 1.0, None)
    with pytest.raises(UsageError, match="never uses a GPU"):
        executor_options("ray", None, 1.0, 1.0, "cpu")
    with pytest.raises(UsageError, match="need --executor ray"):
        executor_options("local", None, 1.0, 1.0, "cuda")


def test_ray_trains_on_cuda_only_where_the_driver_need_not_have_a_gpu():
    from bnrun.cli.options import GridOptions, build_sweep

    sweep = build_sweep(GridOptions(arch="mlp"), device="cuda", executor="ray")
    assert sweep.base.device == "cuda"
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            build_sweep(GridOptions(arch="mlp"), device="cuda")


@pytest.mark.ray
@pytest.mark.slow
def test_gpu_tasks_get_a_gpu_and_a_fresh_worker_each():
    ray = pytest.importorskip("ray")
    from bnrun.run.ray_executor import remote_task, require_gpus

    def where_am_i() -> tuple[int, list, str | None]:  # local: pickled by value (workers cannot import tests)
        return os.getpid(), ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        gpu_task, cpu_task = remote_task(where_am_i, 1, 1.0), remote_task(where_am_i, 1, 0.0)
        assert gpu_task._default_options["max_calls"] == 1 and gpu_task._default_options["num_gpus"] == 1.0
        assert "max_calls" not in cpu_task._default_options or cpu_task._default_options["max_calls"] in (0, None)
        first, second = ray.get(gpu_task.remote()), ray.get(gpu_task.remote())
        assert first[1] == second[1] == [0] and first[2] == "0"
        assert first[0] != second[0]  # max_calls=1: a worker process per GPU task
        require_gpus(1.0)
        with pytest.raises(UsageError, match="the Ray cluster has 1"):
            require_gpus(2.0)
    finally:
        ray.shutdown()



@pytest.mark.slow  # runs benchmarks/gpu_check.sh
@pytest.mark.skipif(torch.cuda.is_available(), reason="the check runs for real on a GPU")
def test_gpu_check_fails_loudly_without_a_gpu():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "no CUDA device" in result.stderr
