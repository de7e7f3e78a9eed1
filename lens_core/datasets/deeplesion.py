"""DeepLesion (paper Sec. VI-A, Table I): 16-bit PNG slices + `DL_info.csv`, plus the manual 3D test set.

Released layout (also what `DeepLesionWriter` writes):

    <root>/Images_png/<PPPPPP>_<SS>_<ss>/<NNN>.png   uint16 PNG, value = HU + 32768; NNN = slice number
    <root>/DL_info.csv                               one row per RECIST-marked lesion (18 columns, below)
    <root>/manual_3d/boxes.csv, subvolumes.csv       the paper's fully annotated 3D test sub-volumes
                                                     (format of the released conversion, see read_manual_3d)

The release ships Images_png as 56 zip parts, each holding Images_png/<series>/; extracted, the series
folders often sit one level deeper (Images_png/Images_png/<series>/ or Images_png_01/Images_png/<series>/).
The reader finds them at either depth (`find_series_folders`). Slices must be 16-bit grayscale PNGs
(scans.read_png_slice): an 8-bit PNG would read as an all-negative volume.

DL_info.csv conventions (checked on real rows, /work/shared/real/deeplesion-dlinfo-sample):
pixel coordinates are 1-based with pixel centres on integers; `Measurement_coordinates` = RECIST long-axis
end points (x, y, x, y) then short-axis end points; `Bounding_boxes` = their extent +- 5 px;
`Lesion_diameters_Pixel_` = long, short axis lengths; `Spacing_mm_px_` = x, y spacing, slice interval;
`Slice_range` = first, last PNG number released around the key slice; `Train_Val_Test` 1/2/3;
`Coarse_lesion_type` 1..8 (val/test), -1 (train: unknown). Numbers print as C's %g; list fields are
quoted ("a, b"). We read `Image_size` as (rows, cols), MATLAB's size(); all real images are square.

A series folder may hold several disjoint slice runs (one per released Slice_range, merged where they
overlap); each contiguous run is one volume `{PPPPPP_SS_ss}_{first:03d}-{last:03d}` with z = 0 at its first
PNG, the naming of the manual 3D sub-volumes.
"""
from __future__ import annotations

import csv
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image

from ..io import atomic_path
from .common import DatasetError, DatasetIndex, atomic_write_text, check_inside, clip_box, describe_folder, fmt_g, \
    lesions_frame, volumes_frame, _first_line
from .scans import HU_OFFSET, _runs, png_numbers, png_volume  # noqa: F401  (HU_OFFSET: the writer's too)

DL_INFO_COLUMNS = ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
                   "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
                   "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
                   "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
                   "Train_Val_Test"]
SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
SPLIT_NAME = {v: k for k, v in SPLIT_CODE.items()}
RECIST_PAD_PX = 5          # Bounding_boxes = RECIST extent +- 5 px
MANUAL3D_DIR = "manual_3d"
IMAGES_DIR = "Images_png"
_FILE_RE = re.compile(r"(\d{6})_(\d{2})_(\d{2})_(\d{3,})\.png$")
_FOLDER_RE = re.compile(r"\d{6}_\d{2}_\d{2}$")


def folder_name(patient: int, study: int, series: int) -> str:
    return f"{int(patient):06d}_{int(study):02d}_{int(series):02d}"


def volume_name(folder: str, first: int, last: int) -> str:
    return f"{folder}_{int(first):03d}-{int(last):03d}"


# ---------------------------------------------------------------------------------------------- writer
class DeepLesionWriter:
    """Writes a DeepLesion-style dataset.

        w = DeepLesionWriter(root)
        w.write_volume(patient, study, series, first_slice, hu)        # hu int16 [z, y, x] -> PNGs first_slice..
        w.add_lesion(patient=, study=, series=, key_slice=, recist=, lesion_type=, split=, slice_range=,
                     spacing=, image_shape=, window=(-175, 275), gender="M", age=60, noisy=0,
                     normalized_location=None)
        w.add_subvolume(split, patient, study, series, first_slice, last_slice, boxes)   # manual 3D test set
        w.finish()   # DL_info.csv (+ manual_3d/boxes.csv, subvolumes.csv), atomically

    Coordinates handed in are the project's (continuous, 0-based, pixel i spans [i, i+1)):
    recist = 8 floats: long-axis end points x, y, x, y then short-axis end points x, y, x, y;
    key_slice / slice_range / first_slice / last_slice are PNG numbers; spacing = (x mm, y mm, slice
    interval mm); image_shape = (height, width); split 'train'|'val'|'test'; lesion_type = Coarse_lesion_type
    code (1..8, -1 unknown). Sub-volume boxes: [x1, y1, z1, x2, y2, z2] with z relative to first_slice,
    exclusive upper bounds; written as the released inclusive integer pixel extents (a pixel is in when its
    centre is inside the box). `write_dl_info(root, df)` writes DL_info.csv from a DataFrame whose columns
    are add_lesion's keyword arguments.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lesions: list[dict] = []
        self.subvolumes: list[dict] = []

    def write_volume(self, patient: int, study: int, series: int, first_slice: int, hu: np.ndarray) -> Path:
        return write_volume(self.root, patient, study, series, first_slice, hu)

    def add_lesion(self, **kw) -> None:
        self.lesions.append(kw)

    def add_subvolume(self, split: str, patient: int, study: int, series: int, first_slice: int, last_slice: int,
                      boxes) -> None:
        self.subvolumes.append({"split": split, "volume": folder_name(patient, study, series),
                                "first_slice": int(first_slice), "last_slice": int(last_slice),
                                "boxes": [list(map(float, b)) for b in boxes]})

    def finish(self) -> None:
        write_dl_info(self.root, pd.DataFrame(self.lesions))
        if self.subvolumes:
            write_manual_3d(self.root / MANUAL3D_DIR, self.subvolumes)


def write_volume(root: Path, patient: int, study: int, series: int, first_slice: int, hu: np.ndarray) -> Path:
    """Slices hu[k] -> Images_png/<PPPPPP_SS_ss>/<first_slice + k:03d>.png (uint16 = HU + 32768)."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected hu [z, y, x], got shape {hu.shape}")
    folder = Path(root) / "Images_png" / folder_name(patient, study, series)
    folder.mkdir(parents=True, exist_ok=True)
    png = (np.clip(hu.astype(np.int32), -HU_OFFSET, 65535 - HU_OFFSET) + HU_OFFSET).astype(np.uint16)
    for k in range(png.shape[0]):
        with atomic_path(folder / f"{int(first_slice) + k:03d}.png") as tmp:
            Image.fromarray(png[k]).save(tmp, format="PNG", compress_level=1)
    return folder


def _q(values) -> str:
    return ", ".join(fmt_g(v) for v in values)


def write_dl_info(root: Path, df: pd.DataFrame) -> Path:
    """DataFrame of semantic columns (see DeepLesionWriter) -> <root>/DL_info.csv with the 18 real columns."""
    rows = []
    for _, r in df.iterrows():
        rec = np.asarray(r["recist"], float).reshape(4, 2) + 0.5   # project coords -> 1-based, centres on integers
        h, w = (int(v) for v in r["image_shape"])
        long_px = float(np.linalg.norm(rec[0] - rec[1]))
        short_px = float(np.linalg.norm(rec[2] - rec[3]))
        lo, hi = rec.min(0) - RECIST_PAD_PX, rec.max(0) + RECIST_PAD_PX
        loc = r.get("normalized_location")
        if loc is None or (np.isscalar(loc) and pd.isna(loc)):
            c = rec.mean(0)
            loc = (c[0] / w, c[1] / h, 0.5)
        age = r.get("age")
        rows.append({
            "File_name": f"{folder_name(r['patient'], r['study'], r['series'])}_{int(r['key_slice']):03d}.png",
            "Patient_index": int(r["patient"]), "Study_index": int(r["study"]), "Series_ID": int(r["series"]),
            "Key_slice_index": int(r["key_slice"]),
            "Measurement_coordinates": _q(rec.ravel()), "Bounding_boxes": _q([lo[0], lo[1], hi[0], hi[1]]),
            "Lesion_diameters_Pixel_": _q([long_px, short_px]), "Normalized_lesion_location": _q(loc),
            "Coarse_lesion_type": int(r["lesion_type"]), "Possibly_noisy": int(r.get("noisy", 0) or 0),
            "Slice_range": _q(r["slice_range"]), "Spacing_mm_px_": _q(r["spacing"]), "Image_size": _q((h, w)),
            "DICOM_windows": _q(r.get("window", (-175, 275)) if r.get("window") is not None else (-175, 275)),
            "Patient_gender": r.get("gender", "M") or "",
            "Patient_age": "" if age is None or pd.isna(age) else int(age),
            "Train_Val_Test": SPLIT_CODE[r["split"]]})
    rows.sort(key=lambda d: d["File_name"])  # the release is sorted by file name
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=DL_INFO_COLUMNS, lineterminator="\n")  # minimal quoting, as released
    wr.writeheader()
    wr.writerows(rows)
    path = Path(root) / "DL_info.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def write_manual_3d(folder: Path, subvolumes: list[dict]) -> None:
    """subvolumes: dicts split, volume (folder name), first_slice, last_slice, boxes (project coords, z relative
    to first_slice) -> boxes.csv + subvolumes.csv in the released conversion's format."""
    box_lines = ["split,subvolume,volume,first_slice,last_slice,x1,y1,z1,x2,y2,z2"]
    sub_lines = ["split,subvolume,volume,first_slice,last_slice,n_boxes"]
    for s in subvolumes:
        name = volume_name(s["volume"], s["first_slice"], s["last_slice"])
        head = f"{s['split']},{name},{s['volume']},{s['first_slice']},{s['last_slice']}"
        for b in s["boxes"]:
            lo = [_covered_lo(v) for v in b[:3]]
            hi = [max(_covered_hi(b[3 + a]), lo[a]) for a in range(3)]
            lo[2] += s["first_slice"]
            hi[2] += s["first_slice"]
            box_lines.append(f"{head},{lo[0]},{lo[1]},{lo[2]},{hi[0]},{hi[1]},{hi[2]}")
        sub_lines.append(f"{head},{len(s['boxes'])}")
    atomic_write_text(Path(folder) / "boxes.csv", "\n".join(box_lines) + "\n")
    atomic_write_text(Path(folder) / "subvolumes.csv", "\n".join(sub_lines) + "\n")


def _covered_lo(v: float) -> int:   # first pixel whose centre (i + 0.5) is >= v
    return int(np.ceil(v - 0.5))


def _covered_hi(v: float) -> int:   # last pixel whose centre is <= v (inclusive index)
    return int(np.floor(v - 0.5))


# ---------------------------------------------------------------------------------------------- reader
def _floats(text: str, n: int, col: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"column {col}: {text!r} is not a list of numbers") from None
    if len(vals) != n:
        raise ValueError(f"column {col}: expected {n} numbers, got {len(vals)} ({text!r})")
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"column {col}: non-finite number in {text!r}")
    return vals


def _int(text: str, col: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"column {col}: {text!r} is not an integer") from None


def parse_dl_info(path: Path) -> list[dict]:
    """Validated rows of DL_info.csv, each with its line number; DatasetError naming file:line otherwise."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != DL_INFO_COLUMNS:
        raise DatasetError(f"{path}:1: header is not DeepLesion's 18 DL_info.csv columns")
    out = []
    for r in reader:
        line = reader.line_num
        if not r or all(not c.strip() for c in r):
            continue
        try:
            if len(r) != len(DL_INFO_COLUMNS):
                raise ValueError(f"{len(r)} fields, expected {len(DL_INFO_COLUMNS)}")
            d = dict(zip(DL_INFO_COLUMNS, r))
            m = _FILE_RE.fullmatch(d["File_name"].strip())
            if not m:
                raise ValueError(f"File_name {d['File_name']!r} is not PPPPPP_SS_ss_NNN.png")
            rec = {"patient": _int(d["Patient_index"], "Patient_index"), "study": _int(d["Study_index"], "Study_index"),
                   "series": _int(d["Series_ID"], "Series_ID"), "key": _int(d["Key_slice_index"], "Key_slice_index")}
            if [int(g) for g in m.groups()] != [rec["patient"], rec["study"], rec["series"], rec["key"]]:
                raise ValueError(f"File_name {d['File_name']} disagrees with Patient_index/Study_index/Series_ID/"
                                 f"Key_slice_index {rec['patient']}/{rec['study']}/{rec['series']}/{rec['key']}")
            rec["recist"] = _floats(d["Measurement_coordinates"], 8, "Measurement_coordinates")
            rec["bbox"] = _floats(d["Bounding_boxes"], 4, "Bounding_boxes")
            if not (rec["bbox"][0] < rec["bbox"][2] and rec["bbox"][1] < rec["bbox"][3]):
                raise ValueError(f"column Bounding_boxes: empty box {d['Bounding_boxes']!r}")
            rec["diameters"] = _floats(d["Lesion_diameters_Pixel_"], 2, "Lesion_diameters_Pixel_")
            rec["type"] = _int(d["Coarse_lesion_type"], "Coarse_lesion_type")
            if rec["type"] not in (-1, *range(1, 9)):
                raise ValueError(f"column Coarse_lesion_type: {rec['type']} not in -1, 1..8")
            first, last = (int(v) for v in _floats(d["Slice_range"], 2, "Slice_range"))
            if not first <= rec["key"] <= last:
                raise ValueError(f"column Slice_range: key slice {rec['key']} outside {first}..{last}")
            rec["slice_range"] = (first, last)
            rec["spacing"] = _floats(d["Spacing_mm_px_"], 3, "Spacing_mm_px_")
            if min(rec["spacing"]) <= 0:
                raise ValueError(f"column Spacing_mm_px_: non-positive spacing {d['Spacing_mm_px_']!r}")
            rec["image_size"] = [int(v) for v in _floats(d["Image_size"], 2, "Image_size")]
            _check_bbox(rec)
            tvt = _int(d["Train_Val_Test"], "Train_Val_Test")
            if tvt not in SPLIT_NAME:
                raise ValueError(f"column Train_Val_Test: {tvt} not in 1, 2, 3")
            rec["split"] = SPLIT_NAME[tvt]
        except ValueError as e:
            raise DatasetError(f"{path}:{line}: malformed row ({e})") from None
        rec["line"] = line
        out.append(rec)
    if not out:
        raise DatasetError(f"{path}: no lesion rows after the header; expected one row per RECIST-marked lesion")
    return out


def _check_bbox(rec: dict) -> None:
    """The released Bounding_boxes are the RECIST end points' extent +- 5 px (1-based, pixel centres on
    integers): they enclose the end points and reach past the image (pixels 0.5..size + 0.5) by at most
    that margin. A box that does neither belongs to another image or row; clipping would hide that."""
    h, w = rec["image_size"]
    x1, y1, x2, y2 = rec["bbox"]
    tol = 0.01  # the %g print precision
    pts = np.asarray(rec["recist"]).reshape(4, 2)
    if (pts < 0.5).any() or (pts > np.array([w, h]) + 0.5).any():
        return  # end points outside the image: read_deeplesion names those (Measurement_coordinates)
    lo, hi = 0.5 - RECIST_PAD_PX - tol, np.array([w, h]) + 0.5 + RECIST_PAD_PX + tol
    if x1 < lo or y1 < lo or x2 > hi[0] or y2 > hi[1]:
        raise ValueError(f"column Bounding_boxes: {fmt_g(x1)}, {fmt_g(y1)}, {fmt_g(x2)}, {fmt_g(y2)} lies outside "
                         f"the {w}x{h} image (Image_size) by more than the released {RECIST_PAD_PX} px margin")
    if (pts.min(0) < np.array([x1, y1]) - tol).any() or (pts.max(0) > np.array([x2, y2]) + tol).any():
        raise ValueError(f"column Bounding_boxes: {fmt_g(x1)}, {fmt_g(y1)}, {fmt_g(x2)}, {fmt_g(y2)} does not "
                         f"enclose the Measurement_coordinates")


def read_manual_3d(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The manual 3D test set (boxes.csv, subvolumes.csv) in project coordinates.

    Released: inclusive 0-based pixel extents, z = slice number (PNG name). Returned boxes: x1, y1 as is,
    x2 = X2 + 1, y2 = Y2 + 1, z1 = Z1 - first_slice, z2 = Z2 - first_slice + 1 (z relative to the
    sub-volume's first slice), plus subvolume, volume (folder), split, first_slice, source_row.
    """
    folder = Path(folder)
    bpath, spath = folder / "boxes.csv", folder / "subvolumes.csv"
    try:
        boxes = pd.read_csv(bpath, dtype={"subvolume": str, "volume": str, "split": str})
        subs = pd.read_csv(spath, dtype={"subvolume": str, "volume": str, "split": str})
    except (OSError, pd.errors.ParserError, ValueError) as e:
        raise DatasetError(f"{folder}: cannot read the manual 3D test set ({_first_line(e)})") from None
    need_b = ["split", "subvolume", "volume", "first_slice", "last_slice", "x1", "y1", "z1", "x2", "y2", "z2"]
    need_s = ["split", "subvolume", "volume", "first_slice", "last_slice", "n_boxes"]
    for p, df, need in ((bpath, boxes, need_b), (spath, subs, need_s)):
        if list(df.columns) != need:
            raise DatasetError(f"{p}:1: header must be {','.join(need)}")
    for p, df, cols in ((bpath, boxes, need_b[3:]), (spath, subs, need_s[3:])):
        bad = df[cols].isna().any(axis=1) | ~df[cols].apply(pd.to_numeric, errors="coerce").notna().all(axis=1)
        if bad.any():
            raise DatasetError(f"{p}:{int(np.flatnonzero(bad)[0]) + 2}: malformed row (missing or non-numeric value)")
    subs = subs.astype({c: "int64" for c in need_s[3:]})
    boxes = boxes.astype({c: "int64" for c in need_b[3:]})
    line = np.arange(len(boxes)) + 2
    bad = ((boxes.x2 < boxes.x1) | (boxes.y2 < boxes.y1) | (boxes.z2 < boxes.z1) | (boxes.z1 < boxes.first_slice)
           | (boxes.z2 > boxes.last_slice) | (boxes[["x1", "y1"]] < 0).any(axis=1)).to_numpy()
    if bad.any():
        raise DatasetError(f"{bpath}:{int(line[bad][0])}: box outside its sub-volume or inverted")
    for p, df in ((bpath, boxes), (spath, subs)):
        name = df.volume + "_" + df.first_slice.map("{:03d}".format) + "-" + df.last_slice.map("{:03d}".format)
        wrong = (name != df.subvolume).to_numpy()
        if wrong.any():
            raise DatasetError(f"{p}:{int(np.flatnonzero(wrong)[0]) + 2}: subvolume name is not "
                               f"volume_first-last")
    if not subs.subvolume.is_unique:
        raise DatasetError(f"{spath}: a sub-volume is listed twice")
    counts = boxes.groupby("subvolume").size()
    n = subs.subvolume.map(counts).fillna(0).astype(int)
    wrong = (n != subs.n_boxes).to_numpy()
    if wrong.any():
        raise DatasetError(f"{spath}:{int(np.flatnonzero(wrong)[0]) + 2}: n_boxes disagrees with boxes.csv")
    missing = ~boxes.subvolume.isin(subs.subvolume)
    if missing.any():
        raise DatasetError(f"{bpath}:{int(line[missing.to_numpy()][0])}: sub-volume not in subvolumes.csv")
    out = pd.DataFrame({"subvolume": boxes.subvolume, "volume": boxes.volume, "split": boxes.split,
                        "first_slice": boxes.first_slice, "last_slice": boxes.last_slice,
                        "x1": boxes.x1.astype(float), "y1": boxes.y1.astype(float),
                        "z1": (boxes.z1 - boxes.first_slice).astype(float),
                        "x2": (boxes.x2 + 1).astype(float), "y2": (boxes.y2 + 1).astype(float),
                        "z2": (boxes.z2 - boxes.first_slice + 1).astype(float),
                        "source_row": [f"boxes.csv:{i}" for i in line]})
    return out, subs


def read_deeplesion(root: Path, box_pad_px: float = RECIST_PAD_PX) -> DatasetIndex:
    """Index a DeepLesion folder. Key-slice boxes are the released `Bounding_boxes` (the RECIST end points'
    extent +- 5 px) when `box_pad_px` is 5, else that extent +- `box_pad_px` original pixels: 5 px is
    about 4 mm at DeepLesion's ~0.8 mm pixels but 11 mm at the built-in corpus's coarse ones, larger
    than most of its lesions, so the pipeline's config chooses the margin."""
    root = Path(root)
    info_path = root / "DL_info.csv"
    if not info_path.is_file():
        raise DatasetError(f"{info_path}: missing")
    rows = parse_dl_info(info_path)
    series_dirs = find_series_folders(root)
    images = root / IMAGES_DIR
    # slices present on disk, per series folder
    on_disk: dict[str, dict[int, Path]] = {name: png_numbers(d) for name, d in series_dirs.items()}

    # every PNG of every row's Slice_range must be there (and not empty)
    for r in rows:
        folder = folder_name(r["patient"], r["study"], r["series"])
        if folder not in series_dirs:
            raise DatasetError(f"{info_path}:{r['line']}: series folder {folder} is not under {root} (found "
                               f"{len(series_dirs)} series folders, e.g. "
                               f"{', '.join(d.relative_to(root).as_posix() for d in list(series_dirs.values())[:3])})")
        files = on_disk[folder]
        for n in range(r["slice_range"][0], r["slice_range"][1] + 1):
            f = files.get(n)
            if f is None:
                raise DatasetError(f"{series_dirs[folder] / f'{n:03d}.png'}: missing, but inside Slice_range "
                                   f"{r['slice_range'][0]}, {r['slice_range'][1]} of {info_path}:{r['line']}")
            if f.stat().st_size == 0:
                raise DatasetError(f"{f}: empty PNG (inside Slice_range of {info_path}:{r['line']})")

    run_of: dict[tuple[str, int], tuple[int, int]] = {}
    for folder, files in on_disk.items():
        for run in _runs(list(files)):
            for n in range(run[0], run[1] + 1):
                run_of[(folder, n)] = run

    # volume attributes from the rows that touch each run (spacing / split / size live in DL_info only)
    by_run: dict[tuple[str, tuple[int, int]], list[dict]] = {}
    by_folder: dict[str, list[dict]] = {}
    by_patient: dict[int, list[dict]] = {}
    for r in rows:
        folder = folder_name(r["patient"], r["study"], r["series"])
        by_run.setdefault((folder, run_of[(folder, r["key"])]), []).append(r)
        by_folder.setdefault(folder, []).append(r)
        by_patient.setdefault(r["patient"], []).append(r)

    vols, lesions, vol_of, skipped = [], [], {}, []
    for folder, files in on_disk.items():
        p, s, se = (int(v) for v in folder.split("_"))
        for run in _runs(list(files)):
            rr = by_run.get((folder, run)) or by_folder.get(folder) or []
            if not rr:  # DeepLesion only releases slices around marked lesions; spacing lives in DL_info.csv
                skipped.append(f"{folder}/{run[0]:03d}-{run[1]:03d}")
                continue
            ref = rr[0]
            for r in rr[1:]:
                if not np.allclose(r["spacing"], ref["spacing"], rtol=1e-4) or r["image_size"] != ref["image_size"]:
                    raise DatasetError(f"{info_path}:{r['line']}: spacing/image size disagree with "
                                       f"{info_path}:{ref['line']} for the same series {folder}")
            splits = {r["split"] for r in (by_patient.get(p) or rr)}
            if len(splits) != 1:
                raise DatasetError(f"{info_path}: patient {p} has rows in several splits {sorted(splits)}")
            vid = volume_name(folder, *run)
            vol_of[(folder, run)] = vid
            h, w = ref["image_size"]
            vols.append({"volume_id": vid, "dataset": "deeplesion", "patient_id": f"{p:06d}", "study_id": s,
                         "series_id": se, "split": splits.pop(),
                         "source": series_dirs[folder].relative_to(root).as_posix(),
                         "first_slice": run[0], "last_slice": run[1], "n_slices": run[1] - run[0] + 1,
                         "height": h, "width": w, "spacing_x": ref["spacing"][0], "spacing_y": ref["spacing"][1],
                         "spacing_z": ref["spacing"][2]})

    count: dict[str, int] = {}
    for r in rows:
        folder = folder_name(r["patient"], r["study"], r["series"])
        run = run_of[(folder, r["key"])]
        vid = vol_of[(folder, run)]
        h, w = r["image_size"]
        where = f"{info_path}:{r['line']}"
        nz = run[1] - run[0] + 1
        z = r["key"] - run[0]
        for pt in np.asarray(r["recist"]).reshape(4, 2) - 0.5:  # 1-based, centres on integers -> project coords
            check_inside([pt[0], pt[1], z + 0.5], [w, h, nz], f"{where} (Measurement_coordinates)")
        if box_pad_px == RECIST_PAD_PX:  # the released Bounding_boxes as they are
            x1, y1, x2, y2 = r["bbox"]
        else:  # the RECIST end points' extent with another margin (see read_deeplesion's docstring)
            pts = np.asarray(r["recist"]).reshape(4, 2)
            x1, y1 = pts.min(0) - box_pad_px
            x2, y2 = pts.max(0) + box_pad_px
        box = clip_box([x1 - 1, y1 - 1, z, x2, y2, z + 1], [w, h, nz])  # docs/artifacts.md: x1 = X1 - 1, x2 = X2
        k = count[vid] = count.get(vid, 0) + 1
        lesions.append({"volume_id": vid, "lesion_id": f"{vid}/{k:03d}", "kind": "2d", "label_kind": "gt",
                        "lesion_type": "unknown" if r["type"] == -1 else str(r["type"]),
                        **dict(zip(["x1", "y1", "z1", "x2", "y2", "z2"], box)),
                        "size_mm": r["diameters"][0] * r["spacing"][0], "source_row": f"DL_info.csv:{r['line']}"})
    if skipped:
        warnings.warn(f"{images}: {len(skipped)} slice runs without any DL_info.csv row in their series are "
                      f"skipped (spacing unknown): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
                      stacklevel=2)
    volumes = volumes_frame(vols)

    test3d = subvols = None
    if (root / MANUAL3D_DIR).is_dir():
        test3d, subvols = _map_manual_3d(root, volumes, run_of, vol_of)
    return DatasetIndex(volumes, lesions_frame(lesions), test3d, subvols)


def _map_manual_3d(root: Path, volumes: pd.DataFrame, run_of: dict, vol_of: dict):
    """Manual 3D sub-volumes -> the on-disk run (volume) holding them; z relative to that run."""
    folder3d = root / MANUAL3D_DIR
    boxes, subs = read_manual_3d(folder3d)
    size = volumes.set_index("volume_id")[["width", "height", "n_slices"]]
    rows, offset = [], {}
    for i, s in enumerate(subs.itertuples(index=False), start=2):
        run = run_of.get((s.volume, s.first_slice))
        if run is None or run_of.get((s.volume, s.last_slice)) != run:
            raise DatasetError(f"{folder3d / 'subvolumes.csv'}:{i}: slices {s.first_slice}..{s.last_slice} of "
                               f"{s.volume} are not one contiguous run under Images_png/")
        vid = vol_of[(s.volume, run)]
        offset[s.subvolume] = (vid, s.first_slice - run[0])
        rows.append({"subvolume": s.subvolume, "volume_id": vid, "split": s.split, "first_slice": s.first_slice,
                     "last_slice": s.last_slice, "z_offset": run[0], "n_boxes": s.n_boxes})
    subvols = pd.DataFrame(rows, columns=["subvolume", "volume_id", "split", "first_slice", "last_slice",
                                          "z_offset", "n_boxes"])
    vid = boxes.subvolume.map(lambda n: offset[n][0])
    dz = boxes.subvolume.map(lambda n: offset[n][1]).astype(float)
    test3d = pd.DataFrame({"subvolume": boxes.subvolume, "volume_id": vid, "x1": boxes.x1, "y1": boxes.y1,
                           "z1": boxes.z1 + dz, "x2": boxes.x2, "y2": boxes.y2, "z2": boxes.z2 + dz,
                           "source_row": boxes.source_row})
    w = vid.map(size["width"]).to_numpy()
    h = vid.map(size["height"]).to_numpy()
    out = (test3d.x2.to_numpy() > w) | (test3d.y2.to_numpy() > h)
    if out.any():
        raise DatasetError(f"{folder3d / test3d.source_row[out].iloc[0]}: box outside the {w[out][0]}x{h[out][0]} image")
    return test3d.reset_index(drop=True), subvols


def load_deeplesion(root: Path, row) -> sitk.Image:
    """The run's PNGs as one int16 HU volume (spacing from DL_info; z = 0 at the run's first PNG)."""
    folder = Path(root) / row["source"]
    first, last = int(row["first_slice"]), int(row["last_slice"])
    return png_volume([folder / f"{n:03d}.png" for n in range(first, last + 1)],
                      (row["spacing_x"], row["spacing_y"], row["spacing_z"]), first,
                      (int(row["height"]), int(row["width"])))


def find_series_folders(root: Path) -> dict[str, Path]:
    """Series folders (PPPPPP_SS_ss) under `root`, below a folder named Images_png*: as released
    (Images_png/<series>/) or one level deeper, as the 56 zip parts extract (Images_png/Images_png/<series>/,
    Images_png_01/Images_png/<series>/). A series found twice is refused."""
    root = Path(root)
    found: dict[str, Path] = {}
    for d, dirs, _ in os.walk(root):
        rel = Path(d).relative_to(root).parts
        keep = []
        for name in sorted(dirs):
            if _FOLDER_RE.fullmatch(name):
                if any(p.startswith(IMAGES_DIR) for p in rel):
                    path = Path(d) / name
                    if name in found:
                        raise DatasetError(f"{path}: series {name} also in {found[name]}; expected it once")
                    found[name] = path
            elif len(rel) < 2 and name != MANUAL3D_DIR:
                keep.append(name)
        dirs[:] = keep
    if not found:
        raise DatasetError(f"{root}: no DeepLesion series folders found (found: {describe_folder(root)}); expected "
                           f"{IMAGES_DIR}/<PPPPPP_SS_ss>/<NNN>.png, or one more level as the zip parts extract "
                           f"({IMAGES_DIR}/{IMAGES_DIR}/<PPPPPP_SS_ss>/, {IMAGES_DIR}_01/{IMAGES_DIR}/<PPPPPP_SS_ss>/)")
    return dict(sorted(found.items()))


def series_spacing(folder: Path, dl_info: Path | None = None) -> tuple[tuple[float, float, float], tuple[int, int]]:
    """(x, y, z spacing mm) and (height, width) of one series folder, from its DL_info.csv rows. Without
    `dl_info`, the DL_info.csv in the nearest of the three folders above the series folder."""
    folder = Path(folder)
    if dl_info is None:
        cands = [p / "DL_info.csv" for p in list(folder.resolve().parents)[:3]]
        dl_info = next((c for c in cands if c.is_file()), None)
        if dl_info is None:
            raise DatasetError(f"{folder}: no DL_info.csv in the three folders above it (looked for "
                               f"{', '.join(str(c) for c in cands)}); give the slice spacing instead")
    rows = [r for r in parse_dl_info(Path(dl_info))
            if folder_name(r["patient"], r["study"], r["series"]) == folder.name]
    if not rows:
        raise DatasetError(f"{dl_info}: no row for series {folder.name}; give the slice spacing instead")
    ref = rows[0]
    for r in rows[1:]:
        if not np.allclose(r["spacing"], ref["spacing"], rtol=1e-4) or r["image_size"] != ref["image_size"]:
            raise DatasetError(f"{dl_info}:{r['line']}: spacing/image size disagree with {dl_info}:{ref['line']} "
                               f"for the same series {folder.name}")
    return tuple(ref["spacing"]), tuple(ref["image_size"])
