"""Learning curves: validation accuracy and training loss per epoch, a mean line with a ±std
band per configuration, one row of panels per architecture. Written as a PNG (Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bnrun.report import Group  # noqa: E402
from bnrun.store import EpochRecord  # noqa: E402

PANELS = (("val_acc", "validation accuracy (%)", 100.0), ("train_loss", "training loss", 1.0))


def curve(group: Group, epochs: dict[int, list[EpochRecord]], field: str, scale: float):
    """Mean and std over the group's trials, epoch by epoch (up to the shortest trial)."""
    series = [[getattr(e, field) * scale for e in epochs[run.id]] for run in group.runs]
    length = min(len(s) for s in series)
    values = torch.tensor([s[:length] for s in series], dtype=torch.float64)
    std = values.std(0, unbiased=True) if len(series) > 1 else torch.zeros(length, dtype=torch.float64)
    return list(range(1, length + 1)), values.mean(0), std


def plot_learning_curves(groups: list[Group], epochs: dict[int, list[EpochRecord]], output: Path, dpi: int = 120) -> Path:
    archs = list(dict.fromkeys(g.value("arch") for g in groups))
    figure, axes = plt.subplots(len(archs), len(PANELS), figsize=(11, 3.8 * len(archs)), squeeze=False)
    for row, arch in enumerate(archs):
        for column, (field, label, scale) in enumerate(PANELS):
            axis = axes[row][column]
            for group in (g for g in groups if g.value("arch") == arch):
                x, mean, std = curve(group, epochs, field, scale)
                if not x:
                    continue
                line, = axis.plot(x, mean, marker="o", markersize=3, label=f"{group.label()} (n={len(group.runs)})")
                axis.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            axis.set_title(f"{arch.upper()}: {label}")
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            if field == "train_loss":
                axis.set_yscale("log")
        axes[row][0].legend(fontsize=8, loc="lower right")
    figure.suptitle("Fashion-MNIST learning curves: mean ± std over seeds")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=dpi)
    plt.close(figure)
    return output
