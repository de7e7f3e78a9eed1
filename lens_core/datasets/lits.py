"""LiTS (paper Sec. VI-A, Table I): `volume-<i>.nii` + `segmentation-<i>.nii` (0 background, 1 liver, 2 tumour).

The release splits the pairs over `Training Batch 1/` and `Training Batch 2/`; the reader finds volumes
anywhere under the root, `.nii` or `.nii.gz`, each with the segmentation beside it or, failing that, the
only segmentation of that number under the root (volumes and segmentations kept apart). Every liver tumour is labelled, so
each 3D connected component of label 2 (26-connectivity) is one lesion; its box is the component's
voxel extent [min, max + 1) (docs/artifacts.md).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .common import (DatasetError, DatasetIndex, assign_splits, atomic_write_image, describe_folder, lesions_frame,
                     make_image, read_image, read_image_info, volumes_frame)
from .scans import check_geometry, check_nifti

LESION_TYPE = "4"  # DeepLesion's Coarse_lesion_type code for liver
TUMOUR, LIVER = 2, 1
_VOLUME_RE = re.compile(r"volume-(\d+)\.nii(\.gz)?")
_SEG_RE = re.compile(r"segmentation-(\d+)\.nii(\.gz)?")


# ---------------------------------------------------------------------------------------------- writer
def write_lits_case(root: Path, index: int, hu: np.ndarray, segmentation: np.ndarray, spacing_zyx, origin_xyz,
                    direction=None) -> tuple[Path, Path]:
    """Write `root/volume-<index>.nii` (int16 HU) and `root/segmentation-<index>.nii` (uint8 0/1/2).

    hu, segmentation: [z, y, x] arrays of the same shape; spacing_zyx mm; origin_xyz = world mm of voxel
    (0, 0, 0)'s centre; direction 3x3 row-major (identity if None). Each file is written atomically.
    """
    hu, seg = np.asarray(hu), np.asarray(segmentation)
    if hu.shape != seg.shape:
        raise ValueError(f"volume {hu.shape} and segmentation {seg.shape} shapes differ")
    if not np.isin(np.unique(seg), (0, LIVER, TUMOUR)).all():
        raise ValueError("segmentation labels must be 0 (background), 1 (liver), 2 (tumour)")
    root = Path(root)
    vol_path, seg_path = root / f"volume-{int(index)}.nii", root / f"segmentation-{int(index)}.nii"
    atomic_write_image(make_image(hu.astype(np.int16, copy=False), spacing_zyx, origin_xyz, direction), vol_path)
    atomic_write_image(make_image(seg.astype(np.uint8, copy=False), spacing_zyx, origin_xyz, direction), seg_path)
    return vol_path, seg_path


# ---------------------------------------------------------------------------------------------- reader
def tumour_boxes(seg: np.ndarray) -> list[tuple[list[float], int]]:
    """3D connected components of label 2 -> ([x1, y1, z1, x2, y2, z2], voxel count) each, in component order."""
    labels, n = ndimage.label(seg == TUMOUR, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        z, y, x = sl
        out.append(([float(x.start), float(y.start), float(z.start), float(x.stop), float(y.stop), float(z.stop)],
                    int(counts[k])))
    return out


def _pairs(root: Path) -> list[tuple[int, Path, Path]]:
    """(index, volume, segmentation) for every volume-<i>.nii(.gz) under the root. The segmentation is
    the one beside the volume, else the only segmentation-<i> anywhere under the root (the release's
    halves in two folders, or volumes and segmentations kept in separate folders)."""
    segs: dict[int, list[Path]] = {}
    for p in sorted(root.rglob("segmentation-*.nii*")):
        m = _SEG_RE.fullmatch(p.name)
        if m:
            segs.setdefault(int(m.group(1)), []).append(p)
    out, seen = [], {}
    for p in sorted(root.rglob("volume-*.nii*")):
        m = _VOLUME_RE.fullmatch(p.name)
        if not m:
            continue
        i = int(m.group(1))
        if i in seen:
            raise DatasetError(f"{p}: volume {i} also in {seen[i]}; expected one file per volume")
        seen[i] = p
        beside = [c for c in segs.get(i, []) if c.parent == p.parent]
        cands = beside or segs.get(i, [])
        if not cands:
            raise DatasetError(f"{p}: no segmentation-{i}.nii(.gz) beside it or elsewhere under {root}")
        if len(cands) > 1:
            raise DatasetError(f"{p}: several segmentations of volume {i}: "
                               f"{', '.join(c.relative_to(root).as_posix() for c in cands)}")
        out.append((i, p, cands[0]))
    return out


def check_pair(vol: Path, seg: Path):
    """Volume and segmentation must share their grid: size, spacing, origin and direction (a shifted or
    flipped segmentation would put every tumour box in the wrong place). Both headers are checked
    (pixdim > 0); the segmentation's data too, as it is read here."""
    check_nifti(vol, data=False)
    check_nifti(seg, data=True)
    vi, si = read_image_info(vol), read_image_info(seg)
    if vi.size != si.size:
        raise DatasetError(f"{seg}: shape {si.size} (x, y, z) differs from its volume {vol.name} {vi.size}")
    if not np.allclose(vi.spacing, si.spacing, rtol=1e-3, atol=1e-4):
        raise DatasetError(f"{seg}: spacing {si.spacing} differs from its volume {vol.name} {vi.spacing}")
    tol = 0.01 * min(vi.spacing)   # a hundredth of a voxel: header rounding, never a real shift
    if not np.allclose(vi.origin, si.origin, rtol=0, atol=tol):
        raise DatasetError(f"{seg}: origin {tuple(round(v, 4) for v in si.origin)} mm differs from its volume "
                           f"{vol.name} {tuple(round(v, 4) for v in vi.origin)} mm")
    if not np.allclose(vi.direction, si.direction, rtol=0, atol=1e-3):
        raise DatasetError(f"{seg}: direction {tuple(round(v, 4) for v in si.direction)} differs from its volume "
                           f"{vol.name} {tuple(round(v, 4) for v in vi.direction)}")
    return vi


def read_lits(root: Path, *, split_seed: int = 0, val_fraction: float = 0.2) -> DatasetIndex:
    root = Path(root)
    pairs = _pairs(root)
    if not pairs:
        raise DatasetError(f"{root}: no LiTS volumes found (found: {describe_folder(root)}); expected "
                           f"volume-<i>.nii(.gz) with segmentation-<i>.nii(.gz), in the folder or any folder below "
                           f"it (e.g. 'Training Batch 1/', 'Training Batch 2/')")
    ids = [f"volume-{i}" for i, _, _ in pairs]
    splits = assign_splits(ids, split_seed, val_fraction)
    vols, lesions = [], []
    for (i, vol, seg), vid in zip(pairs, ids):
        info = check_pair(vol, seg)
        nx, ny, nz = info.size
        vols.append({"volume_id": vid, "dataset": "lits", "patient_id": str(i), "study_id": 1, "series_id": 1,
                     "split": splits[vid], "source": vol.relative_to(root).as_posix(), "first_slice": 0,
                     "last_slice": nz - 1, "n_slices": nz, "height": ny, "width": nx,
                     "spacing_x": info.spacing[0], "spacing_y": info.spacing[1], "spacing_z": info.spacing[2]})
        arr = sitk.GetArrayFromImage(read_image(seg))
        bad = np.setdiff1d(np.unique(arr), (0, LIVER, TUMOUR))
        if bad.size:
            raise DatasetError(f"{seg}: labels {bad.tolist()} outside 0 (background), 1 (liver), 2 (tumour)")
        for k, (box, nvox) in enumerate(tumour_boxes(arr), start=1):
            ext_mm = [(box[3 + a] - box[a]) * info.spacing[a] for a in range(3)]
            lesions.append({"volume_id": vid, "lesion_id": f"{vid}/{k:03d}", "kind": "3d", "label_kind": "gt",
                            "lesion_type": LESION_TYPE, **dict(zip(["x1", "y1", "z1", "x2", "y2", "z2"], box)),
                            "size_mm": float(max(ext_mm)),
                            "source_row": f"{seg.relative_to(root).as_posix()}:component{k}"})
    return DatasetIndex(volumes_frame(vols), lesions_frame(lesions))


def load_lits(root: Path, source: str) -> sitk.Image:
    vol = Path(root) / source
    if not vol.is_file():
        raise DatasetError(f"{vol}: missing")
    check_nifti(vol)
    return check_geometry(read_image(vol), vol)
