"""The validation score of a model while it trains: learning curves, the way to choose a number of epochs
(issue 21: each arm trained to its validation plateau).

What a user of the real DeepLesion has: its fully annotated validation sub-volumes (test3d.parquet, split
val; the manual 3D set's 200 validation sub-volumes). The corpus's hidden truth is never read here."""
from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import torch

from lens_core.evaluation.froc import LENS_FP_RATES, average_sensitivity, froc_curve
from lens_core.evaluation.lens3d import IOBB_THRESHOLD, match_lens3d
from lens_core.inference.expert_proposals import propose_volume, select_volumes, stack_proposals_3d
from lens_core.io import read_table
from lens_core.runtime import resolve_precision


class ValidationSet:
    """The first dataset's validation volumes and their 3D boxes, read once."""

    def __init__(self, prep_dir: Path, dataset: str):
        ddir = Path(prep_dir) / dataset
        vols = read_table(ddir / "volumes.parquet", ["volume_id", "split"], "volume table")
        self.volumes = select_volumes(vols, "val")["volume_id"].tolist()
        truth = read_table(ddir / "test3d.parquet", ["volume_id", "split", "x1", "y1", "z1", "x2", "y2", "z2"],
                           "fully annotated 3D boxes")
        self.truth = truth[(truth["split"] == "val") & truth["volume_id"].isin(self.volumes)]
        self.h5 = ddir / "volumes.h5"
        self.dataset = dataset

    def __bool__(self) -> bool:
        return bool(self.volumes) and not self.truth.empty

    def average(self, model, fuse: list[str], device: torch.device, stack_iou: float = 0.5,
                fp_rates=LENS_FP_RATES, precision: str = "auto") -> dict:
        """Average sensitivity of ``model``'s fused 3D detections, LENS 3D protocol; ``precision`` as
        ``propose.precision`` (auto: bf16 where the CPU has it, as the proposals the model will be judged on)."""
        precision = resolve_precision(precision, device)
        was_training = model.training
        model.eval()
        parts = []
        try:
            with torch.no_grad(), h5py.File(self.h5, "r") as f:
                for v in self.volumes:
                    df = propose_volume(model, f[v]["image"][...], fuse, device, precision=precision)
                    parts.append(stack_proposals_3d(df.assign(volume_id=v), stack_iou))
        finally:
            model.train(was_training)
        pred = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        m = match_lens3d(pred, self.truth, self.volumes, iobb_threshold=IOBB_THRESHOLD, unit="volume_id", fp_rates=fp_rates)
        curve = froc_curve(m.truth["hit_score"].to_numpy(), m.false_positives["score"].to_numpy(), m.n_units)
        return {"val_average": float(average_sensitivity(curve, m.fp_rates)), "n_gt": len(m.truth)}
