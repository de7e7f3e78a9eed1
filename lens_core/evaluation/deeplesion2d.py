"""DeepLesion's official 2D protocol [9]: per key-slice image, 2D IoU >= 0.5, FPs per image.

The evaluated images are the annotated key slices (every slice holding a ground truth unless a
list is given); predictions on other slices are not part of the test set and are ignored. The
ranking and hit rule are those of the LENS protocol with 2D IoU instead of 3D IoBB; sensitivity
at 0.5, 1, 2, 4, 8, 16 FPs per image.

Predictions: ``volume_id, z, x1, y1, x2, y2, score`` (or an ``image`` column instead of
``volume_id, z``); ground truth: the same without ``score``. A 3D detector's boxes (``z1, z2`` too) are
scored by their cross-sections on the key slices (:func:`key_slice_sections`): the fallback protocol of
a real DeepLesion run without the manual 3D test set.
"""

from __future__ import annotations

import pandas as pd

from lens_core.evaluation import inputs
from lens_core.evaluation.froc import DEEPLESION_FP_RATES, Matching
from lens_core.evaluation.matching import match_boxes

IOU_THRESHOLD = 0.5


def image_key(df: pd.DataFrame, what: str) -> pd.Series:
    """One id per 2D image: the ``image`` column, or ``"{volume_id}@{z}"``."""
    if "image" in df.columns:
        return df["image"].astype(str)
    inputs.require_columns(df, ["volume_id", "z"], what)
    z = inputs.numeric(df, ["z"], what)[:, 0]
    if (z != z.round()).any():
        raise ValueError(f"{inputs.where(df, what)}: slice index z must be an integer")
    return df["volume_id"].astype(str) + "@" + pd.Series(z.astype(int), index=df.index).astype(str)


def key_slice_sections(pred3d: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """3D boxes -> their 2D cross-sections on the key slices of ``truth`` (one row per 3D box and key slice
    it spans: slice z covers [z, z + 1), so a box spans it when z1 < z + 1 and z2 > z), with every other
    column (the score) kept. The in-plane box of a LENS 3D box is the union of its stacked 2D boxes."""
    inputs.require_columns(pred3d, ["volume_id", "z1", "z2"], "3D predictions")
    inputs.require_columns(truth, ["volume_id", "z"], "ground truth")
    keys = truth[["volume_id", "z"]].drop_duplicates().astype({"volume_id": str})
    pred = pred3d.drop(columns=["z", "image"], errors="ignore").astype({"volume_id": str})
    pairs = pred.reset_index(drop=True).merge(keys, on="volume_id", how="inner")
    return pairs.loc[(pairs["z1"] < pairs["z"] + 1) & (pairs["z2"] > pairs["z"])].reset_index(drop=True)


def unit_images(units: pd.DataFrame, truth: pd.DataFrame, what: str = "units") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(units, truth)`` for a ``--units`` table: its rows keyed by ``image``. A table of images (an ``image``
    or ``z`` column) names them itself; a table of volumes (volumes.parquet) says whose key slices count, and
    ``truth`` keeps only those volumes' lesions."""
    if {"image", "z"} & set(units.columns):
        return units.assign(image=image_key(units, what)), truth
    inputs.require_columns(units, ["volume_id"], what)
    truth = truth.loc[truth["volume_id"].astype(str).isin(units["volume_id"].astype(str))]
    keys = truth.drop_duplicates(["volume_id", "z"])[["volume_id", "z"]]
    table = keys.merge(units.drop(columns=["z"], errors="ignore"), on="volume_id")
    return table.assign(image=image_key(table, what)), truth


def match_deeplesion2d(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    images=None,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    fp_rates=DEEPLESION_FP_RATES,
    unit_info: pd.DataFrame | None = None,
) -> Matching:
    """Match 2D predictions to key-slice ground truth by IoU; ``images`` defaults to the key slices."""
    pred = pred.assign(image=image_key(pred, "predictions"))
    truth = truth.assign(image=image_key(truth, "ground truth"))
    if images is None:
        images = pd.unique(truth["image"])
    return match_boxes(
        "deeplesion2d",
        pred,
        truth,
        unit="image",
        box_columns=inputs.BOX2D,
        overlap="iou",
        threshold=iou_threshold,
        fp_rates=fp_rates,
        units=images,
        unit_info=unit_info,
    )
