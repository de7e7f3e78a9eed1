"""The LENS 3D protocol (paper Sec. VI-C): FROC of 3D boxes per fully annotated sub-volume.

All predictions of all sub-volumes are ranked by score. A prediction whose best 3D IoBB
(intersection over the *predicted* box's volume) with the ground truths of its own sub-volume is
below 0.3, or whose sub-volume has none, is a false positive; otherwise every ground truth with
IoBB >= 0.3 is hit, and one touching only already-hit lesions is neither. FPs are counted per
sub-volume, sub-volumes without lesions included; sensitivity at 1/8 ... 8 FPs per sub-volume.

Predictions: ``subvolume, x1, y1, z1, x2, y2, z2, score`` (other columns ignored). Ground truth:
``subvolume, x1, y1, z1, x2, y2, z2`` plus optional ``lesion_type``, ``size_mm``, ``dataset``.
Both in continuous 0-based coordinates with exclusive upper bounds (docs/artifacts.md).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lens_core.evaluation import inputs
from lens_core.evaluation.froc import LENS_FP_RATES, Matching
from lens_core.evaluation.matching import match_boxes

IOBB_THRESHOLD = 0.3  # Sec. VI-C


def match_lens3d(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    subvolumes=None,
    *,
    iobb_threshold: float = IOBB_THRESHOLD,
    unit: str = "subvolume",
    fp_rates=LENS_FP_RATES,
    unit_info: pd.DataFrame | None = None,
) -> Matching:
    """Match 3D predictions to ground truth by IoBB; ``subvolumes`` lists every evaluated unit.

    ``subvolumes=None`` takes ``truth.attrs['units']`` (Parquet metadata) or else every unit seen
    in either table. ``unit`` names the unit column (``volume_id`` for whole-volume evaluation).
    """
    if subvolumes is None:
        subvolumes = truth.attrs.get("units")
    return match_boxes(
        "lens3d",
        pred,
        truth,
        unit=unit,
        box_columns=inputs.BOX3D,
        overlap="iobb",
        threshold=iobb_threshold,
        fp_rates=fp_rates,
        units=subvolumes,
        unit_info=unit_info,
    )


def load_manual_3d(boxes_csv, subvolumes_csv, split: str | None = "test", relative_z: bool = False):
    """DeepLesion's manually annotated 3D test set -> ``(truth, subvolumes)``.

    The release gives inclusive pixel extents with z as the volume's slice number; they become
    exclusive upper bounds here (``x2 + 1``, ``y2 + 1``, ``z2 + 1``), which makes IoBB "with
    inclusive pixel extents" exact. ``relative_z`` counts slices from the sub-volume's first slice
    (docs/artifacts.md) instead of the volume's. ``subvolumes`` lists every sub-volume of the split,
    those without lesions (31 in the test split) included: they still count in FPs per sub-volume.
    ``split=None`` keeps all splits.
    """
    boxes_csv, subvolumes_csv = Path(boxes_csv), Path(subvolumes_csv)
    truth = inputs.read_table(boxes_csv)
    subs = inputs.read_table(subvolumes_csv)
    cols = ["split", "subvolume", "volume", "first_slice", "last_slice"]
    inputs.require_columns(truth, cols + inputs.BOX3D, "manual 3D boxes")
    inputs.require_columns(subs, cols, "sub-volumes")
    if split is not None:
        truth = truth.loc[truth["split"] == split]
        subs = subs.loc[subs["split"] == split]
        if subs.empty:
            raise ValueError(f"{subvolumes_csv}: no sub-volume in split {split!r}")
    unknown = ~truth["subvolume"].isin(subs["subvolume"])
    if unknown.any():
        row = truth.index[unknown][0]
        raise ValueError(f"{boxes_csv}: row {row}: sub-volume {truth.loc[row, 'subvolume']!r} not in {subvolumes_csv}")
    arr = inputs.numeric(truth, inputs.BOX3D, "manual 3D boxes")
    bad = (arr[:, 3:] < arr[:, :3]).any(axis=1)
    if bad.any():
        raise ValueError(f"{boxes_csv}: row {truth.index[bad][0]}: inverted box")
    out = pd.DataFrame(
        {
            "subvolume": truth["subvolume"].to_numpy(),
            "volume_id": truth["volume"].to_numpy(),
            "split": truth["split"].to_numpy(),
            "x1": arr[:, 0], "y1": arr[:, 1], "z1": arr[:, 2],
            "x2": arr[:, 3] + 1, "y2": arr[:, 4] + 1, "z2": arr[:, 5] + 1,
        }
    )
    if relative_z:
        first = truth["first_slice"].to_numpy(dtype=float)
        out["z1"] -= first
        out["z2"] -= first
    return out, subs["subvolume"].tolist()


def subvolume_ranges(subvolumes_csv, split: str | None = "test") -> pd.DataFrame:
    """Slice range of each manually annotated sub-volume: ``subvolume, volume_id, z_start, z_stop``
    (the volume's slice numbers, ``z_stop`` exclusive), for :func:`assign_subvolumes`."""
    subs = inputs.read_table(subvolumes_csv)
    inputs.require_columns(subs, ["split", "subvolume", "volume", "first_slice", "last_slice"], "sub-volumes")
    if split is not None:
        subs = subs.loc[subs["split"] == split]
    first_last = inputs.numeric(subs, ["first_slice", "last_slice"], "sub-volumes")
    return pd.DataFrame({"subvolume": subs["subvolume"].to_numpy(), "volume_id": subs["volume"].to_numpy(),
                         "z_start": first_last[:, 0], "z_stop": first_last[:, 1] + 1})


def assign_subvolumes(pred: pd.DataFrame, ranges: pd.DataFrame) -> pd.DataFrame:
    """Detections over whole volumes -> detections per evaluated sub-volume.

    A detection belongs to the sub-volume of its volume whose slice range ``[z_start, z_stop)``
    contains its z-centre; detections in no sub-volume lie in slices nobody annotated and are
    dropped. ``ranges`` must be in the detections' z frame.
    """
    inputs.require_columns(pred, ["volume_id", "z1", "z2"], "predictions")
    inputs.require_columns(ranges, ["subvolume", "volume_id", "z_start", "z_stop"], "sub-volume ranges")
    if "subvolume" in pred.columns:
        raise ValueError(f"{inputs.where(pred, 'predictions')}: already has a 'subvolume' column")
    m = pred.reset_index(drop=True).merge(ranges[["subvolume", "volume_id", "z_start", "z_stop"]],
                                          on="volume_id", how="inner")
    zc = (m["z1"] + m["z2"]) / 2
    return m.loc[(zc >= m["z_start"]) & (zc < m["z_stop"])].drop(columns=["z_start", "z_stop"]).reset_index(drop=True)
