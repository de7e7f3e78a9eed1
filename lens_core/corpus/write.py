"""Write the built-in corpus (:mod:`lens_core.corpus.generate`) in the four released formats, with the format
writers of the dataset readers (:mod:`lens_core.datasets`), and its hidden truth beside them.

`write_corpus(out, cfg)` -> out/{deeplesion,luna,lits,nihln}/, hidden_truth.parquet, corpus.json. Which lesions a
dataset labels is decided by the corpus (`VisibleLesion.labeled`); how a label is written is the format's
business (RECIST marks on a key slice, world-mm nodules, a tumour mask, node points).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from lens_core.datasets.deeplesion import DeepLesionWriter
from lens_core.datasets.lits import write_lits_case
from lens_core.datasets.luna16 import LunaWriter
from lens_core.datasets.nihln import NihlnWriter
from lens_core.io import atomic_folder

from .generate import (DL_TYPE_CODE, LABELED_TYPE, Scan, centre_in_scan, corpus_config, corpus_stats, generate_scans,
                       truth_table)


def _origin(scan: Scan) -> tuple[float, float, float]:
    return tuple(float(v) for v in scan.grid.origin)  # world mm of voxel (0, 0, 0)'s centre


def write_luna(root: Path, scans: list[Scan]) -> None:
    w = LunaWriter(root)
    for s in scans:
        nodules = [(tuple(v.centre_world), v.diameter_mm) for v in s.lesions if v.labeled]
        # LUNA16's excluded findings: nodules below the size threshold (neither positive nor negative)
        excluded = [(tuple(v.centre_world), v.diameter_mm) for v in s.lesions
                    if v.lesion_type == LABELED_TYPE["luna"] and not v.labeled and centre_in_scan(v, s.grid)]
        w.add_case(s.extra["subset"], s.key, s.hu, s.grid.spacing, _origin(s), nodules=nodules, excluded=excluded)
    w.finish()


def write_lits(root: Path, scans: list[Scan]) -> None:
    for s in scans:
        write_lits_case(root, int(s.key), s.hu, _lits_labels(s), s.grid.spacing, _origin(s))


def _lits_labels(s: Scan) -> np.ndarray:
    """LiTS segmentation: 1 liver, 2 tumour (the ellipsoid inscribed in each labeled tumour's box)."""
    seg = np.zeros(s.hu.shape, np.uint8)
    seg[(s.hu > 75) & (s.hu < 140)] = 1  # contrast-enhanced liver range: a coarse liver label is enough
    nz, ny, nx = s.hu.shape
    Z, Y, X = np.meshgrid(np.arange(nz) + 0.5, np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij", sparse=True)
    for v in s.lesions:
        if not v.labeled:
            continue
        c, r = v.centre_idx, np.maximum(v.radii_idx, 0.5)
        inside = ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1
        k, j, i = (int(np.clip(np.floor(c[a]), 0, n - 1)) for a, n in ((2, nz), (1, ny), (0, nx)))
        inside[k, j, i] = True  # at least the centre voxel, however small the tumour
        seg[inside] = 2
    return seg


def write_deeplesion(root: Path, scans: list[Scan]) -> None:
    """PNG slices + DL_info.csv (key-slice RECIST marks of the labeled lesions only: partial labels) and,
    for val/test volumes, the fully annotated 3D sub-volumes of the paper's manual test set."""
    w = DeepLesionWriter(root)
    for s in scans:
        if not any(v.labeled for v in s.lesions):
            # DeepLesion releases only series with a RECIST mark (no DL_info row = no spacing); the corpus
            # marks one lesion of every scan that has any, so only lesion-free scans are left out
            continue
        pat, st, se = int(s.patient_id), s.study, s.series
        first = int(s.extra["first_slice"])
        nz, ny, nx = s.hu.shape
        last = first + nz - 1
        w.write_volume(pat, st, se, first, s.hu)
        sz, sy, sx = s.grid.spacing
        for v in s.lesions:
            if v.labeled:
                w.add_lesion(patient=pat, study=st, series=se, split=s.split, slice_range=(first, last),
                             spacing=(sx, sy, sz), image_shape=(ny, nx), gender=s.extra["gender"],
                             age=s.extra["age"], **_recist_mark(v, first, nz),
                             # the release gives coarse types only for val/test rows (-1 in train)
                             lesion_type=DL_TYPE_CODE[v.lesion_type] if s.split != "train" else -1)
        if s.split in ("val", "test"):  # every lesion, as 3D boxes (z relative to the first slice)
            w.add_subvolume(s.split, pat, st, se, first, last, [list(v.box) for v in s.lesions])
    w.finish()


def _recist_mark(v, first: int, nz: int) -> dict:
    """Key slice (largest cross-section, i.e. through the centre) and RECIST end points on it."""
    k = int(np.clip(np.floor(v.centre_idx[2]), 0, nz - 1))
    f = np.sqrt(max(0.05, 1 - ((k + 0.5 - v.centre_idx[2]) / v.radii_idx[2]) ** 2))  # cross-section shrink
    cx, cy = v.centre_idx[:2]
    rx, ry = v.radii_idx[:2] * f
    if rx >= ry:  # long axis first, then the short axis across it
        recist = [cx - rx, cy, cx + rx, cy, cx, cy - ry, cx, cy + ry]
    else:
        recist = [cx, cy - ry, cx, cy + ry, cx - rx, cy, cx + rx, cy]
    # DeepLesion's Normalized_lesion_location: position in the body, 0..1 per axis
    loc = (float(np.clip((v.centre_world[0] + 170) / 340, 0, 1)), float(np.clip((v.centre_world[1] + 120) / 240, 0, 1)),
           float(np.clip(v.centre_world[2] / 450, 0, 1)))
    return {"key_slice": first + k, "recist": [float(c) for c in recist], "normalized_location": loc}


def write_nihln(root: Path, scans: list[Scan]) -> None:
    w = NihlnWriter(root)
    for s in scans:
        nodes = [(tuple(v.centre_world), v.diameter_mm) for v in s.lesions if v.labeled]
        w.add_case(s.key, s.hu, s.grid.spacing, _origin(s), nodes=nodes)
    w.finish()


WRITERS = {"luna": write_luna, "lits": write_lits, "deeplesion": write_deeplesion, "nihln": write_nihln}


def write_all(root: Path, scans: list[Scan], progress: bool = False) -> None:
    root = Path(root)
    for name, fn in tqdm(WRITERS.items(), desc="write corpus", disable=not progress, unit="dataset"):
        (root / name).mkdir(parents=True, exist_ok=True)
        fn(root / name, [s for s in scans if s.dataset == name])


def write_corpus(out: Path, cfg: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """Write the whole corpus under `out` atomically (built in a temporary folder that replaces `out`)."""
    out = Path(out)
    cfg = corpus_config(cfg)  # a bad key fails here, before anything is written
    with atomic_folder(out) as tmp:
        scans = generate_scans(cfg)
        write_all(tmp, scans, progress=progress)
        truth = truth_table(scans)
        truth.to_parquet(tmp / "hidden_truth.parquet", index=False)
        stats = corpus_stats(truth, scans)
        (tmp / "corpus.json").write_text(json.dumps({"config": corpus_config(cfg),
                                                     "stats": stats.to_dict("records")}, indent=1, default=str))
    return stats
