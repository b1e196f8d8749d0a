"""The web view at scale: a store of N synthetic runs (10 epochs each, 5 seeds per configuration, a study of 24
configurations per 120 runs; written through the store's own bulk API, `Store.add_ended_runs`), then the time of the first page of `/runs` (target ≤ 300 ms), of `/`
with a filter (target ≤ 2 s), of `/` unfiltered (the default view), and the server's resident memory
after serving them, per store size; first the CPU it ran on (/proc/cpuinfo's model name).

    python benchmarks/web_scale.py --runs 2000             # seconds: a check that it works
    python benchmarks/web_scale.py --runs 2000,20000,100000  # the scale the targets are for (minutes)

Requests go through Starlette's TestClient (the real app, no network); each time is the median of --repeats
requests after one untimed request. Each store size is served by a fresh process, as `bnrun ui` serves it, so
its memory is that size's own: VmRSS after the app is built and before any request ("idle"), and the peak
(VmHWM) after serving every page above ("peak")."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from starlette.testclient import TestClient

from bnrun.store import EpochRecord, Store
from bnrun.web.app import create_app

EPOCHS = 10
BATCH = 5000
LRS = (0.01, 0.03, 0.1, 0.3)
SEEDS = 5
FILTERED_REPORT = "/?arch=mlp&where=lr=0.1,0.3"
DEFAULT_REPORT = "/"


def run_fields(index: int, started: datetime) -> dict:
    """One synthetic completed trial (every 97th still running): plausible values. As in a real store, each
    configuration has SEEDS seeds and each study a grid of 24 configurations (arch × bn × lr); the first study is
    the default recipe's, every later one a study of its own (`--study sweep-K`)."""
    config_index, seed = divmod(index, SEEDS)
    arch, bn = ("mlp", "cnn")[config_index % 2], ("pre", "post", "none")[config_index // 2 % 3]
    lr, study = LRS[config_index // 6 % 4], config_index // 24
    study = f"sweep-{study}" if study else None
    config = {"arch": arch, "bn": bn, "lr": lr, "seed": seed, "study": study}
    running = index % 97 == 0
    accuracy = 0.85 + 0.0001 * (index % 300)
    return dict(
        status="running" if running else "completed", arch=arch, bn=bn, bn_impl="custom", fused=False,
        seed=seed, study=study, epochs=EPOCHS, batch_size=128, lr=lr, momentum=0.9, weight_decay=0.0, optimizer="sgd",
        schedule="constant", augment=False, train_subset=None, device="cpu", config_key=f"bench-{config_index}",
        config_json=json.dumps(config), started_at=started + timedelta(seconds=index), heartbeat_at=started,
        ended_at=None if running else started + timedelta(seconds=index + 60), duration_s=None if running else 60.0,
        epochs_completed=EPOCHS // 2 if running else EPOCHS, train_loss=0.3, train_acc=accuracy, val_acc=accuracy,
        best_val_acc=accuracy, test_acc_running=accuracy, test_acc_population=accuracy, test_loss_running=0.4,
        test_loss_population=0.4, bnrun_version="bench", torch_version="bench", python_version="bench",
        host="bench", pid=1, grid_seeds=None, claim=None,
    )


def epochs_of(index: int) -> list[EpochRecord]:
    return [EpochRecord(e, 1.0 / e, 0.8 + e / 100, 1.1 / e, 0.8 + e / 110, 0.1, 6.0, 5.0) for e in range(1, EPOCHS + 1)]


def build_store(path: Path, count: int) -> float:
    """The store of `count` runs; the seconds it took."""
    start, began = time.perf_counter(), datetime(2025, 1, 1)
    store = Store(str(path))
    try:
        for first in range(0, count, BATCH):
            store.add_ended_runs([(run_fields(i, began), epochs_of(i)) for i in range(first, min(count, first + BATCH))])
    finally:
        store.close()
    return time.perf_counter() - start


def timed(client: TestClient, url: str, repeats: int) -> float:
    """Median seconds of `repeats` GETs of `url` (after one untimed)."""
    assert client.get(url).status_code == 200, url
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    """/proc/cpuinfo's model name, with the number of logical CPUs ('unknown' off Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} ({len(names)} logical CPUs)" if names else "unknown"


def memory_mib(field: str) -> float:
    """This process's VmRSS or VmHWM (peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve(path: Path, repeats: int) -> dict:
    """The timings and memory of one server process over the store at `path` (run in a child process)."""
    client = TestClient(create_app(str(path)), base_url="http://localhost")
    idle = memory_mib("VmRSS")
    return {"runs_page_ms": 1000 * timed(client, "/runs", repeats),
            "report_filtered_s": timed(client, FILTERED_REPORT, repeats),
            "report_default_s": timed(client, DEFAULT_REPORT, repeats), "idle_mib": idle,
            "peak_mib": memory_mib("VmHWM")}


def measure(count: int, repeats: int, directory: Path) -> dict:
    path = directory / f"web-{count}.db"
    built = build_store(path, count)
    served = subprocess.run([sys.executable, __file__, "--serve", str(path), "--repeats", str(repeats)],
                            check=True, capture_output=True, text=True)
    return {"runs": count, "build_s": built, **json.loads(served.stdout.splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="2000", help="comma list of store sizes (default 2000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child process: one store served
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve, args.repeats)))
        return
    print(f"CPU: {cpu_model()}")
    print(f"{'runs':>8} {'build s':>8} {'/runs ms':>9} {'/ filtered s':>13} {'/ default s':>12} {'idle MiB':>9} "
          f"{'peak MiB':>9}  (targets: ≤ 300 ms, ≤ 2 s)")
    with tempfile.TemporaryDirectory(prefix="bnrun-web-scale-") as directory:
        for count in (int(value) for value in args.runs.split(",")):
            row = measure(count, args.repeats, Path(directory))
            print(f"{row['runs']:>8} {row['build_s']:>8.1f} {row['runs_page_ms']:>9.1f} {row['report_filtered_s']:>13.3f} "
                  f"{row['report_default_s']:>12.3f} {row['idle_mib']:>9.0f} {row['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
