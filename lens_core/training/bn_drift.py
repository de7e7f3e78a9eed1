"""How far each dataset's BatchNorm statistics sit from the running ones inference uses (issue 21).

LENS trains on one-dataset batches (Sec. VI-B), so every BatchNorm normalises a batch by that batch's own
statistics, while inference normalises every image by the running averages, which the most frequent dataset
dominates. A dataset whose features sit far from those averages is seen at inference unlike in training. For
each dataset and BatchNorm layer: the dataset's mean of the layer's input over its training crops against
the running mean, in running standard deviations (|mean - running mean| / running sd, averaged over
channels), and its variance over the running variance, each per training batch (what the layer normalised by
in training) and averaged over batches. A GroupNorm model has no running statistics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lens_core.training.config import TrainConfig
from lens_core.training.data import SliceReader, build_index, load_batch


def bn_drift(model, cfg: TrainConfig, prep_dir: Path, batches: int = 8, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, BatchNorm layer): ``drift_sd``, ``var_ratio``; empty without BatchNorm."""
    layers = {name: m for name, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if not layers:
        return pd.DataFrame(columns=["dataset", "layer", "drift_sd", "var_ratio"])
    seen: dict = {}  # layer -> [(drift_sd, var_ratio) of each batch]

    def hook(name):
        def record(module, inputs, _output):
            x = inputs[0].detach().float()
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            sd = torch.sqrt(module.running_var + module.eps)
            seen.setdefault(name, []).append((float(((mean - module.running_mean).abs() / sd).mean()),
                                              float((var / (module.running_var + module.eps)).mean())))
        return record

    index = build_index(cfg, Path(prep_dir))
    reader = SliceReader(cfg.slices)
    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    rows = []
    was_training = model.training
    model.eval()  # running statistics used, none updated
    try:
        for name in model.datasets:
            if name not in index:
                continue
            ds, rng = index[name], np.random.default_rng([seed, len(rows)])
            keys = [k for lesion in ds.lesion_slices for k in lesion] + list(ds.negatives)
            seen.clear()
            with torch.no_grad():
                for _ in range(batches):  # training crops, as the layers saw them in training
                    pick = [keys[i] for i in rng.choice(len(keys), min(cfg.batch_size, len(keys)), replace=False)]
                    model.backbone(load_batch(pick, ds, reader, cfg, model.stride, rng).images)
            for layer in layers:
                drift, ratio = np.mean(seen[layer], axis=0)
                rows.append({"dataset": name, "layer": layer, "drift_sd": float(drift), "var_ratio": float(ratio)})
    finally:
        for h in handles:
            h.remove()
        reader.close()
        model.train(was_training)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: the mean and the largest drift over layers, the mean variance ratio."""
    if df.empty:
        return df
    return (df.groupby("dataset", sort=False)
              .agg(mean_drift_sd=("drift_sd", "mean"), max_drift_sd=("drift_sd", "max"),
                   mean_var_ratio=("var_ratio", "mean")).reset_index())
