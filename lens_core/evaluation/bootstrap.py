"""Bootstrap confidence intervals of FROC averages over test patients.

The unit of resampling is the patient: a draw takes as many patients as the test set holds, with
replacement, and each drawn patient brings all of its sub-volumes (or scans, or images), lesions and
false positives. Each draw's FROC is recomputed from the matched items -- the lesions' hit scores and
the false positives' scores -- with FPs per unit normalised by the draw's own unit count, and its
sensitivities at the FP rates are averaged. The interval is the percentile interval of those averages.

Matching is done once; a draw only reweights the ranked items by how often their patient was drawn.
All draws are computed together as ``[draws, items]`` arrays (cumulative sums and a count of points
left of each FP rate), in blocks that bound the memory.

- :func:`bootstrap_average`: the interval of one detection set's average sensitivity;
- :func:`pooled_average`: several seeds' detection sets on the same patients, averaged within each draw;
- :func:`paired_difference`: two rows (each one set per seed) on the same patients and the same draws:
  the interval of the difference of their seed-averaged averages.

Every function takes ``seed``: the same seed draws the same patients (:func:`resample_indices`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.evaluation.froc import Matching

N_BOOT = 2000
LEVEL = 0.95
#: items x draws handled at once (float64 arrays of this size, a few of them: ~100 MB at most)
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PatientItems:
    """One detection set's matching outcome, grouped by patient: what a bootstrap draw needs.

    ``patients``: the ``P`` patient ids; ``units_per_patient``: ``[P]`` evaluated units (sub-volumes,
    scans, images) of each, those without findings included; ``gt_hit``/``gt_patient``: every
    evaluated lesion's hit score (``-inf`` when never hit) and patient code; ``fp_score``/``fp_patient``:
    every false positive's score and patient code. ``fp_rates``: the FP rates averaged over.
    """

    patients: np.ndarray
    units_per_patient: np.ndarray
    gt_hit: np.ndarray
    gt_patient: np.ndarray
    fp_score: np.ndarray
    fp_patient: np.ndarray
    fp_rates: tuple[float, ...]

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    def aligned_to(self, patients) -> "PatientItems":
        """The same items with patient codes in the order of ``patients`` (the same set of ids)."""
        patients = np.asarray(patients, dtype=object)
        if np.array_equal(patients, self.patients):
            return self
        index = pd.Index(patients)
        pos = index.get_indexer(self.patients)
        if len(patients) != len(self.patients) or (pos < 0).any():
            extra = sorted(set(map(str, self.patients)) ^ set(map(str, patients)))[:3]
            raise ValueError(f"detection sets are not on the same patients (differ in e.g. {extra})")
        units = np.empty(len(patients), dtype=np.int64)
        units[pos] = self.units_per_patient
        return PatientItems(patients, units, self.gt_hit, pos[self.gt_patient], self.fp_score,
                            pos[self.fp_patient], self.fp_rates)


def unit_patients(matching: Matching, column: str = "patient_id") -> np.ndarray:
    """The patient of each of ``matching.units``: ``unit_info[column]`` when given, else the unit itself
    (each unit its own patient, e.g. scans of a dataset without patient ids)."""
    info = matching.unit_info
    if info is None or column not in info.columns:
        return np.asarray(matching.units, dtype=object)
    patient = info[column].reindex(pd.Index(matching.units, dtype=object))
    if patient.isna().any():
        raise ValueError(f"unit {patient.index[patient.isna()][0]!r} has no {column}")
    return patient.to_numpy(dtype=object)


def from_matching(matching: Matching, patients=None) -> PatientItems:
    """:class:`PatientItems` of a matching; ``patients``: the patient of each unit (default
    :func:`unit_patients`)."""
    per_unit = unit_patients(matching) if patients is None else np.asarray(patients, dtype=object)
    if len(per_unit) != matching.n_units:
        raise ValueError(f"{len(per_unit)} patient ids for {matching.n_units} units")
    code, ids = pd.factorize(pd.Series(per_unit, dtype=object).astype(str))
    gt_unit = matching.truth["unit_index"].to_numpy(dtype=np.intp)
    fp_unit = matching.false_positives["unit_index"].to_numpy(dtype=np.intp)
    return PatientItems(
        patients=np.asarray(ids, dtype=object),
        units_per_patient=np.bincount(code, minlength=len(ids)).astype(np.int64),
        gt_hit=matching.truth["hit_score"].to_numpy(dtype=np.float64),
        gt_patient=code[gt_unit],
        fp_score=matching.false_positives["score"].to_numpy(dtype=np.float64),
        fp_patient=code[fp_unit],
        fp_rates=tuple(float(r) for r in matching.fp_rates),
    )


# ------------------------------------------------------------------------------------ the draws
def resample_indices(n_patients: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_patients]`` patient indices drawn with replacement; the same seed, the same draws."""
    if n_patients <= 0:
        raise ValueError("no patient to resample")
    if n_boot <= 0:
        raise ValueError(f"the number of bootstrap draws must be positive, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n_patients, size=(n_boot, n_patients))


def draw_counts(indices: np.ndarray, n_patients: int) -> np.ndarray:
    """How often each patient was drawn: ``[n_boot, n_patients]`` from :func:`resample_indices`."""
    n_boot = indices.shape[0]
    flat = indices + n_patients * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_patients).reshape(n_boot, n_patients)


def resampled_sensitivities(items: PatientItems, counts: np.ndarray) -> np.ndarray:
    """``[n_boot, n_rates]`` sensitivities of every draw (``counts``: :func:`draw_counts`).

    The same curve and interpolation as :func:`lens_core.evaluation.froc.froc_curve` and
    :func:`~lens_core.evaluation.froc.interpolate_sensitivity` on the draw's items, each drawn patient's
    items repeated as often as it was drawn; NaN for a draw without lesions.
    """
    counts = np.asarray(counts, dtype=np.float64)
    rates = np.asarray(items.fp_rates, dtype=np.float64)
    found = np.isfinite(items.gt_hit)
    scores = np.concatenate([items.gt_hit[found], items.fp_score])
    if np.isnan(scores).any():
        raise ValueError("scores must not be NaN")
    patient = np.concatenate([items.gt_patient[found], items.fp_patient])
    is_tp = np.r_[np.ones(found.sum(), bool), np.zeros(len(items.fp_score), bool)]
    order = np.argsort(-scores, kind="stable")  # within a tie the order is irrelevant: ties enter together
    scores, patient, is_tp = scores[order], patient[order], is_tp[order]
    # an operating point after the last item of each tie
    last_of_tie = np.ones(len(scores), dtype=bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]

    n_units = counts @ items.units_per_patient.astype(np.float64)
    n_gt = counts @ np.bincount(items.gt_patient, minlength=items.n_patients).astype(np.float64)
    n_boot = len(counts)
    out = np.empty((n_boot, len(rates)))
    block = max(1, BLOCK_ELEMENTS // max(len(scores), 1))
    for start in range(0, n_boot, block):
        rows = slice(start, start + block)
        w = counts[rows][:, patient]  # [b, items]: each item counts as often as its patient was drawn
        n_tp = np.cumsum(np.where(is_tp, w, 0.0), axis=1)[:, last_of_tie]
        n_fp = np.cumsum(np.where(is_tp, 0.0, w), axis=1)[:, last_of_tie]
        zero = np.zeros((len(w), 1))
        x = np.hstack([zero, n_fp / n_units[rows, None]])
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.hstack([zero, n_tp / n_gt[rows, None]])
        out[rows] = interpolate_rows(x, y, rates)
    out[n_gt == 0] = np.nan
    return out


def interpolate_rows(x: np.ndarray, y: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """:func:`~lens_core.evaluation.froc.interpolate_sensitivity` of many curves at once.

    ``x``/``y``: ``[curves, points]``, each row non-decreasing and starting at ``x = 0``. On such a row
    the last point at or left of a rate is the top of its vertical run and the next point the bottom of
    the next run, so the interpolation runs between those two points (or stays at the top past the end).
    """
    n, m = x.shape
    out = np.empty((n, len(rates)))
    r = np.arange(n)
    for j, q in enumerate(rates):
        k = (x <= q).sum(axis=1) - 1  # >= 0: every curve starts at 0 FPs
        nxt = np.minimum(k + 1, m - 1)
        x0, x1, y0, y1 = x[r, k], x[r, nxt], y[r, k], y[r, nxt]
        inside = k < m - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(inside, y0 + (y1 - y0) * (q - x0) / (x1 - x0), y0)
    return out


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap ``samples`` (undefined draws, NaN, left out)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


# ---------------------------------------------------------------------------------- intervals
def _common_draws(runs: list[PatientItems], n_boot: int, seed: int):
    """The runs aligned to one patient order -- the sorted ids, so that a seed's draws depend on the set of
    patients only, not on which run comes first -- and the draws' counts ``[n_boot, P]``."""
    if not runs:
        raise ValueError("no detection set to bootstrap")
    rates = runs[0].fp_rates
    for r in runs[1:]:
        if tuple(r.fp_rates) != tuple(rates):
            raise ValueError(f"detection sets averaged over different FP rates: {r.fp_rates} vs {rates}")
    patients = np.asarray(sorted(runs[0].patients, key=str), dtype=object)
    runs = [r.aligned_to(patients) for r in runs]
    for r in runs[1:]:
        if not np.array_equal(r.units_per_patient, runs[0].units_per_patient):
            raise ValueError("detection sets are not on the same units: a patient's unit count differs")
    counts = draw_counts(resample_indices(len(patients), n_boot, seed), len(patients))
    return runs, counts


def run_averages(runs: list[PatientItems], n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_runs, n_boot]``: each run's average sensitivity in each draw, every run on the same draws
    (the runs must share their patients). Pooled and paired intervals are means and differences of rows."""
    runs, counts = _common_draws(runs, n_boot, seed)
    return np.array([resampled_sensitivities(r, counts).mean(axis=1) for r in runs])


def interval(samples: np.ndarray, level: float = LEVEL, **settings) -> dict:
    """``low``, ``high`` of bootstrap ``samples``, the number of undefined draws and ``settings``; for a
    difference, ``excludes_zero``: the interval lies on one side of 0."""
    low, high = percentile_interval(samples, level)
    return {"low": low, "high": high, "level": level, "undefined": int(np.isnan(samples).sum()),
            "excludes_zero": bool(low > 0 or high < 0), **settings}


def bootstrap_average(items: PatientItems, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Percentile interval of one detection set's average sensitivity: ``low, high`` (fractions), plus
    ``rate_low, rate_high`` (each rate's interval) and the settings."""
    runs, counts = _common_draws([items], n_boot, seed)
    sens = resampled_sensitivities(runs[0], counts)
    out = interval(sens.mean(axis=1), level, n_boot=n_boot, seed=seed, n_patients=items.n_patients)
    ok = ~np.isnan(sens).any(axis=1)
    alpha = (1 - level) / 2
    out["rate_low"], out["rate_high"] = (np.quantile(sens[ok], alpha, axis=0), np.quantile(sens[ok], 1 - alpha, axis=0))
    return out


def pooled_average(runs: list[PatientItems], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Interval of the mean over seeds of the average sensitivity: every run (one per seed) on the same
    patients; each draw resamples patients once and averages the runs' averages."""
    return interval(run_averages(runs, n_boot, seed).mean(axis=0), level, n_boot=n_boot, seed=seed,
                    n_patients=runs[0].n_patients)


def paired_difference(runs_a: list[PatientItems], runs_b: list[PatientItems], n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> dict:
    """Interval of ``mean_seeds(average A) - mean_seeds(average B)``, both rows on the same patients and
    the same draws (a paired bootstrap); ``excludes_zero``: the interval lies entirely on one side of 0."""
    if not runs_a or not runs_b:
        raise ValueError("a paired difference needs detection sets on both sides")
    avg = run_averages(list(runs_a) + list(runs_b), n_boot, seed)
    diff = avg[: len(runs_a)].mean(axis=0) - avg[len(runs_a):].mean(axis=0)
    return interval(diff, level, n_boot=n_boot, seed=seed, n_patients=runs_a[0].n_patients)


# ----------------------------------------------------------------------------- matches.parquet
MATCHES_COLUMNS = ["kind", "unit", "patient", "score"]


def matches_table(matching: Matching, patients=None) -> pd.DataFrame:
    """The matching outcome as a table a later bootstrap can read (`lens evaluate` writes it as
    ``matches.parquet``): one ``unit`` row per evaluated unit (score NaN), one ``gt`` row per evaluated
    lesion (score = its hit score, ``-inf`` if missed), one ``fp`` row per false positive."""
    per_unit = unit_patients(matching) if patients is None else np.asarray(patients, dtype=object)
    units = pd.Series(matching.units, dtype=object).astype(str).to_numpy()
    per_unit = pd.Series(per_unit, dtype=object).astype(str).to_numpy()
    gt_u = matching.truth["unit_index"].to_numpy(dtype=np.intp)
    fp_u = matching.false_positives["unit_index"].to_numpy(dtype=np.intp)
    parts = [
        pd.DataFrame({"kind": "unit", "unit": units, "patient": per_unit, "score": np.nan}),
        pd.DataFrame({"kind": "gt", "unit": units[gt_u], "patient": per_unit[gt_u],
                      "score": matching.truth["hit_score"].to_numpy(dtype=np.float64)}),
        pd.DataFrame({"kind": "fp", "unit": units[fp_u], "patient": per_unit[fp_u],
                      "score": matching.false_positives["score"].to_numpy(dtype=np.float64)}),
    ]
    return pd.concat(parts, ignore_index=True)[MATCHES_COLUMNS]


def from_matches_table(table: pd.DataFrame, fp_rates, what: str = "matches") -> PatientItems:
    """:class:`PatientItems` of a :func:`matches_table` (e.g. read back from ``matches.parquet``)."""
    missing = [c for c in MATCHES_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; was it written by `lens evaluate`?")
    kind = table["kind"].astype(str).to_numpy()
    unknown = ~np.isin(kind, ["unit", "gt", "fp"])
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"{what}: row {row}: kind {kind[row]!r} is not unit, gt or fp")
    units = table.loc[kind == "unit"]
    if units.empty:
        raise ValueError(f"{what}: no evaluated unit")
    code, ids = pd.factorize(units["patient"].astype(str))
    index = pd.Index(ids)
    gt, fp = table.loc[kind == "gt"], table.loc[kind == "fp"]
    gt_p, fp_p = index.get_indexer(gt["patient"].astype(str)), index.get_indexer(fp["patient"].astype(str))
    for pos, df in ((gt_p, gt), (fp_p, fp)):
        if (pos < 0).any():
            row = df.index[pos < 0][0]
            raise ValueError(f"{what}: row {row}: patient {df.loc[row, 'patient']!r} has no unit row")
    return PatientItems(
        patients=np.asarray(ids, dtype=object),
        units_per_patient=np.bincount(code, minlength=len(ids)).astype(np.int64),
        gt_hit=gt["score"].to_numpy(dtype=np.float64), gt_patient=gt_p,
        fp_score=fp["score"].to_numpy(dtype=np.float64), fp_patient=fp_p,
        fp_rates=tuple(float(r) for r in fp_rates),
    )


def read_matches(path) -> PatientItems:
    """``matches.parquet`` written by `lens evaluate` -> :class:`PatientItems` (FP rates from its metadata)."""
    from lens_core.io import read_meta

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (written by `lens evaluate` beside summary.parquet)")
    meta = read_meta(path)
    if "fp_rates" not in meta:
        raise ValueError(f"{path}: no fp_rates metadata; was it written by `lens evaluate`?")
    return from_matches_table(pd.read_parquet(path), meta["fp_rates"], str(path))
