"""LUNA16 (paper Sec. VI-A, Table I): `subset<k>/<seriesuid>.mhd/.raw` + world-mm nodule annotations.

The scans may also sit directly in the root (subsets merged), or `subset<k>/` one level deeper (as the
zips extract): `find_scans`.

Released layout (also what `LunaWriter` writes):

    <root>/subset<k>/<seriesuid>.mhd + .raw   MetaImage, MET_SHORT (int16 HU), TransformMatrix/Offset/ElementSpacing
    <root>/annotations.csv                    seriesuid,coordX,coordY,coordZ,diameter_mm  (world mm, centre)
    <root>/annotations_excluded.csv           same columns: findings that are neither positive nor negative
    <root>/seriesuids.csv                     one seriesuid a line, no header (the evaluation set)

The CSVs may also sit in `<root>/evaluationScript/annotations/` as in the challenge download.
Boxes: centre = TransformPhysicalPointToContinuousIndex(world) (TransformMatrix flips honoured), box =
centre +- diameter/2 per axis (by that axis' spacing), clipped to the image.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .common import (DatasetError, DatasetIndex, ImageInfo, assign_splits, atomic_write_image, atomic_write_text,
                     centre_box, check_inside, clip_box, describe_folder, lesions_frame, make_image, read_image,
                     read_image_info, volumes_frame)
from .scans import check_geometry, check_metaimage

ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
# The LUNA16 evaluation script (noduleCADEvaluationLUNA16.py) gives excluded findings without a
# measured diameter (-1) a 10 mm diameter; we box them the same way.
EXCLUDED_DEFAULT_DIAMETER_MM = 10.0
LESION_TYPE = "5"  # DeepLesion's Coarse_lesion_type code for lung


# ---------------------------------------------------------------------------------------------- writer
class LunaWriter:
    """Writes a LUNA16-style dataset.

        w = LunaWriter(root)
        w.add_case(subset, seriesuid, hu, spacing_zyx, origin_xyz, direction=None,
                   nodules=[((x, y, z) mm, diameter_mm), ...], excluded=[((x, y, z) mm, diameter_mm or -1), ...])
        w.finish()   # annotations.csv, annotations_excluded.csv, seriesuids.csv (atomic)

    hu: int16 array [z, y, x]; spacing_zyx in mm; origin_xyz = world mm of voxel (0, 0, 0)'s centre;
    direction: 3x3 (row-major 9 floats or array), identity if None; it becomes the MetaImage
    TransformMatrix. Nodule centres are world mm, as in the released annotations.csv.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.annotations: list[tuple] = []
        self.excluded: list[tuple] = []
        self.seriesuids: list[str] = []

    def add_case(self, subset: int, seriesuid: str, hu: np.ndarray, spacing_zyx, origin_xyz, direction=None,
                 nodules=(), excluded=()) -> Path:
        if not UID_RE.fullmatch(seriesuid):
            raise ValueError(f"a LUNA seriesuid is a DICOM UID (digits and dots), got {seriesuid!r}")
        if seriesuid in self.seriesuids:
            raise ValueError(f"seriesuid {seriesuid} written twice")
        path = self.root / f"subset{int(subset)}" / f"{seriesuid}.mhd"
        img = make_image(np.asarray(hu).astype(np.int16, copy=False), spacing_zyx, origin_xyz, direction)
        atomic_write_image(img, path)
        self.seriesuids.append(seriesuid)
        self.annotations += [(seriesuid, *map(float, c), float(d)) for c, d in nodules]
        self.excluded += [(seriesuid, *map(float, c), float(d)) for c, d in excluded]
        return path

    def finish(self) -> None:
        for name, rows in (("annotations.csv", self.annotations), ("annotations_excluded.csv", self.excluded)):
            lines = [",".join(ANNOTATION_COLUMNS)]
            lines += [f"{u},{x:.10g},{y:.10g},{z:.10g},{d:.10g}" for u, x, y, z, d in rows]
            atomic_write_text(self.root / name, "\n".join(lines) + "\n")
        atomic_write_text(self.root / "seriesuids.csv", "".join(f"{u}\n" for u in self.seriesuids))


# ---------------------------------------------------------------------------------------------- reader
def check_raw(mhd: Path) -> None:
    """The .raw a MetaImage header names must hold exactly DimSize * element bytes, and the spacing must
    be positive (scans.check_metaimage)."""
    check_metaimage(mhd)


def find_scans(root: Path) -> dict[str, Path]:
    """seriesuid -> .mhd, in `subset<k>/` folders at any depth (as the challenge's zips extract) or
    directly under the root (all subsets merged). The lung masks (seg-lungs-LUNA16/) share the scans'
    names and are not looked at."""
    root = Path(root)
    mhds = sorted({*root.glob("*.mhd"), *root.rglob("subset*/*.mhd")})
    by_uid: dict[str, Path] = {}
    for p in mhds:
        # a seriesuid is a DICOM UID: digits and dots (a file named `<img src=x onerror=...>.mhd` became an
        # id that reaches tables, logs and the review page)
        if not UID_RE.fullmatch(p.stem):
            raise DatasetError(f"{p}: {p.stem!r} is not a seriesuid (a DICOM UID: digits and dots)")
        if p.stem in by_uid:
            raise DatasetError(f"{p}: seriesuid also in {by_uid[p.stem]}")
        by_uid[p.stem] = p
    return by_uid


def _csv_dir(root: Path) -> Path:
    for d in (root, root / "evaluationScript" / "annotations"):
        if (d / "annotations.csv").is_file():
            return d
    raise DatasetError(f"{root / 'annotations.csv'}: missing (also looked in evaluationScript/annotations/)")


def read_annotation_csv(path: Path, excluded: bool = False) -> list[dict]:
    """Rows of annotations.csv / annotations_excluded.csv, validated, with their line numbers."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ANNOTATION_COLUMNS:
        raise DatasetError(f"{path}:1: header must be {','.join(ANNOTATION_COLUMNS)}")
    out = []
    for line, r in enumerate(rows[1:], start=2):
        if not r or all(not c.strip() for c in r):
            continue
        try:
            if len(r) != 5:
                raise ValueError(f"{len(r)} fields, expected 5")
            uid = r[0].strip()
            if not uid:
                raise ValueError("empty seriesuid")
            xyz = [float(v) for v in r[1:4]]
            d = float(r[4])
            if not np.all(np.isfinite([*xyz, d])):
                raise ValueError("non-finite number")
            if d <= 0 and not excluded:
                raise ValueError(f"diameter_mm must be > 0, got {d}")
        except ValueError as e:
            raise DatasetError(f"{path}:{line}: malformed row {r!r} ({e})") from None
        out.append({"seriesuid": uid, "xyz": xyz, "diameter_mm": d, "source_row": f"{path.name}:{line}",
                    "where": f"{path}:{line}"})
    return out


def read_luna(root: Path, *, split_seed: int = 0, val_fraction: float = 0.2) -> DatasetIndex:
    root = Path(root)
    by_uid = find_scans(root)
    if not by_uid:
        raise DatasetError(f"{root}: no LUNA16 scans found (found: {describe_folder(root)}); expected "
                           f"subset<k>/<seriesuid>.mhd + .raw, or <seriesuid>.mhd + .raw directly in the folder")
    csv_dir = _csv_dir(root)
    uids_file = csv_dir / "seriesuids.csv"
    if uids_file.is_file():  # the evaluation set: every listed scan must be there
        uids = []
        for line, u in enumerate(uids_file.read_text().splitlines(), start=1):
            u = u.strip().split(",")[0]
            if not u:
                continue
            if u not in by_uid:
                raise DatasetError(f"{uids_file}:{line}: series {u} has no {u}.mhd under {root} (looked in "
                                   f"subset<k>/ and the folder itself; found {len(by_uid)} scans)")
            uids.append(u)
    else:
        uids = sorted(by_uid)
    if not uids:
        raise DatasetError(f"{uids_file}: lists no series")
    splits = assign_splits(uids, split_seed, val_fraction)
    infos: dict[str, ImageInfo] = {}
    vols = []
    for u in uids:
        mhd = by_uid[u]
        check_raw(mhd)
        info = infos[u] = read_image_info(mhd)
        nx, ny, nz = info.size
        vols.append({"volume_id": u, "dataset": "luna", "patient_id": u, "study_id": 1, "series_id": 1,
                     "split": splits[u], "source": mhd.relative_to(root).as_posix(), "first_slice": 0,
                     "last_slice": nz - 1, "n_slices": nz, "height": ny, "width": nx,
                     "spacing_x": info.spacing[0], "spacing_y": info.spacing[1], "spacing_z": info.spacing[2]})

    lesions = []
    count: dict[str, int] = {}
    for name, label_kind in (("annotations.csv", "gt"), ("annotations_excluded.csv", "excluded")):
        path = csv_dir / name
        if not path.is_file():
            if label_kind == "gt":
                raise DatasetError(f"{path}: missing")
            continue
        for a in read_annotation_csv(path, excluded=label_kind == "excluded"):
            u = a["seriesuid"]
            if u not in infos:
                raise DatasetError(f"{a['where']}: series {u} is not among the scans under {root}")
            info = infos[u]
            c = info.world_to_box_coords(a["xyz"])
            check_inside(c, info.size, f"{a['where']} (series {u})")
            d = a["diameter_mm"] if a["diameter_mm"] > 0 else EXCLUDED_DEFAULT_DIAMETER_MM
            box = clip_box(centre_box(c, d, info.spacing), info.size)
            k = count[u] = count.get(u, 0) + 1
            lesions.append({"volume_id": u, "lesion_id": f"{u}/{k:03d}", "kind": "3d", "label_kind": label_kind,
                            "lesion_type": LESION_TYPE, **dict(zip(["x1", "y1", "z1", "x2", "y2", "z2"], box)),
                            "size_mm": d, "source_row": a["source_row"]})
    return DatasetIndex(volumes_frame(vols), lesions_frame(lesions))


def load_luna(root: Path, source: str) -> sitk.Image:
    mhd = Path(root) / source
    if not mhd.is_file():
        raise DatasetError(f"{mhd}: missing")
    check_raw(mhd)
    return check_geometry(read_image(mhd), mhd)
