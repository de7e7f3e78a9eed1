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

Where a row is several training seeds' runs, the draws are two-level (:func:`seed_mean`): each draw also
resamples the seeds with replacement, so the interval covers what another seed would change, not only other
patients. Rows with the same number of seeds share the seed draws (paired by seed position).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.evaluation.froc import Matching
from lens_core.io import read_meta

N_BOOT = 2000
LEVEL = 0.95
#: items x draws handled at once (float64 arrays of this size, a few of them: ~100 MB at most)
BLOCK_ELEMENTS = 1 << 22
#: false positives first scored for every draw: this many times those the test set itself needs to pass the
#: highest FP rate (draws that need more are redone with all)
PREFIX_MARGIN = 2.0


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

    The same numbers as :func:`~lens_core.evaluation.froc.froc_curve` and
    :func:`~lens_core.evaluation.froc.interpolate_sensitivity` on the draw's items, each drawn patient's
    items repeated as often as it was drawn (tests/test_bootstrap.py rebuilds every draw that way); NaN
    for a draw without lesions.

    How: items are ranked once and cut into tie groups (the curve's operating points). At FP rate ``q`` a
    draw's curve is interpolated between the last point at or below ``q`` FPs per unit and the next one;
    the next one ends the tie group of the first false positive whose cumulative weight exceeds
    ``q x units``. So a draw needs only the cumulative weights of the false positives and of the found
    lesions, and one search per rate -- a single ``searchsorted`` over all draws of a block, each row
    offset by more than its largest count. Counts stay integers until the final divisions, which are
    those of the curve, so the numbers are the loop's to the last bit.
    """
    rates = np.asarray(items.fp_rates, dtype=np.float64)
    found = np.isfinite(items.gt_hit)
    scores = np.concatenate([items.gt_hit[found], items.fp_score])
    if np.isnan(scores).any():
        raise ValueError("scores must not be NaN")
    patient = np.concatenate([items.gt_patient[found], items.fp_patient])
    is_tp = np.r_[np.ones(found.sum(), bool), np.zeros(len(items.fp_score), bool)]
    order = np.argsort(-scores, kind="stable")  # within a tie the order is irrelevant: ties enter together
    scores, patient, is_tp = scores[order], patient[order], is_tp[order]
    group = np.cumsum(np.r_[True, scores[1:] != scores[:-1]]) - 1 if len(scores) else np.zeros(0, np.intp)
    n_groups = int(group[-1]) + 1 if len(group) else 0
    tp_through = np.cumsum(np.bincount(group[is_tp], minlength=n_groups))  # found lesions up to each group's end
    fp_through = np.cumsum(np.bincount(group[~is_tp], minlength=n_groups))
    tp_in = np.bincount(group[is_tp], minlength=n_groups)
    fp_in = np.bincount(group[~is_tp], minlength=n_groups)
    # for each false positive (in rank order): its group's bounds in the prefix sums below
    fp_group = group[~is_tp]
    fp_lo, fp_hi = (fp_through - fp_in)[fp_group], fp_through[fp_group]
    tp_lo, tp_hi = (tp_through - tp_in)[fp_group], tp_through[fp_group]
    fp_patient, tp_patient = patient[~is_tp], patient[is_tp]

    counts = np.asarray(counts, dtype=np.int64)
    n_units = counts @ items.units_per_patient.astype(np.int64)
    n_gt = counts @ np.bincount(items.gt_patient, minlength=items.n_patients).astype(np.int64)
    ranked = (fp_patient, tp_patient, fp_lo, fp_hi, tp_lo, tp_hi)
    # Only the false positives up to the highest rate matter. A draw weighs patients ~1 on average, so twice
    # the FPs the highest rate allows the test set nearly always suffice; the few draws that need more are
    # redone with every item.
    n_fp_items = len(fp_patient)
    enough = int(np.ceil(PREFIX_MARGIN * rates.max() * items.units_per_patient.sum())) + 1
    prefix = min(n_fp_items, max(enough, 64))
    if 0 < prefix < n_fp_items:
        prefix = int(fp_hi[prefix - 1])  # end at a tie group's end: a group's points lie within the prefix
    n_boot = len(counts)
    out = np.empty((n_boot, len(rates)))
    block = max(1, BLOCK_ELEMENTS // max(prefix + len(tp_patient), 1))
    for start in range(0, n_boot, block):
        rows = slice(start, start + block)
        sens, short = _draw_block(counts[rows], n_units[rows], n_gt[rows], rates, ranked, prefix)
        if short.any():
            sens[short] = _draw_block(counts[rows][short], n_units[rows][short], n_gt[rows][short], rates, ranked,
                                      n_fp_items)[0]
        out[rows] = sens
    out[n_gt == 0] = np.nan
    return out


def _draw_block(c, n_units, n_gt, rates, ranked, n_fp: int):
    """Sensitivities of the draws ``c`` (patient counts) from the first ``n_fp`` ranked false positives, and
    which draws need more of them (their curve does not pass the highest rate within those)."""
    fp_patient, tp_patient, fp_lo, fp_hi, tp_lo, tp_hi = ranked
    b = len(c)
    rows = np.arange(b)
    units, gts = n_units.astype(np.float64), n_gt.astype(np.float64)
    complete = n_fp == len(fp_patient)
    # the found lesions that can enter: all, or those ranked up to the end of the last FP's group
    n_tp = len(tp_patient) if complete else int(tp_hi[n_fp - 1])
    ct = np.zeros((b, n_tp + 1), dtype=np.int64)  # found-lesion weight of the first j found lesions
    np.cumsum(c[:, tp_patient[:n_tp]], axis=1, out=ct[:, 1:])
    short = np.zeros(b, dtype=bool)
    out = np.empty((b, len(rates)))
    with np.errstate(invalid="ignore", divide="ignore"):
        top = ct[:, -1] / gts
        if n_fp == 0:
            out[:] = top[:, None]
            return out, short
        cf = np.zeros((b, n_fp + 1), dtype=np.int64)  # FP weight of the first j false positives
        np.cumsum(c[:, fp_patient[:n_fp]], axis=1, out=cf[:, 1:])
        span = int(cf[:, -1].max()) + 1
        keys = (cf[:, 1:] + (rows * span)[:, None]).ravel()
        for j, q in enumerate(rates):
            # the most FPs a draw may have at rate q: the largest m with m / units <= q (the curve's division)
            m = np.floor(q * units).astype(np.int64)
            m = np.where((m + 1) / units <= q, m + 1, m)
            m = np.where(m / units > q, m - 1, m)
            first = np.searchsorted(keys, np.minimum(m, span - 1) + rows * span, side="right") - rows * n_fp
            past_end = first >= n_fp  # every FP within the rate: the curve's top (if these are all the FPs)
            if not complete:
                short |= past_end
            i = np.minimum(first, n_fp - 1)
            x0, x1 = cf[rows, fp_lo[i]] / units, cf[rows, fp_hi[i]] / units
            y0, y1 = ct[rows, tp_lo[i]] / gts, ct[rows, tp_hi[i]] / gts
            out[:, j] = np.where(past_end, top, y0 + (y1 - y0) * (q - x0) / (x1 - x0))
    return out, short


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


def seed_mean(avg: np.ndarray, seed: int = 0) -> np.ndarray:
    """The two-level bootstrap's row mean: ``avg [n_seeds, n_boot]`` (one row's runs from
    :func:`run_averages`) -> ``[n_boot]``, each draw the mean over ``n_seeds`` runs drawn with replacement.
    The seed draws depend on (seed, n_seeds) alone: rows with as many seeds are resampled alike, so a
    difference of two rows pairs their runs by seed position. One seed: the runs' own averages."""
    k, n_boot = avg.shape
    if k == 1:
        return avg[0]
    pick = np.random.default_rng([seed, k, 1]).integers(0, k, size=(n_boot, k))
    return avg[pick, np.arange(n_boot)[:, None]].mean(axis=1)


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
    patients; each draw resamples patients once, then the seeds (:func:`seed_mean`), and averages them."""
    return interval(seed_mean(run_averages(runs, n_boot, seed), seed), level, n_boot=n_boot, seed=seed,
                    n_patients=runs[0].n_patients)


def paired_difference(runs_a: list[PatientItems], runs_b: list[PatientItems], n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> dict:
    """Interval of ``mean_seeds(average A) - mean_seeds(average B)``, both rows on the same patients and
    the same draws (a paired bootstrap); ``excludes_zero``: the interval lies entirely on one side of 0."""
    if not runs_a or not runs_b:
        raise ValueError("a paired difference needs detection sets on both sides")
    avg = run_averages(list(runs_a) + list(runs_b), n_boot, seed)
    diff = seed_mean(avg[: len(runs_a)], seed) - seed_mean(avg[len(runs_a):], seed)
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (written by `lens evaluate` beside summary.parquet)")
    meta = read_meta(path)
    if "fp_rates" not in meta:
        raise ValueError(f"{path}: no fp_rates metadata; was it written by `lens evaluate`?")
    return from_matches_table(pd.read_parquet(path), meta["fp_rates"], str(path))
