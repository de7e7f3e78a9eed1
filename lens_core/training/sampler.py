"""Dataset-homogeneous batch sampler (paper Sec. VI-B): every batch holds images of one dataset;
per epoch each dataset contributes its positive slices and randomly sampled negative slices at
``pos_neg_ratio`` : 1. The plan of epoch e is a pure function of (seed, e), so a resumed run
replays exactly the batches an uninterrupted run would have seen."""
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
    ):
        self.index = index
        self.batch_size = batch_size
        self.pos_neg_ratio = pos_neg_ratio
        self.slices_per_lesion = slices_per_lesion
        self.seed = seed

    def rng(self, epoch: int, *stream: int) -> np.random.Generator:
        """Independent generator for (seed, epoch, stream...); stream () plans, others augment."""
        return np.random.default_rng([self.seed, epoch, *stream])

    def plan(self, epoch: int) -> list[tuple[str, list]]:
        """The epoch's batches: ``[(dataset, [(volume_id, z), ...]), ...]`` in training order."""
        rng = self.rng(epoch)
        batches = []
        for name in sorted(self.index):
            ds = self.index[name]
            pos = set()
            for keys in ds.lesion_slices:
                if self.slices_per_lesion is not None and len(keys) > self.slices_per_lesion:
                    pick = rng.choice(len(keys), self.slices_per_lesion, replace=False)
                    keys = [keys[i] for i in sorted(pick)]
                pos.update(keys)
            pos = sorted(pos)
            n_neg = min(len(ds.negatives), int(round(len(pos) / self.pos_neg_ratio)))
            neg = [ds.negatives[i] for i in rng.choice(len(ds.negatives), n_neg, replace=False)] if n_neg else []
            keys = pos + neg
            order = rng.permutation(len(keys))
            keys = [keys[i] for i in order]
            for i in range(0, len(keys), self.batch_size):
                batches.append((name, keys[i:i + self.batch_size]))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def state_dict(self, epoch: int, next_batch: int) -> dict:
        return {"seed": self.seed, "epoch": epoch, "next_batch": next_batch}
