"""Training batches: a seeded permutation, random mirroring, the last batch of one dropped."""

from __future__ import annotations

import pytest
import torch

from bnrun.training.data import RAW_SHA256, SYSTEM_DIR, Split, check_available, data_dir_from_env, shuffled_batches


def per_batch_reference(split: Split, batch_size: int, generator: torch.Generator, flip: bool):
    """The plain formulation: one permutation, then one draw of mirror flags per batch."""
    order = torch.randperm(len(split), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:
            continue
        images = split.images[idx]
        if flip:
            mirror = torch.rand(len(idx), generator=generator) < 0.5
            images = torch.where(mirror.view(-1, 1, 1, 1), images.flip(3), images)
        yield images, split.labels[idx]


def test_batches_equal_the_per_batch_formulation_and_leave_the_same_generator_state():
    torch.manual_seed(0)
    for size in (300, 257, 129):  # 257 and 129 end in a batch of one, which is dropped
        split = Split(torch.randn(size, 1, 28, 28), torch.randint(0, 10, (size,)))
        for flip in (False, True):
            fast, slow = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            for _epoch in range(2):
                got = list(shuffled_batches(split, 128, fast, flip))
                want = list(per_batch_reference(split, 128, slow, flip))
                assert len(got) == len(want) == size // 128 + (size % 128 > 1)
                for (x, y), (x_ref, y_ref) in zip(got, want):
                    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
            assert torch.equal(torch.rand(4, generator=fast), torch.rand(4, generator=slow))


def test_flip_mirrors_about_half_the_images():
    split = Split(torch.randn(1000, 1, 28, 28), torch.arange(1000))
    mirrored = 0
    for x, y in shuffled_batches(split, 128, torch.Generator().manual_seed(0), flip=True):
        originals = split.images[y]
        assert all(torch.equal(a, b) or torch.equal(a, b.flip(2)) for a, b in zip(x, originals))
        mirrored += sum(not torch.equal(a, b) for a, b in zip(x, originals))
    assert 400 < mirrored < 600


def test_the_system_copy_named_as_data_dir_is_only_read(tmp_path, monkeypatch):
    """--data-dir /usr/share/datasets/fashion-mnist (where the README says the files are) stages the
    archives in BNRUN_DATA_DIR, never in the system directory."""
    if not all((SYSTEM_DIR / f"{name}.gz").is_file() for name in RAW_SHA256):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    before = sorted(path.name for path in SYSTEM_DIR.iterdir())
    monkeypatch.setenv("BNRUN_DATA_DIR", str(tmp_path))
    assert data_dir_from_env(SYSTEM_DIR) == tmp_path
    assert check_available.__wrapped__(SYSTEM_DIR) == tmp_path
    assert sorted(path.name for path in SYSTEM_DIR.iterdir()) == before
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
