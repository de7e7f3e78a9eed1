"""NIH Lymph Node (paper Sec. VI-A, Table I): a DICOM series per case + point annotations of every node.

Released layout (also what `NihlnWriter` writes):

    <root>/<ID>/**/<slice>.dcm            one CT series per case, ID = MED_LYMPH_### | ABD_LYMPH_###
                                          (TCIA's downloader: <root>/CT Lymph Nodes/<ID>/<study>/<series>/
                                          <any name>.dcm; the series is found at any depth by its GDCM
                                          series id, and the root may also be 'CT Lymph Nodes' itself
                                          with the annotation folder beside it)
    <root>/MED_ABD_LYMPH_ANNOTATIONS/<ID>/<ID>_lymphnodes_indices.txt         "x y z" voxel index a line
    <root>/MED_ABD_LYMPH_ANNOTATIONS/<ID>/<ID>_lymphnodes_physicalPoints.txt  "x y z" mm a line (%g)
    <root>/MED_ABD_LYMPH_ANNOTATIONS/<ID>/<ID>_lymphnodes_physicalPoints.mps  the same points, MITK XML
    <root>/MED_ABD_LYMPH_ANNOTATIONS/<ID>/<ID>_lymphnodes_sizes.txt           OURS (not in the release):
                                                                               node diameter mm a line

Conventions, checked on all 176 released cases (983 nodes; tests/test_readers_nihln.py): the indices are
integer 0-based ITK voxel indices (voxel centres) of the series sorted along +z, and
physical = origin + spacing * index per axis with positive x/y/z spacing (identity direction, LPS world
mm): one axis-aligned affine per case fits every point to < 0.001 mm (the %g print precision), with
x/y spacing 0.63-0.98 mm and z spacing 1-5 mm. The released points are therefore voxel centres.

The reader maps the physical points through the image read by SimpleITK's GDCM series reader
(TransformPhysicalPointToContinuousIndex) and checks the indices agree within one voxel. A node's box is
centre +- diameter/2 with the diameter from the sizes file when present, else `default_diameter_mm`.
Patient-identifying DICOM fields are neither written nor returned (images come back without metadata).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..io import atomic_folder
from .common import (DatasetError, DatasetIndex, ImageInfo, assign_splits, atomic_write_text, centre_box,
                     check_inside, clip_box, describe_folder, fmt_g, lesions_frame, volumes_frame, _first_line)

ANNOTATIONS_DIR = "MED_ABD_LYMPH_ANNOTATIONS"
DEFAULT_DIAMETER_MM = 10.0   # NIH-LN marks nodes of short axis >= ~10 mm; boxes of unsized nodes get this
CASE_RE = re.compile(r"(MED|ABD)_LYMPH_\d{3}")
LESION_TYPE = {"MED": "3", "ABD": "2"}  # DeepLesion Coarse_lesion_type: 3 mediastinum, 2 abdomen
GAP_TOLERANCE = 1.5          # a slice step > 1.5x the median step means a missing slice
UNEVEN_TOLERANCE = 0.1       # any other step more than 10% off the median: not one regular volume


def annotation_paths(ann_dir: Path, case: str) -> dict[str, Path]:
    d = Path(ann_dir) / case
    return {k: d / f"{case}_lymphnodes_{k}" for k in
            ("indices.txt", "physicalPoints.txt", "physicalPoints.mps", "sizes.txt")}


# ---------------------------------------------------------------------------------------------- writer
class NihlnWriter:
    """Writes an NIH-LN-style dataset.

        w = NihlnWriter(root)
        w.add_case(case_id, hu, spacing_zyx, origin_xyz, nodes=[((x, y, z) mm, diameter_mm), ...], direction=None)
        w.finish()   # nothing pending; kept for symmetry with the other writers

    case_id: MED_LYMPH_### or ABD_LYMPH_###; hu int16 [z, y, x]; spacing_zyx mm; origin_xyz = world mm of
    voxel (0, 0, 0)'s centre (= ImagePositionPatient of slice 0); direction 3x3 row-major (identity if
    None; its columns become ImageOrientationPatient and the slice normal). The DICOM series is written one
    slice file at a time with pydicom (CT Image Storage, int16, deterministic UIDs from the case id, no
    patient names/dates/institution). Nodes are written as in the release: the voxel index of the centre
    and that voxel's centre in mm, plus our sizes file (diameter mm).
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def add_case(self, case_id: str, hu: np.ndarray, spacing_zyx, origin_xyz, nodes=(), direction=None) -> Path:
        if not CASE_RE.fullmatch(case_id):
            raise ValueError(f"NIH-LN case ids are MED_LYMPH_### or ABD_LYMPH_###, got {case_id!r}")
        hu = np.asarray(hu)
        if hu.ndim != 3:
            raise ValueError(f"expected hu [z, y, x], got shape {hu.shape}")
        series_dir = write_dicom_series(self.root / case_id, case_id, hu, spacing_zyx, origin_xyz, direction)
        info = ImageInfo((hu.shape[2], hu.shape[1], hu.shape[0]),
                         tuple(float(v) for v in np.asarray(spacing_zyx, float)[::-1]),
                         tuple(float(v) for v in origin_xyz),
                         tuple(np.eye(3).ravel() if direction is None else np.asarray(direction, float).ravel()))
        idx, pts, diam = [], [], []
        for c, d in nodes:
            ijk = np.floor(info.world_to_box_coords(c)).astype(int)  # the voxel holding the centre
            check_inside(ijk + 0.5, info.size, f"{case_id}: node at {list(c)} mm")
            idx.append(ijk)
            pts.append(info.box_coords_to_world(ijk + 0.5))
            diam.append(float(d))
        p = annotation_paths(self.root / ANNOTATIONS_DIR, case_id)
        atomic_write_text(p["indices.txt"], "".join(f"{i} {j} {k}\n" for i, j, k in idx))
        atomic_write_text(p["physicalPoints.txt"], "".join(" ".join(fmt_g(v) for v in q) + "\n" for q in pts))
        atomic_write_text(p["physicalPoints.mps"], _mps(pts))
        atomic_write_text(p["sizes.txt"], "".join(fmt_g(d) + "\n" for d in diam))
        return series_dir

    def finish(self) -> None:
        pass


def _mps(points) -> str:
    """MITK point-set XML, as released beside each physicalPoints.txt."""
    body = "".join(f"      <point>\n        <id>{i}</id>\n        <specification>0</specification>\n"
                   f"        <x>{fmt_g(p[0])}</x>\n        <y>{fmt_g(p[1])}</y>\n        <z>{fmt_g(p[2])}</z>\n"
                   f"      </point>\n" for i, p in enumerate(points))
    return ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<point_set_file>\n  <file_version>0.1</file_version>\n'
            "  <point_set>\n    <time_series>\n      <time_series_id>0</time_series_id>\n" + body +
            "    </time_series>\n  </point_set>\n</point_set_file>\n")


def write_dicom_series(case_dir: Path, case_id: str, hu: np.ndarray, spacing_zyx, origin_xyz,
                       direction=None) -> Path:
    """One CT series, one file per slice, under case_dir/CT/ (built in a temp folder, then renamed)."""
    hu = np.asarray(hu)
    if hu.min(initial=0) < -32768 or hu.max(initial=0) > 32767:
        raise ValueError("HU values outside int16")
    hu = hu.astype("<i2")
    sz, sy, sx = (float(v) for v in spacing_zyx)
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    row_dir, col_dir, normal = d[:, 0], d[:, 1], d[:, 2]
    origin = np.asarray(origin_xyz, float)
    uid = {k: generate_uid(entropy_srcs=["lens-nihln", case_id, k]) for k in ("study", "series", "frame")}
    case_dir = Path(case_dir)
    with atomic_folder(case_dir, marker=False) as tmp:  # inside the corpus folder, which has the marker
        _write_slices(tmp / "CT", case_id, hu, sz, sy, sx, origin, row_dir, col_dir, normal, uid)
    return case_dir / "CT"


def _write_slices(folder: Path, case_id: str, hu: np.ndarray, sz, sy, sx, origin, row_dir, col_dir, normal,
                  uid: dict) -> None:
    folder.mkdir(parents=True)
    for k in range(hu.shape[0]):
        sop = generate_uid(entropy_srcs=["lens-nihln", case_id, "slice", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid["study"], uid["series"], uid["frame"]
        ds.Modality = "CT"
        ds.PatientID = case_id          # the case id only: no names, birth dates, institution
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagesInAcquisition = hu.shape[0]   # lets a reader notice a lost first or last slice
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + normal * sz * k]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]   # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{sz:.6f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = hu[k].tobytes()
        ds.save_as(folder / f"{k + 1:06d}.dcm", enforce_file_format=True)


# ---------------------------------------------------------------------------------------------- reader
def _read_points(path: Path, integer: bool) -> tuple[np.ndarray, list[int]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    pts, lines = [], []
    for line, s in enumerate(text.splitlines(), start=1):
        if not s.strip():
            continue
        parts = s.split()
        try:
            if len(parts) != 3:
                raise ValueError(f"{len(parts)} numbers, expected 3")
            v = [float(p) for p in parts]
            if not np.all(np.isfinite(v)):
                raise ValueError("non-finite number")
            if integer and (any(x != round(x) for x in v) or min(v) < 0):
                raise ValueError("voxel indices must be non-negative integers")
        except ValueError as e:
            raise DatasetError(f"{path}:{line}: malformed line {s!r} ({e})") from None
        pts.append(v)
        lines.append(line)
    return np.asarray(pts, float).reshape(-1, 3), lines


def read_annotations(ann_dir: Path, case: str) -> dict:
    """One case's node annotations: indices [n, 3] (x y z), points [n, 3] (mm), sizes [n] or None, lines."""
    p = annotation_paths(ann_dir, case)
    for k in ("indices.txt", "physicalPoints.txt"):
        if not p[k].is_file():
            raise DatasetError(f"{p[k]}: missing")
    idx, lines = _read_points(p["indices.txt"], integer=True)
    pts, _ = _read_points(p["physicalPoints.txt"], integer=False)
    if len(idx) != len(pts):
        raise DatasetError(f"{p['physicalPoints.txt']}: {len(pts)} points but {p['indices.txt'].name} has {len(idx)}")
    sizes = None
    if p["sizes.txt"].is_file():
        vals = []
        for line, s in enumerate(p["sizes.txt"].read_text().splitlines(), start=1):
            if not s.strip():
                continue
            try:
                v = float(s)
                if not (np.isfinite(v) and v > 0):
                    raise ValueError
            except ValueError:
                raise DatasetError(f"{p['sizes.txt']}:{line}: malformed diameter {s!r} (mm > 0)") from None
            vals.append(v)
        if len(vals) != len(idx):
            raise DatasetError(f"{p['sizes.txt']}: {len(vals)} sizes for {len(idx)} nodes")
        sizes = np.asarray(vals)
    return {"indices": idx, "points": pts, "sizes": sizes, "lines": lines, "paths": p}


def annotation_affine(indices: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis least-squares fit points = origin + spacing * index (NaN where an axis has one value);
    returns (spacing xyz, origin xyz, max |residual| mm xyz). Used to check the release's convention."""
    sp, org, res = np.full(3, np.nan), np.full(3, np.nan), np.zeros(3)
    for a in range(3):
        if np.ptp(indices[:, a]) == 0:
            continue
        A = np.c_[indices[:, a], np.ones(len(indices))]
        coef, *_ = np.linalg.lstsq(A, points[:, a], rcond=None)
        sp[a], org[a] = coef
        res[a] = np.abs(A @ coef - points[:, a]).max()
    return sp, org, res


def find_series_dir(case_dir: Path) -> Path:
    """The folder holding a case's one DICOM series, at any depth below the case folder (the release's
    <case>/<study folder>/<series folder>/, as TCIA's downloader writes it), found by GDCM series ids."""
    found = []
    for d, dirs, files in os.walk(case_dir):
        dirs.sort()
        if files:
            found += [(Path(d), uid) for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(d)]
    if not found:
        raise DatasetError(f"{case_dir}: no DICOM series found at any depth (found: {describe_folder(case_dir)})")
    if len(found) > 1:
        parts = []
        for d, uid in found:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid)
            names = ", ".join(Path(f).relative_to(case_dir).as_posix() for f in files[:3])
            parts.append(f"{len(files)} file{'s' * (len(files) > 1)}: {names}{' ...' if len(files) > 3 else ''}")
        raise DatasetError(f"{case_dir}: {len(found)} DICOM series, expected one ({'; '.join(parts)})")
    return found[0][0]


def find_case_folders(root: Path, skip: Path) -> dict[str, Path]:
    """Case folders (MED_LYMPH_### / ABD_LYMPH_###) in the root or one level below it (TCIA's downloader
    puts them in 'CT Lymph Nodes/'); the annotation folder `skip` is not looked into."""
    root, found = Path(root), {}
    tops = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not CASE_RE.fullmatch(p.name)
                           and p.resolve() != Path(skip).resolve())
    for top in tops:
        for p in sorted(top.iterdir()):
            if p.is_dir() and CASE_RE.fullmatch(p.name):
                if p.name in found:
                    raise DatasetError(f"{p}: case {p.name} also in {found[p.name]}; expected it once")
                found[p.name] = p
    return found


def find_annotations(root: Path) -> Path:
    """MED_ABD_LYMPH_ANNOTATIONS in the root, or beside it when the root is the images folder
    ('CT Lymph Nodes/')."""
    root = Path(root)
    for d in (root / ANNOTATIONS_DIR, root.resolve().parent / ANNOTATIONS_DIR):
        if d.is_dir():
            return d
    raise DatasetError(f"{root / ANNOTATIONS_DIR}: missing (also looked beside {root}); found in {root}: "
                       f"{describe_folder(root)}; expected <root>/{ANNOTATIONS_DIR}/<case>/ beside the case folders "
                       f"<root>/<case>/ or <root>/CT Lymph Nodes/<case>/")


def series_geometry(series_dir: Path) -> tuple[list[str], ImageInfo]:
    """Sorted slice files and the volume geometry from the DICOM headers, after checking that no slice
    is missing: even steps of ImagePositionPatient along the slice normal, InstanceNumber without gaps,
    and, where every slice carries the same ImagesInAcquisition and AcquisitionNumber, that many slices
    (the only trace of a lost first or last slice)."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(series_dir))
    if len(ids) != 1:
        raise DatasetError(f"{series_dir}: {len(ids)} DICOM series, expected exactly one")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_dir), ids[0]))
    hdr = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                "InstanceNumber", "ImagesInAcquisition", "AcquisitionNumber"])
            hdr.append((np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float),
                        np.asarray(ds.PixelSpacing, float), int(ds.Rows), int(ds.Columns),
                        int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
                        int(ds.ImagesInAcquisition) if ds.get("ImagesInAcquisition") is not None else None,
                        str(ds.get("AcquisitionNumber", ""))))
        except (AttributeError, ValueError, TypeError, pydicom.errors.InvalidDicomError) as e:
            raise DatasetError(f"{f}: unreadable or incomplete DICOM header ({_first_line(e)})") from None
    iop = hdr[0][1]
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    z = np.array([h[0] @ normal for h in hdr])
    order = np.argsort(z, kind="stable")
    files = [files[i] for i in order]
    hdr = [hdr[i] for i in order]
    z = z[order]
    for f, h in zip(files, hdr):
        if (h[3], h[4]) != (hdr[0][3], hdr[0][4]) or not np.allclose(h[1], iop, atol=1e-4):
            raise DatasetError(f"{f}: slice size/orientation differs from {files[0]}")
        if not np.allclose(h[2], hdr[0][2], rtol=1e-4):  # one volume has one pixel size
            raise DatasetError(f"{f}: PixelSpacing {h[2].tolist()} mm differs from {Path(files[0]).name}'s "
                               f"{hdr[0][2].tolist()}")
    if len(files) > 1:
        step = np.diff(z)
        med = float(np.median(step))
        if med <= 0:
            raise DatasetError(f"{series_dir}: slices share positions (duplicate ImagePositionPatient)")
        for i in np.flatnonzero((step > GAP_TOLERANCE * med) | (step < med / GAP_TOLERANCE)):
            raise DatasetError(f"{series_dir}: missing slice between {Path(files[i]).name} (z {z[i]:.3f} mm) and "
                               f"{Path(files[i + 1]).name} (z {z[i + 1]:.3f} mm): step {step[i]:.3f} mm, "
                               f"the series' step is {med:.3f} mm")
        # one volume has one slice interval: uneven steps would be resampled at their mean, misplacing slices
        for i in np.flatnonzero(np.abs(step - med) > max(UNEVEN_TOLERANCE * med, 0.01)):
            raise DatasetError(f"{series_dir}: uneven slice spacing at {Path(files[i + 1]).name}: step {step[i]:.3f} mm"
                               f" after {Path(files[i]).name}, the series' step is {med:.3f} mm")
        inst = [h[5] for h in hdr]
        if all(v is not None for v in inst):
            di = np.abs(np.diff(inst))
            for i in np.flatnonzero(di != 1):
                raise DatasetError(f"{series_dir}: InstanceNumber jumps {inst[i]} -> {inst[i + 1]} between "
                                   f"{Path(files[i]).name} and {Path(files[i + 1]).name} (missing slice?)")
        sz = float((z[-1] - z[0]) / (len(z) - 1))
    else:
        sz = 1.0
    # a lost first or last slice leaves even steps and contiguous numbers; the count the scanner wrote
    # into every slice (ImagesInAcquisition, when the series is one acquisition) still tells
    counts = {h[6] for h in hdr}
    if len(counts) == 1 and None not in counts and len({h[7] for h in hdr}) == 1 and counts != {len(files)}:
        n = counts.pop()
        inst = sorted(h[5] for h in hdr if h[5] is not None)
        span = f"; InstanceNumbers {inst[0]}..{inst[-1]}" if inst else ""
        raise DatasetError(f"{series_dir}: {len(files)} slices, but their ImagesInAcquisition says {n}{span} "
                           f"(first or last slice missing?)")
    direction = np.c_[row_dir, col_dir, normal]
    ps = hdr[0][2]
    info = ImageInfo((hdr[0][4], hdr[0][3], len(files)), (float(ps[1]), float(ps[0]), sz),
                     tuple(float(v) for v in hdr[0][0]), tuple(float(v) for v in direction.ravel()))
    return files, info


def read_nihln(root: Path, *, split_seed: int = 0, val_fraction: float = 0.2,
               default_diameter_mm: float = DEFAULT_DIAMETER_MM) -> DatasetIndex:
    root = Path(root)
    ann_dir = find_annotations(root)
    cases = sorted(p.name for p in ann_dir.iterdir() if p.is_dir() and CASE_RE.fullmatch(p.name))
    if not cases:
        raise DatasetError(f"{ann_dir}: no MED_LYMPH_### / ABD_LYMPH_### folders (found: {describe_folder(ann_dir)})")
    case_dirs = find_case_folders(root, ann_dir)
    splits = assign_splits(cases, split_seed, val_fraction)
    vols, lesions = [], []
    for case in cases:
        if case not in case_dirs:
            raise DatasetError(f"{root / case}: the images of annotated case {case} are missing; looked for "
                               f"<root>/{case}/ and <root>/*/{case}/ (e.g. CT Lymph Nodes/{case}/), found "
                               f"{len(case_dirs)} case folders"
                               f"{': ' + ', '.join(sorted(case_dirs)[:5]) if case_dirs else ''}"
                               f"{' ...' if len(case_dirs) > 5 else ''}")
        series_dir = find_series_dir(case_dirs[case])
        _, info = series_geometry(series_dir)
        a = read_annotations(ann_dir, case)
        nx, ny, nz = info.size
        vols.append({"volume_id": case, "dataset": "nihln", "patient_id": case, "study_id": 1, "series_id": 1,
                     # the case folder, not the series folder: TCIA's study and series folder names hold the
                     # study date and description (identifiers), which must not reach an artifact
                     "split": splits[case], "source": case_dirs[case].relative_to(root).as_posix(), "first_slice": 0,
                     "last_slice": nz - 1, "n_slices": nz, "height": ny, "width": nx,
                     "spacing_x": info.spacing[0], "spacing_y": info.spacing[1], "spacing_z": info.spacing[2]})
        for k, (ijk, pt, line) in enumerate(zip(a["indices"], a["points"], a["lines"]), start=1):
            where = f"{a['paths']['physicalPoints.txt']}:{line}"
            c = info.world_to_box_coords(pt)
            check_inside(c, info.size, where)
            if np.any(np.abs(c - (ijk + 0.5)) > 1.01):
                raise DatasetError(f"{where}: point {pt.tolist()} mm maps to voxel {np.round(c - 0.5, 2).tolist()} "
                                   f"but {a['paths']['indices.txt'].name}:{line} says {ijk.astype(int).tolist()}")
            d = float(a["sizes"][k - 1]) if a["sizes"] is not None else float(default_diameter_mm)
            box = clip_box(centre_box(c, d, info.spacing), info.size)
            lesions.append({"volume_id": case, "lesion_id": f"{case}/{k:03d}", "kind": "3d", "label_kind": "gt",
                            "lesion_type": LESION_TYPE[case[:3]], **dict(zip(["x1", "y1", "z1", "x2", "y2", "z2"], box)),
                            "size_mm": d, "source_row": f"{case}_lymphnodes_physicalPoints.txt:{line}"})
    return DatasetIndex(volumes_frame(vols), lesions_frame(lesions))


def load_nihln(root: Path, source: str) -> sitk.Image:
    """The scan of a volumes table row: ``source`` is its case folder; the one series is found below it."""
    case_dir = Path(root) / source
    if not case_dir.is_dir():
        raise DatasetError(f"{case_dir}: missing")
    return read_dicom_series(find_series_dir(case_dir))


def read_dicom_series(series_dir: Path) -> sitk.Image:
    """The one DICOM series in a folder, after series_geometry's checks, without metadata."""
    files, info = series_geometry(series_dir)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)
    r.MetaDataDictionaryArrayUpdateOff()
    try:
        img = r.Execute()
    except RuntimeError as e:
        raise DatasetError(f"{series_dir}: cannot read the DICOM series ({_first_line(e)})") from None
    for k in img.GetMetaDataKeys():   # never hand patient fields on
        img.EraseMetaData(k)
    if not np.allclose(img.GetOrigin(), info.origin, atol=1e-3) or \
            not np.allclose(img.GetSpacing(), info.spacing, rtol=1e-3):
        raise DatasetError(f"{series_dir}: SimpleITK geometry {img.GetOrigin()}/{img.GetSpacing()} disagrees with "
                           f"the headers {info.origin}/{info.spacing}")
    return img
