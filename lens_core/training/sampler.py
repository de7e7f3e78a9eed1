"""Dataset-homogeneous batch sampler (paper Sec. VI-B): every batch holds images of one dataset;
per epoch each dataset contributes its positive slices and randomly sampled negative slices at
``pos_neg_ratio`` : 1. The plan of epoch e is a pure function of (seed, e), so a resumed run
replays exactly the batches an uninterrupted run would have seen.

With ``steps_per_epoch`` an epoch is that many batches whatever the corpus size (a training budget in
optimizer steps): each dataset gets its share of the full pass's batches, filled with its positive and
negative slices at ``pos_neg_ratio`` : 1, drawn without replacement until a list is used up."""
from __future__ import annotations

import numpy as np

from lens_core.training.data import DatasetIndex


class DatasetHomogeneousSampler:
    def __init__(
        self,
        index: dict[str, DatasetIndex],
        batch_size: int,
        pos_neg_ratio: float = 2.0,
        slices_per_lesion: int | None = None,
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ):
        self.index = index
        self.batch_size = batch_size
        self.pos_neg_ratio = pos_neg_ratio
        self.slices_per_lesion = slices_per_lesion
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch

    def rng(self, epoch: int, *stream: int) -> np.random.Generator:
        """Independent generator for (seed, epoch, stream...); stream () plans, others augment."""
        return np.random.default_rng([self.seed, epoch, *stream])

    def plan(self, epoch: int) -> list[tuple[str, list]]:
        """The epoch's batches: ``[(dataset, [(volume_id, z), ...]), ...]`` in training order."""
        rng = self.rng(epoch)
        if self.steps_per_epoch is not None:
            return self._budget_plan(rng)
        batches = []
        for name in sorted(self.index):
            ds = self.index[name]
            pos = self._positives(ds, rng)
            n_neg = min(len(ds.negatives), int(round(len(pos) / self.pos_neg_ratio)))
            neg = [ds.negatives[i] for i in rng.choice(len(ds.negatives), n_neg, replace=False)] if n_neg else []
            keys = pos + neg
            order = rng.permutation(len(keys))
            keys = [keys[i] for i in order]
            for i in range(0, len(keys), self.batch_size):
                batches.append((name, keys[i:i + self.batch_size]))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def _positives(self, ds: DatasetIndex, rng: np.random.Generator) -> list:
        pos = set()
        for keys in ds.lesion_slices:
            if self.slices_per_lesion is not None and len(keys) > self.slices_per_lesion:
                pick = rng.choice(len(keys), self.slices_per_lesion, replace=False)
                keys = [keys[i] for i in sorted(pick)]
            pos.update(keys)
        return sorted(pos)

    def _budget_plan(self, rng: np.random.Generator) -> list[tuple[str, list]]:
        """``steps_per_epoch`` batches, split over the datasets as a full pass would split them."""
        names = sorted(self.index)
        pos = {n: self._positives(self.index[n], rng) for n in names}
        full = {}  # the full pass's batch count per dataset: positives plus their share of negatives
        for n in names:
            n_neg = min(len(self.index[n].negatives), int(round(len(pos[n]) / self.pos_neg_ratio)))
            full[n] = -(-(len(pos[n]) + n_neg) // self.batch_size)
        share = np.asarray([full[n] for n in names], float)
        share = share / share.sum() * self.steps_per_epoch
        counts = np.floor(share).astype(int)  # largest remainders get the leftover batches
        for i in np.argsort(-(share - counts), kind="stable")[: self.steps_per_epoch - counts.sum()]:
            counts[i] += 1
        batches = []
        for n, k in zip(names, counts):
            if not k:
                continue
            size = k * self.batch_size
            negatives = self.index[n].negatives
            n_neg = int(round(size / (1 + self.pos_neg_ratio))) if negatives else 0
            keys = _draw(rng, pos[n], size - n_neg) + _draw(rng, negatives, n_neg)
            keys = [keys[i] for i in rng.permutation(len(keys))]
            batches += [(n, keys[i:i + self.batch_size]) for i in range(0, size, self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def state_dict(self, epoch: int, next_batch: int) -> dict:
        return {"seed": self.seed, "epoch": epoch, "next_batch": next_batch}


def _draw(rng: np.random.Generator, items: list, n: int) -> list:
    """n items: whole shuffled passes over `items`, then a shuffled part of one (no repeats within a pass)."""
    out = []
    while len(out) < n:
        out += [items[i] for i in rng.permutation(len(items))[: n - len(out)]]
    return out
