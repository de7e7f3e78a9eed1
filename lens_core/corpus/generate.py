"""The built-in multi-dataset CT corpus (issue 2), generated: four datasets' scans and their hidden truth
(:mod:`lens_core.corpus.write` writes them in the released formats).

The same synthetic world (:mod:`lens_core.corpus.phantom`) is scanned four ways, and each dataset labels what its real
counterpart labels (paper Sec. VI-A, Table I):

- DeepLesion-like: universal and *partial*: every lesion type, several studies and series per patient,
  but only some lesions get a RECIST box on their key slice. Its val/test volumes also get the
  fully annotated 3D boxes of the paper's manual test set.
- LUNA16-like: chest scans; every lung nodule of diameter >= 6 mm is labeled (smaller ones go to
  `annotations_excluded.csv`, as LUNA16 does below 3 mm at its finer resolution); other lesions are
  present and unlabeled.
- LiTS-like: abdominal scans; every liver tumour is in the segmentation.
- NIH-LN-like: mediastinal / abdominal scans; every lymph node of short axis >= 8 mm is labeled
  (concept shift: a different size threshold than the other sets).

`hidden_truth.parquet` at the corpus root lists every lesion in every volume: its box in the original
volume's voxel coordinates (project convention), type, instance id across studies/series, size and
whether its dataset labels it. Only evaluation and mining audits read it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lens_core.config import deep_merge

from . import phantom as ph

# Shaped like the paper's Table I: DeepLesion-like labelled training lesions far outnumber the single-type
# sets' (22.9 K against ~3 K there; here ~9x), its val/test splits hold hundreds of fully annotated lesions,
# and each dataset is its own scanner domain (noise, reconstruction kernel, slice thickness, contrast phase).
DEFAULT_CORPUS = {
    "seed": 0,
    "size_px": 128,  # original in-plane size of every scan (pixel sizes scale so the body stays in view)
    # DeepLesion's sub-volumes are short (the key slice +- ~30 mm): each patient's lesions lie in the body
    # range its series cover (that is why the series exist), several of them per sub-volume
    "deeplesion": {"patients": 90, "studies": [1, 3], "series": [1, 2], "lesions": [4, 8],
                   "pixel_mm": [2.1, 2.6], "slice_mm": [2.5, 5.0], "z_extent_mm": [50, 70],
                   "split": {"train": 0.6, "val": 0.15, "test": 0.25},
                   "annotate_p": [0.25, 0.7],  # P(annotated) for the smallest .. largest lesions
                   # many scanners: any noise, smooth to sharp kernels; contrast alternates between series
                   "noise_hu": [10, 25], "kernel": [-1.0, 1.0], "contrast_p": 0.6},
    # low-dose chest CT, sharp lung kernel, thin slices, mostly without contrast
    "luna": {"cases": 8, "lesions": [2, 4], "pixel_mm": [2.0, 2.5], "slice_mm": [1.5, 2.0], "min_diameter_mm": 6.0,
             "noise_hu": [22, 32], "kernel": [0.5, 1.2], "contrast_p": 0.15},
    # portal-venous abdominal CT, smooth soft-tissue kernel, thick slices
    "lits": {"cases": 6, "lesions": [2, 4], "pixel_mm": [2.0, 2.5], "slice_mm": [4.0, 5.0],
             "noise_hu": [8, 14], "kernel": [-1.0, -0.6], "contrast_p": 0.95},
    # contrast CT of the mediastinum / abdomen, standard kernel
    "nihln": {"cases": 6, "lesions": [4, 8], "pixel_mm": [2.0, 2.5], "slice_mm": [2.0, 2.5], "min_short_axis_mm": 8.0,
              "noise_hu": [12, 20], "kernel": [-0.4, 0.2], "contrast_p": 0.8},
}

# lesion type mixes per dataset (weights); single-type sets still contain other lesions, unlabeled
MIX = {
    "deeplesion": {"lung_nodule": 2, "liver_tumor": 2, "lymph_node": 3, "kidney_lesion": 1, "bone_lesion": 1, "soft_tissue": 1},
    "luna": {"lung_nodule": 5, "lymph_node": 1, "bone_lesion": 0.5, "soft_tissue": 0.5},
    "lits": {"liver_tumor": 5, "kidney_lesion": 1, "lymph_node": 1, "soft_tissue": 0.5},
    "nihln": {"lymph_node": 5, "lung_nodule": 1, "liver_tumor": 0.5, "bone_lesion": 0.5},
}
LABELED_TYPE = {"luna": "lung_nodule", "lits": "liver_tumor", "nihln": "lymph_node"}
# DeepLesion's Coarse_lesion_type codes (1 bone, 2 abdomen, 3 mediastinum, 4 liver, 5 lung, 6 kidney,
# 7 soft tissue, 8 pelvis; -1 = not labeled, as in the released val/test-less training rows)
DL_TYPE_CODE = {"bone_lesion": 1, "lymph_node": 3, "liver_tumor": 4, "lung_nodule": 5, "kidney_lesion": 6,
                "soft_tissue": 7}


@dataclass
class VisibleLesion:
    instance_id: str
    lesion_type: str
    box: np.ndarray          # x1, y1, z1, x2, y2, z2 in the scan's voxel coords (project convention)
    centre_world: np.ndarray  # x, y, z mm
    diameter_mm: float       # long axial diameter
    short_axis_mm: float
    centre_idx: np.ndarray   # continuous voxel coords of the centre (may lie outside the scan in z)
    radii_idx: np.ndarray    # semi-axes in voxels (x, y, z)
    labeled: bool = False


@dataclass
class Scan:
    """One synthetic volume before it is written in a dataset's format."""

    dataset: str
    key: str                 # format-specific name (DeepLesion folder, LUNA seriesuid, LiTS index, NIH-LN case)
    patient_id: str
    study: int
    series: int
    split: str
    grid: ph.Grid
    hu: np.ndarray           # int16 [z, y, x]
    lesions: list[VisibleLesion] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def corpus_config(overrides: dict | None) -> dict:
    """DEFAULT_CORPUS with config.yaml's `corpus:` section deep-merged on top (pipeline keys dropped)."""
    extra = {k: v for k, v in (overrides or {}).items() if k not in ("builtin", "root")}
    _check_keys(extra, DEFAULT_CORPUS, "corpus")
    return deep_merge(DEFAULT_CORPUS, extra)


def _check_keys(given: dict, known: dict, where: str) -> None:
    """Every key of `given` exists in `known`, and a section stays a section (a typo is an error, not a no-op)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    for k, v in given.items():
        if isinstance(known[k], dict) != isinstance(v, dict):
            kind = "a mapping" if isinstance(known[k], dict) else "a value"
            raise ValueError(f"{where}.{k}: must be {kind}, got {v!r}")
        if isinstance(v, dict):
            _check_keys(v, known[k], f"{where}.{k}")


def _visible(p: ph.Patient, study: int, grid: ph.Grid, min_px: float = 1.0) -> list[VisibleLesion]:
    """Lesions whose extent falls inside the grid, with their voxel boxes."""
    out = []
    nz, ny, nx = grid.shape
    for les in p.lesions:
        lo, hi = ph.lesion_box_world(p, les, study)
        a, b = grid.world_to_index(lo), grid.world_to_index(hi)
        box = np.array([a[0], a[1], a[2], b[0], b[1], b[2]])
        centre, radii = (a + b) / 2, (b - a) / 2
        # voxel-centre coverage: pixel i is inside when its centre (i+0.5) is in [lo, hi]
        zc = np.clip(box[[2, 5]], 0, nz)
        if box[3] > nx or box[4] > ny or box[0] < 0 or box[1] < 0:
            continue  # cut by the in-plane border: such lesions are rare; keep the truth unambiguous
        if zc[1] - zc[0] < min_px:
            continue
        box[2], box[5] = zc
        r = les.radii_at(study)
        out.append(VisibleLesion(les.instance_id, les.lesion_type, box, ph.lesion_centre_world(p, les, study),
                                 les.diameter_mm(study), float(2 * min(r[0], r[1])), centre, radii))
    return out


def centre_in_scan(v: VisibleLesion, grid: ph.Grid) -> bool:
    """A mark at a lesion's centre (a RECIST key slice, a LUNA16 or NIH-LN point) needs that centre inside
    the scan; a lesion cut by the first or last slice is visible but stays unmarked."""
    return 0 <= v.centre_idx[2] < grid.shape[0]


def _uid(*parts) -> str:
    """A deterministic DICOM-style UID (digits and dots only) from the given parts."""
    h = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return f"1.3.6.1.4.1.14519.5.2.1.{h}"


def generate_scans(cfg: dict) -> list[Scan]:
    """All synthetic scans of the four datasets, in a deterministic order."""
    cfg = corpus_config(cfg)
    rng = np.random.default_rng(cfg["seed"])
    size = int(cfg["size_px"])
    fov = 128 / size  # pixel_mm ranges are for 128 px scans: a smaller scan keeps the body in view
    scans: list[Scan] = []

    def uni(r, lo_hi):
        return float(r.uniform(*lo_hi))

    # DeepLesion-like: patients with several studies and series; each series a sub-volume of one region
    d = cfg["deeplesion"]
    n_pat = int(d["patients"])
    splits = _split_patients(n_pat, d["split"], rng)
    for pi in range(n_pat):
        r = np.random.default_rng([cfg["seed"], 1, pi])
        pid = f"{pi + 1:06d}"
        n_st = int(r.integers(d["studies"][0], d["studies"][1] + 1))
        # each patient is followed over one body range (that is where their disease is)
        ext = uni(r, d["z_extent_mm"])
        z0 = uni(r, (60.0, 420.0 - ext))
        p = ph.make_patient(r, pid, n_st, MIX["deeplesion"], tuple(d["lesions"]), z_band=(z0, z0 + ext))
        for st in range(n_st):
            n_se = int(r.integers(d["series"][0], d["series"][1] + 1))
            for se in range(n_se):
                slice_mm = float(r.choice(d["slice_mm"]))
                grid = ph.scan_grid("dl", (z0 + r.uniform(-10, 10), z0 + ext), uni(r, d["pixel_mm"]) * fov, slice_mm, size)
                look = ph.SeriesLook(contrast=bool(se % 2 == 0) if n_se > 1 else bool(r.random() < d["contrast_p"]),
                                     noise_hu=uni(r, d["noise_hu"]), kernel=uni(r, d["kernel"]))
                hu = ph.render(p, st, look, grid, r)
                s = Scan("deeplesion", f"{pid}_{st + 1:02d}_{se + 1:02d}", pid, st + 1, se + 1, splits[pi], grid, hu,
                         _visible(p, st, grid), extra={"first_slice": int(r.integers(1, 60)),
                                                        "gender": "MF"[int(r.integers(2))],
                                                        "age": int(r.integers(30, 85)) + st, "look": look})
                lo_p, hi_p = d["annotate_p"]
                # partial labels: radiologists mark some lesions (larger ones more often), always on the
                # slice of largest cross-section, so only lesions whose centre is in the scan qualify
                markable = [v for v in s.lesions if centre_in_scan(v, grid)]
                for v in markable:
                    frac = np.clip((v.diameter_mm - 8) / 25, 0, 1)
                    v.labeled = bool(r.random() < lo_p + (hi_p - lo_p) * frac)
                if markable and not any(v.labeled for v in markable):
                    max(markable, key=lambda v: v.diameter_mm).labeled = True  # a DL volume exists because of a mark
                scans.append(s)

    for ds, region in (("luna", "chest"), ("lits", "abdomen"), ("nihln", None)):
        d = cfg[ds]
        for ci in range(int(d["cases"])):
            r = np.random.default_rng([cfg["seed"], 2, ["luna", "lits", "nihln"].index(ds), ci])
            pid = f"{ds}{ci:03d}"
            mix = dict(MIX[ds])
            p = ph.make_patient(r, pid, 1, mix, tuple(d["lesions"]))
            reg = region or ("chest" if ci % 2 == 0 else "abdomen")
            zlo, zhi = ph.REGIONS[reg]
            if ds == "nihln":  # NIH-LN scans cover the mediastinum or the abdomen
                zlo, zhi = (255.0, 375.0) if reg == "chest" else (80.0, 230.0)
            grid = ph.scan_grid(reg, (zlo + r.uniform(0, 10), zhi - r.uniform(0, 10)), uni(r, d["pixel_mm"]) * fov,
                                float(r.choice(d["slice_mm"])), size)
            look = ph.SeriesLook(contrast=bool(r.random() < d["contrast_p"]), noise_hu=uni(r, d["noise_hu"]),
                                 kernel=uni(r, d["kernel"]))
            hu = ph.render(p, 0, look, grid, r)
            if ds == "luna":
                key = _uid("luna", cfg["seed"], ci)
            elif ds == "lits":
                key = str(ci)
            else:
                key = f"{'MED' if reg == 'chest' else 'ABD'}_LYMPH_{ci + 1:03d}"
            s = Scan(ds, key, pid, 1, 1, "", grid, hu, _visible(p, 0, grid), extra={"subset": ci % 2, "look": look})
            for v in s.lesions:
                # LiTS draws a mask, which a tumour cut by the scan's end still gets; the others mark centres
                if v.lesion_type != LABELED_TYPE[ds] or (ds != "lits" and not centre_in_scan(v, grid)):
                    continue
                if ds == "luna":
                    v.labeled = v.diameter_mm >= d["min_diameter_mm"]
                elif ds == "nihln":
                    v.labeled = v.short_axis_mm >= d["min_short_axis_mm"]
                else:
                    v.labeled = True
            scans.append(s)
    return scans


def _split_patients(n: int, fractions: dict, rng) -> list[str]:
    n_test = max(1, int(round(n * fractions["test"])))
    n_val = max(1, int(round(n * fractions["val"])))
    labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return list(np.random.default_rng(rng.integers(2**32)).permutation(labels))


def truth_table(scans: list[Scan]) -> pd.DataFrame:
    rows = []
    for s in scans:
        for v in s.lesions:
            rows.append({"dataset": s.dataset, "scan_key": s.key, "patient_id": s.patient_id, "study": s.study,
                         "series": s.series, "split": s.split, "instance_id": v.instance_id,
                         "lesion_type": v.lesion_type, "size_mm": round(v.diameter_mm, 3),
                         "short_axis_mm": round(v.short_axis_mm, 3), "labeled": v.labeled,
                         **dict(zip(["x1", "y1", "z1", "x2", "y2", "z2"], map(float, v.box)))})
    return pd.DataFrame(rows)


def corpus_stats(truth: pd.DataFrame, scans: list[Scan]) -> pd.DataFrame:
    vol = pd.DataFrame([{"dataset": s.dataset, "slices": s.hu.shape[0]} for s in scans])
    g = vol.groupby("dataset").agg(volumes=("slices", "size"), slices=("slices", "sum"))
    t = truth.groupby("dataset").agg(lesions=("labeled", "size"), labeled=("labeled", "sum"))
    out = g.join(t).fillna(0).astype(int)
    out["hidden"] = out["lesions"] - out["labeled"]
    return out.reset_index()
