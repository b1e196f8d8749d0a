"""Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747) as in-memory tensors.

The official files are read through `torchvision.datasets.FashionMNIST`. Lookup order: the data
directory (`--data-dir` or `BNRUN_DATA_DIR`, default `~/.cache/bnrun/data`); the system copy that
Debian/Ubuntu's `dataset-fashion-mnist` installs (its verified archives are staged into the data
directory and extracted there, without network); else torchvision downloads into the data dir.

Images are normalized once with the training split's mean/std; training batches are slices of a
seeded permutation, so no per-item transform runs in the training loop. On an accelerator the
splits are copied to the device once per trial (`FashionMNISTData.to`) and batches are gathered
and flipped there; the permutation and the flip draws still come from the trial's CPU generator,
so the batch order is the same on every device.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST

from bnrun.config import VALIDATION_SIZE
from bnrun.errors import DataError, first_line

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = Path("~/.cache/bnrun/data").expanduser()
SPLIT_SEED = 20_170_825  # fixed: every trial and seed sees the same validation hold-out
REMEDIES = (
    "install the system copy (apt-get install dataset-fashion-mnist), "
    "pass --data-dir DIR holding FashionMNIST/raw, or allow torchvision to download it"
)


CLASSES = tuple(FashionMNIST.classes)  # the label order: CLASSES[label] names it


def standardized(images: Tensor, mean: float, std: float) -> Tensor:
    """Images (uint8 0-255, or float in [0, 1]; (N, 28, 28) or (N, 1, 28, 28)) as every model saw them in
    training: scaled to [0, 1], less the training split's mean, over its std; (N, 1, 28, 28) float32."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    return (x if x.dim() == 4 else x.unsqueeze(1)).sub(mean).div_(std).contiguous()


class Standardize(torch.nn.Module):
    """`standardized` as a first module, so that an exported model takes raw images."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64))

    def forward(self, images: Tensor) -> Tensor:  # (N, 28, 28) or (N, 1, 28, 28) -> (N, 1, 28, 28)
        return standardized(images, self.mean.item(), self.std.item())


@dataclass(frozen=True)
class Split:
    images: Tensor  # (N, 1, 28, 28) float32, normalized
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def with_mirrors(self) -> Tensor:
        """(2N, 1, 28, 28): the images, then each mirrored left-right; built once, so a random
        flip costs no per-batch pass (garments are left-right symmetric classes)."""
        return torch.cat([self.images, self.images.flip(3)])

    def training_distribution(self, flip: bool) -> Tensor:
        """The images training draws from: with random flips (p = 1/2) every image and its mirror
        equally often, so the pair set is that distribution exactly."""
        return self.with_mirrors if flip else self.images

    def to(self, device: str | torch.device) -> Split:
        """The split on `device` (itself where it is already there)."""
        if self.images.device == torch.device(device):
            return self
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class FashionMNISTData:
    train: Split
    val: Split
    test: Split
    mean: float
    std: float

    def to(self, device: str | torch.device) -> FashionMNISTData:
        """The three splits on `device`, copied once (itself on the CPU)."""
        if torch.device(device).type == "cpu":
            return self
        return FashionMNISTData(self.train.to(device), self.val.to(device), self.test.to(device), self.mean, self.std)


def data_dir_from_env(explicit: Path | None = None) -> Path:
    """The data directory: `explicit`, else BNRUN_DATA_DIR, else the default. The system copy's directory is
    only read: named as the data directory, its archives are staged in BNRUN_DATA_DIR or the default."""
    if explicit is not None and Path(explicit).expanduser().resolve() != SYSTEM_DIR.resolve():
        return Path(explicit).expanduser()
    return Path(os.environ.get("BNRUN_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


# SHA-256 of the official files, uncompressed (the system package re-compresses them, so the
# archives' md5s in torchvision do not apply to it).
RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def _read_system_file(name: str) -> bytes:
    try:
        data = gzip.decompress((SYSTEM_DIR / f"{name}.gz").read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"damaged Fashion-MNIST file {SYSTEM_DIR / name}.gz ({first_line(error)}): reinstall with apt-get "
            "install --reinstall dataset-fashion-mnist"
        ) from None
    if _sha256(data) != RAW_SHA256[name]:
        raise DataError(
            f"damaged Fashion-MNIST file {SYSTEM_DIR / name}.gz (checksum mismatch): reinstall with apt-get "
            "install --reinstall dataset-fashion-mnist"
        )
    return data


def _stage_system_copy(root: Path) -> bool:
    """Verify the system archives and extract them into root/FashionMNIST/raw; False if absent."""
    if not all((SYSTEM_DIR / f"{name}.gz").is_file() for name in RAW_SHA256):
        return False
    raw = _raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_SHA256:
        data = _read_system_file(name)
        partial = raw / f"{name}.partial"
        partial.write_bytes(data)
        partial.replace(raw / name)  # atomic: a crash never leaves a half-written file
    return True


def verify_extracted(root: Path) -> None:
    """Raise DataError if an extracted file differs from the official one."""
    for name, digest in RAW_SHA256.items():
        if _sha256((_raw_dir(root) / name).read_bytes()) != digest:
            raise DataError(
                f"damaged Fashion-MNIST file {_raw_dir(root) / name} (checksum mismatch): delete it and run "
                f"again; {REMEDIES}"
            )


def _extracted(root: Path) -> bool:
    return all((_raw_dir(root) / name).is_file() for name in RAW_SHA256)


def _open(root: Path, train: bool) -> FashionMNIST:
    return FashionMNIST(str(root), train=train, download=True)


@functools.lru_cache(maxsize=8)
def check_available(data_dir: Path | None = None) -> Path:
    """Make sure the raw files are present and readable; returns the torchvision root.

    Raises DataError with one line naming the remedies when they are not.
    """
    root = data_dir_from_env(data_dir)
    if data_dir is not None and not root.is_dir():
        raise DataError(f"data directory {root} does not exist; {REMEDIES}")
    try:
        if not _extracted(root):
            _stage_system_copy(root)
        _open(root, True), _open(root, False)
        verify_extracted(root)
    except DataError:
        raise
    except Exception as error:  # torchvision raises many kinds: network, md5, parse errors
        raise DataError(f"Fashion-MNIST is not available in {root} ({first_line(error)}); {REMEDIES}") from None
    return root


@functools.lru_cache(maxsize=4)
def load(data_dir: Path | None = None, train_subset: int | None = None) -> FashionMNISTData:
    """The three splits as normalized tensors (train 55,000 / val 5,000 / test 10,000)."""
    root = check_available(data_dir)
    try:
        train_full, test = _open(root, True), _open(root, False)
        images, labels = train_full.data, train_full.targets
    except Exception as error:
        raise DataError(f"cannot read Fashion-MNIST in {root} ({first_line(error)}); {REMEDIES}") from None
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:VALIDATION_SIZE], order[VALIDATION_SIZE:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    raw_train = images[train_idx].float().div_(255)
    mean, std = raw_train.mean().item(), raw_train.std().item()

    def split(x: Tensor, y: Tensor) -> Split:
        return Split(standardized(x, mean, std), y.long().contiguous())

    return FashionMNISTData(
        train=split(images[train_idx], labels[train_idx]),
        val=split(images[val_idx], labels[val_idx]),
        test=split(test.data, test.targets),
        mean=mean,
        std=std,
    )


def shuffled_batches(
    split: Split, batch_size: int, generator: torch.Generator, flip: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Training batches: slices of a seeded permutation, each image mirrored with probability
    1/2 when `flip`; a last batch of one is dropped (BN needs two values)."""
    order = torch.randperm(len(split), generator=generator)
    kept = len(order) - 1 if len(order) % batch_size == 1 else len(order)
    order = order[:kept]
    # one draw for the epoch: the same random stream as one draw per batch, fewer calls
    flipped = torch.rand(kept, generator=generator) < 0.5 if flip else None
    source = split.training_distribution(flip)  # on the split's device, mirrors included
    order = order.to(source.device)  # the epoch's one copy to an accelerator; a no-op on the CPU
    labels = split.labels[order]
    if flipped is not None:
        order = order + len(split) * flipped.to(source.device)
    rows = source.view(len(source), -1)  # index_select on rows is a memcpy each; x[idx] on 4D is ~4x slower
    shape = (-1, *source.shape[1:])
    for idx, batch_labels in zip(order.split(batch_size), labels.split(batch_size)):
        yield torch.index_select(rows, 0, idx).view(shape), batch_labels


def ordered_batches(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Evaluation batches in dataset order (views, no copies)."""
    return zip(consecutive_batches(split.images, batch_size), consecutive_batches(split.labels, batch_size))


def consecutive_batches(tensor: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive slices of `tensor` along its first axis (views, no copies)."""
    for start in range(0, len(tensor), batch_size):
        yield tensor[start : start + batch_size]
