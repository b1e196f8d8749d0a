"""The one check of bnrun's CUDA path, for a person with an NVIDIA GPU (`bash benchmarks/gpu_check.sh`).

It checks, on the GPU, what the test suite can only check on CPU tensors, and prints one table:
- parity: the custom batch norm on its fast path (torch.compile on CUDA) against torch.nn's, per
  shape of the default models (outputs, running statistics, input and parameter gradients);
- the path that ran in every BN layer (compiled, not eager), and the compiled graphs a trial
  with diagnostics and a batch-statistics evaluation made (no recompile-limit hit, no fallback);
- host synchronizations in training steps, counted by `torch.cuda.set_sync_debug_mode`;
- speed: one training step of the default CNN with the custom BN (compiled and eager) and torch.nn's.
Without a GPU it fails at once: one line on stderr, exit status 2. Any failed check: exit 1.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F

from bnrun.config import TrainConfig
from bnrun.nn import BatchNorm1d, BatchNorm2d
from bnrun.training.data import FashionMNISTData, Split
from bnrun.training.evaluation import evaluate_with_batch_statistics
from bnrun.training.hardware import apply_cuda_settings, cuda_settings, cuda_versions, gpu_name
from bnrun.training.loop import Callbacks, fit, make_optimizer, make_scheduler, train_epoch
from bnrun.training.models import model_of

# (shape, layout) of every BN input of the default models: the CNN's two convolution blocks
# (channels_last, the default) and its hidden layer, the MLP's hidden layers; the last partial batch
SHAPES = [((128, 32, 28, 28), True), ((128, 64, 14, 14), True), ((88, 32, 28, 28), True),
          ((128, 32, 28, 28), False), ((128, 128), False), ((88, 256), False), ((128, 100), False)]
STEPS = 50


def refuse_without_gpu() -> None:
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        print(f"gpu_check: no CUDA device visible (torch {torch.__version__}, {build}); run it on a machine with an "
              "NVIDIA GPU", file=sys.stderr)
        sys.exit(2)


def parity(shape: tuple[int, ...], channels_last: bool, relu: bool) -> tuple[bool, str]:
    """The custom fused BN against torch.nn's, on CUDA, forward and backward, after 3 steps."""
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda") * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    custom = (BatchNorm2d if len(shape) == 4 else BatchNorm1d)(shape[1], fused=True, relu=relu).cuda()
    reference = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(shape[1]).cuda()
    with torch.no_grad():
        for layer in (custom, reference):
            layer.weight.uniform_(0.5, 1.5, generator=torch.Generator("cuda").manual_seed(1))
            layer.bias.uniform_(-0.5, 0.5, generator=torch.Generator("cuda").manual_seed(2))
    errors = []
    for _ in range(3):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = custom(xa)
        yb = reference(xb)
        yb = torch.relu(yb) if relu else yb
        grad = torch.randn_like(ya)
        ya.backward(grad)
        yb.backward(grad)
        pairs = [(ya, yb), (xa.grad, xb.grad), (custom.weight.grad, reference.weight.grad),
                 (custom.bias.grad, reference.bias.grad), (custom.running_mean, reference.running_mean),
                 (custom.running_var, reference.running_var)]
        errors += [max_error(a, b) for a, b in pairs]
        for layer in (custom, reference):
            layer.zero_grad()
    worst = max(errors)
    return worst < 1e-3 and custom.path == "compiled", f"largest difference {worst:.1e} (relative to the largest value), path {custom.path}"


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def synthetic_data(n: int = 2000) -> FashionMNISTData:
    generator = torch.Generator().manual_seed(0)

    def split(size: int) -> Split:
        return Split(torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,),
                                                                                      generator=generator))

    return FashionMNISTData(split(n), split(500), split(500), 0.0, 1.0)


class Quiet:
    def epoch_started(self, epoch, epochs, batches) -> None: ...
    def batch(self) -> None: ...
    def epoch_finished(self, record) -> None: ...


def trial_graphs(config: TrainConfig) -> tuple[bool, str]:
    """A trial with diagnostics, then batch-statistics evaluations: every BN compiled, graphs counted."""
    from torch._dynamo.utils import counters

    paths = []
    before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = synthetic_data()
        callbacks = Callbacks(epoch_ended=lambda record, path: paths.append(path),
                              completed=lambda metrics, checkpoint: None, progress=Quiet(),
                              diagnostics=lambda records: None)
        fit(replace(config, epochs=2), 0, data, callbacks)
        model = model_of(config).cuda()
        for size in (2, 16, 128, 500):
            evaluate_with_batch_statistics(model, data.to("cuda").test, size, "cuda")
    graphs = counters["stats"]["unique_graphs"] - before
    fallbacks = [str(w.message) for w in caught if "eager path" in str(w.message)]
    ok = set(paths) == {"compiled"} and not fallbacks
    return ok, f"paths {sorted(set(paths))}, {graphs} graphs" + (f"; {fallbacks[0]}" if fallbacks else "")


def host_syncs(config: TrainConfig) -> tuple[bool, str]:
    """Synchronizations in one epoch of training steps (the epoch's end reads the device once)."""
    data = synthetic_data().to("cuda")
    torch.manual_seed(0)
    model = model_of(config).cuda()
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, 100)
    generator = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, scheduler, data.train, config, generator, Quiet())  # compiles, outside the count
    steps = len(data.train) // config.batch_size + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_epoch(model, optimizer, scheduler, data.train, config, generator, Quiet())
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # expected per epoch, none per step: the batch order and the flips copied to the device, and
    # the one read of the epoch's losses and of its accuracy
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs) <= 4, f"{len(syncs)} in an epoch of {steps} steps (at most 4 expected)"


def step_time(config: TrainConfig) -> float:
    """Milliseconds per training step of `config` at batch 128, median of STEPS after warm-up."""
    torch.manual_seed(0)
    model = model_of(config).cuda()
    optimizer = make_optimizer(config, model)
    x = torch.randn(128, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (128,), device="cuda")
    times = []
    for step in range(STEPS + 10):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        end.record()
        end.synchronize()
        if step >= 10:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> int:
    refuse_without_gpu()
    apply_cuda_settings("cuda")
    config = TrainConfig(arch="cnn", fused=True, channels_last=True, device="cuda")
    rows: list[tuple[str, bool | None, str]] = []
    facts = {**cuda_versions("cuda"), **cuda_settings("cuda")}
    rows.append(("GPU", None, f"{gpu_name('cuda')}; torch {torch.__version__}; "
                 + ", ".join(f"{k} {v}" for k, v in facts.items())))
    for shape, channels_last in SHAPES:
        for relu in (False, True):
            ok, detail = parity(shape, channels_last, relu)
            layout = "NHWC" if channels_last else "NCHW"
            rows.append((f"parity {shape} {layout}{' +ReLU' if relu else ''}", ok, detail))
    for arch in ("cnn", "mlp"):
        ok, detail = trial_graphs(replace(config, arch=arch, channels_last=arch == "cnn"))
        rows.append((f"path and graphs, {arch} trial + diagnostics + eval", ok, detail))
    ok, detail = host_syncs(config)
    rows.append(("host syncs in training steps", ok, detail))
    for label, variant in (("custom, compiled", config), ("custom, eager", replace(config, fused=False)),
                           ("torch.nn", replace(config, bn_impl="torch", fused=False))):
        rows.append((f"step time, {label}", None, f"{step_time(variant):.2f} ms (CNN, batch 128)"))
    print_table(rows)
    failed = [name for name, ok, _ in rows if ok is False]
    if failed:
        print(f"gpu_check: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_table(rows: list[tuple[str, bool | None, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'check':<{width}}  result  detail")
    for name, ok, detail in rows:
        result = "-" if ok is None else ("ok" if ok else "FAIL")
        print(f"{name:<{width}}  {result:<6}  {detail}")


if __name__ == "__main__":
    sys.exit(main())
