"""Deterministic batches: which images step t uses, and how each one is augmented, depend only on the seed.

Resuming mid-epoch and running on N processes both need the same answer to "what does step t see?". Here the
epoch's order is a seeded permutation of (seed, epoch), and the augmentation of image i in epoch e draws from a
generator seeded by (seed, e, i), so neither depends on RNG state, worker processes or how many processes share
a batch. Each process takes a contiguous share of every global batch.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from superlora.data import ImageSet
from superlora.errors import ConfigError


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (SeedSequence mixes them, so nearby tuples give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The seeded order in which epoch `epoch` (0-based) visits `size` images."""
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, 0x5EED))
    return torch.randperm(size, generator=generator).tolist()


def steps_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch; a last partial batch smaller than the number of processes is dropped."""
    if batch_size < world_size:
        raise ConfigError(f"batch_size={batch_size} is smaller than the {world_size} processes; each process needs "
                          f"at least one image per step (use batch_size >= {world_size})")
    full, rest = divmod(size, batch_size)
    steps = full + (1 if rest >= world_size else 0)
    if steps == 0:
        raise ConfigError(f"the training set has {size} images, fewer than the {world_size} processes")
    return steps


class StepBatches:
    """A DataLoader batch sampler: for every step from `start_step` to `total_steps`, this process's keys.

    A key is (epoch, image index); `global_count(step)` is the number of images of the whole (global) batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, total_steps: int, *, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.total_steps, self.start_step = total_steps, start_step
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = steps_per_epoch(size, batch_size, world_size)
        self._order: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def _epoch_order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.size, self.seed, epoch))
        return self._order[1]

    def global_batch(self, step: int) -> tuple[int, list[int]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size
        return epoch, self._epoch_order(epoch)[start:start + self.batch_size]

    def global_count(self, step: int) -> int:
        return len(self.global_batch(step)[1])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            epoch, batch = self.global_batch(step)
            share = np.array_split(np.asarray(batch), self.world_size)[self.rank]
            yield [(epoch, int(index)) for index in share]


@contextlib.contextmanager
def seeded_randomness(seed: int) -> Iterator[None]:
    """Seed torch, `random` and numpy inside the block and restore their previous states afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class AugmentedImages(torch.utils.data.Dataset):
    """Training images keyed by (epoch, index); the augmentation of each key is fixed by the run's seed."""

    def __init__(self, image_set: ImageSet, transform: Callable[[Image.Image], Tensor], seed: int) -> None:
        self.image_set, self.transform, self.seed = image_set, transform, seed

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        epoch, index = key
        with seeded_randomness(derived_seed(self.seed, epoch, index)):
            image = self.transform(self.image_set.images[index])
        return image, self.image_set.labels[index]
