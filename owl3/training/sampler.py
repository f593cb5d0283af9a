"""The order of the data: which samples each process reads at each optimizer step.

The order depends on (seed, step) alone, not on how far a previous run got nor on the number of
processes, so a resumed run reads exactly what the uninterrupted run would have, and K processes together
read what one process reads with K times the accumulation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from owl3.training.data import Record
from owl3.training.encode import Sample, SampleEncoder, Skipped


class RecordDataset(Dataset):
    """Map-style dataset keyed by (epoch, index): the epoch seeds the sample's crop decision."""

    def __init__(self, records: list[Record], encoder: SampleEncoder) -> None:
        self.records, self.encoder = records, encoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]) -> Sample | Skipped:
        epoch, index = key
        return self.encoder(self.records[index], epoch, index)


class StepSampler:
    """Yields this rank's micro-batches of (epoch, index) keys for steps `start` .. `total` - 1.

    Global step s reads global batch k = s mod steps_per_epoch of epoch e = s div steps_per_epoch from a
    permutation seeded by (seed, e) (the last incomplete global batch of an epoch is dropped); its
    micro-batch m on rank r is slice m * world + r of it.
    """

    def __init__(
        self,
        n: int,
        batch: int,
        accum: int,
        rank: int,
        world: int,
        seed: int,
        shuffle: bool,
        start: int,
        total: int,
    ) -> None:
        self.n, self.batch, self.accum, self.rank, self.world = n, batch, accum, rank, world
        self.seed, self.shuffle, self.start, self.total = seed, shuffle, start, total
        self.global_batch = batch * accum * world
        self.steps_per_epoch = n // self.global_batch
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.n, generator=g).tolist()
            else:
                perm = list(range(self.n))
            self._order = (epoch, perm)
        return self._order[1]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.steps_per_epoch)
            gb = self.order(epoch)[k * self.global_batch : (k + 1) * self.global_batch]
            for m in range(self.accum):
                s = (m * self.world + self.rank) * self.batch
                yield [(epoch, i) for i in gb[s : s + self.batch]]

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum
