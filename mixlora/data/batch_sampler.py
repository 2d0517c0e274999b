"""The seeded group-by-length batch sampler of training (``DataLoader(batch_sampler=...)``)."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar sequence lengths, in a seeded random order (pass as ``DataLoader(batch_sampler=...)``).

    Per epoch (seed + epoch; call :meth:`set_epoch`): shuffle all indices, cut them into mega-batches of
    ``batch_size * mega_batch_factor``, sort each mega-batch by length (longest first) and cut it into batches,
    then shuffle the order of the full batches; a final short batch (if any) comes last. With
    ``num_replicas > 1`` the batches are dealt round-robin to ranks; every rank gets the same number of
    full batches (the last incomplete round is dropped when ``drop_last``, else topped up by repeating the
    epoch's first batches; a short final batch is then completed with random indices).
    """

    def __init__(self, lengths, batch_size: int, seed: int = 0, mega_batch_factor: int = 50, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size < 1 or mega_batch_factor < 1:
            raise ValueError(f"batch_size and mega_batch_factor must be >= 1, got {batch_size}, {mega_batch_factor}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.lengths = [int(n) for n in lengths]
        if not self.lengths:
            raise ValueError("LengthGroupedBatchSampler got no lengths")
        self.batch_size, self.seed, self.mega_batch_factor = batch_size, seed, mega_batch_factor
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * self.mega_batch_factor
        batches = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=lambda k: -self.lengths[k])
            batches += [group[s : s + self.batch_size] for s in range(0, len(group), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]  # at most one: only the last mega-batch is short
        full = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
        if self.num_replicas == 1:
            return full if self.drop_last else full + short
        if short and not self.drop_last:
            pad = torch.randint(len(self.lengths), (self.batch_size - len(short[0]),), generator=generator).tolist()
            full.append(short[0] + pad)
        rounds, extra = divmod(len(full), self.num_replicas)
        if extra and not self.drop_last:
            full += [full[k % len(full)] for k in range(self.num_replicas - extra)]
            rounds += 1
        return full[: rounds * self.num_replicas]

    def __iter__(self):
        yield from self._global_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        n, b, r = len(self.lengths), self.batch_size, self.num_replicas
        if r == 1:
            return n // b if self.drop_last else -(-n // b)
        batches = n // b if self.drop_last else -(-n // b)
        return batches // r if self.drop_last else -(-batches // r)
