"""FROC curves per stratum: lesion type, lesion size and dataset.

A lesion-level stratum (``lesion_type``, ``size_bin``) keeps only its lesions in the denominator
but every false positive and every unit: an FP cannot be attributed to a lesion type, so this is
"sensitivity for liver lesions at 1 FP per sub-volume overall", as in DeepLesion's per-type results.
A unit-level stratum (``dataset``) keeps that dataset's units, their lesions and their FPs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.evaluation.froc import CURVE_COLUMNS, Matching, froc_curve

#: Size bin edges in mm (long axis, ``size_mm``): <10, 10-20, 20-30, >=30.
SIZE_EDGES_MM: tuple[float, ...] = (10.0, 20.0, 30.0)
LESION_STRATA = ("lesion_type", "size_bin")
UNIT_STRATA = ("dataset",)
FROC_COLUMNS = ["variant", "protocol", "stratum_by", "stratum", "n_gt", "n_units"] + CURVE_COLUMNS


def size_bin(size_mm, edges=SIZE_EDGES_MM) -> pd.Series:
    """Size bin label of each lesion: ``"<10 mm"``, ``"10-20 mm"``, ..., ``">=30 mm"``."""
    edges = [float(e) for e in edges]
    labels = [f"<{edges[0]:g} mm"] + [f"{a:g}-{b:g} mm" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]:g} mm"]
    cut = pd.cut(pd.Series(size_mm, dtype=float), [-np.inf, *edges, np.inf], right=False, labels=labels)
    return cut.astype(object).where(cut.notna(), "unknown size")


def unit_datasets(matching: Matching) -> pd.Series | None:
    """Dataset of each evaluated unit, from ``unit_info`` or else the unit's lesions."""
    if matching.unit_info is not None and "dataset" in matching.unit_info.columns:
        ds = matching.unit_info["dataset"]
    elif "dataset" in matching.truth.columns:
        per_unit = matching.truth.groupby("unit_index")["dataset"].agg(lambda s: set(s.dropna()))
        mixed = per_unit[per_unit.map(len) > 1]
        if len(mixed):
            unit = matching.units[mixed.index[0]]
            raise ValueError(f"unit {unit!r} has lesions of several datasets: {sorted(mixed.iloc[0])}")
        ds = per_unit.map(lambda s: next(iter(s), None))
        ds.index = matching.units[ds.index.to_numpy()]
    else:
        return None
    ds = ds[~ds.index.duplicated()]
    return pd.Series(ds.reindex(matching.units).to_numpy(), index=matching.units).fillna("unknown")


def strata(matching: Matching, by=LESION_STRATA + UNIT_STRATA):
    """Yield ``(stratum_by, stratum, hit_scores, fp_scores, n_units)``; ``("all", "all", ...)`` first.

    Strata whose column is absent are skipped.
    """
    truth, fps = matching.truth, matching.false_positives
    hit = truth["hit_score"].to_numpy(dtype=np.float64)
    fp_scores = fps["score"].to_numpy(dtype=np.float64)
    yield "all", "all", hit, fp_scores, matching.n_units
    for key in by:
        if key in LESION_STRATA:
            if key == "size_bin" and "size_mm" in truth.columns:
                labels = size_bin(truth["size_mm"].to_numpy())
            elif key in truth.columns:
                labels = truth[key].astype(object).fillna("unknown")
            else:
                continue
            labels = labels.to_numpy()
            for value in sorted(pd.unique(labels), key=str):
                yield key, str(value), hit[labels == value], fp_scores, matching.n_units
        elif key in UNIT_STRATA:
            ds = unit_datasets(matching)
            if ds is None:
                continue
            gt_ds = ds.to_numpy()[truth["unit_index"].to_numpy()]
            fp_ds = ds.to_numpy()[fps["unit_index"].to_numpy()]
            for value in sorted(pd.unique(ds.to_numpy()), key=str):
                n = int((ds.to_numpy() == value).sum())
                yield key, str(value), hit[gt_ds == value], fp_scores[fp_ds == value], n
        else:
            raise ValueError(f"unknown stratum {key!r}; choose from {LESION_STRATA + UNIT_STRATA}")


def froc_table(matching: Matching, variant: str, by=LESION_STRATA + UNIT_STRATA) -> pd.DataFrame:
    """The curves of every stratum in one long table (the content of ``froc.parquet``)."""
    parts = []
    for key, value, hit, fp_scores, n_units in strata(matching, by):
        curve = froc_curve(hit, fp_scores, n_units)
        curve.insert(0, "n_units", n_units)
        curve.insert(0, "n_gt", len(hit))
        curve.insert(0, "stratum", value)
        curve.insert(0, "stratum_by", key)
        curve.insert(0, "protocol", matching.protocol)
        curve.insert(0, "variant", variant)
        parts.append(curve)
    return pd.concat(parts, ignore_index=True)[FROC_COLUMNS]
