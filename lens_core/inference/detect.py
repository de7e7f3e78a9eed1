"""`lens detect`: a trained LENS (+ optional FPR) on one new CT scan (NIfTI, MetaImage, a DICOM folder or
a DeepLesion PNG folder, read by the dataset readers preprocessing uses), 3D lesion boxes in the scan's
own voxel coordinates and in world millimetres; also as 3D Slicer ROI markups and as a label map on the
scan's own grid.

The scan goes through the pipeline's preprocessing (lens_core.preprocess.volumes.prepare: LPS orientation,
resampling, the -1024..3071 HU window, border clipping); LENS proposes on every slice, the experts'
proposals are fused (Sec. IV-C), stacked to 3D, optionally re-scored by the FPR network (Eq. 4), and
the boxes travel back through physical space to the original voxel grid (like ``map_boxes``), so
direction flips and resampling are undone in one place.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image, ImageDraw

from lens_core.boxes import THETA
from lens_core.datasets import read_scan as read_checked
from lens_core.fpr.score import fpr_scores, with_fpr_scores
from lens_core.inference.expert_proposals import propose_volume, stack_proposals_3d
from lens_core.io import write_parquet
from lens_core.preprocess.volumes import PrepParams, Prepared, map_boxes, prepare

log = logging.getLogger(__name__)

BOX = ["x1", "y1", "z1", "x2", "y2", "z2"]
WORLD = ["world_x1", "world_y1", "world_z1", "world_x2", "world_y2", "world_z2"]
CENTRE = ["center_x_mm", "center_y_mm", "center_z_mm"]
DISPLAY_HU = (-360.0, 440.0)  # overlay window (soft tissue, level 40 width 800)
SLICER_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/"
                 "markups-schema-v1.0.3.json#")


def read_scan(path: str | Path, *, spacing: tuple[float, float, float] | None = None,
              dl_info: str | Path | None = None, slices: tuple[int, int] | None = None) -> sitk.Image:
    """A CT volume in HU (float32), read by :func:`lens_core.datasets.read_scan`: the same readers and
    checks that preprocessing uses (NIfTI, MetaImage, one DICOM series at any depth, a DeepLesion folder
    of 16-bit PNGs with its spacing from ``spacing`` or DL_info.csv), no patient fields kept."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scan not found: {path}")
    img = read_checked(path, spacing=spacing, dl_info=dl_info, slices=slices)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: expected a 3D single-channel CT volume, got a {img.GetDimension()}D image "
                         f"with {img.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    img = sitk.Cast(img, sitk.sitkFloat32)
    check_ct_values(sitk.GetArrayViewFromImage(img), path)
    return img


# what a CT in Hounsfield units holds: air near -1000, tissue near 0..100, bone up to ~3000
CT_HU = (-1200.0, 4000.0)
MIN_SPREAD_HU = 300.0


def check_ct_values(hu: np.ndarray, path) -> None:
    """Refuse a scan whose values are not CT Hounsfield units, saying what it looks like instead: a 16-bit
    DeepLesion PNG saved without its 32768 offset gave 0 detections and no warning, a LiTS segmentation
    given as the CT gave 20 (issue 23)."""
    lo, hi = CT_HU
    inside = float(np.mean((hu >= lo) & (hu <= hi)))
    p1, p99 = (float(v) for v in np.percentile(hu, [1, 99]))
    if inside < 0.95:
        hint = " (a DeepLesion PNG must hold HU + 32768: was the offset left out?)" if p99 < lo else ""
        raise ValueError(f"{path}: does not look like CT in Hounsfield units: {100 * (1 - inside):.0f} % of voxels "
                         f"outside [{lo:g}, {hi:g}] (1st-99th percentile {p1:g}..{p99:g}){hint}")
    if p99 - p1 < MIN_SPREAD_HU:
        raise ValueError(f"{path}: does not look like CT in Hounsfield units: values span only {p1:g}..{p99:g} "
                         f"(1st-99th percentile; no air next to tissue): a label map or segmentation?")


def prep_params(pixel_mm: float | None, slice_mm: float | None, *metas: dict) -> PrepParams:
    """Flags first, else the preprocessing recorded in a model's meta (``meta["prep"]``), else the
    pipeline's defaults (PrepParams)."""
    rec = next((m["prep"] for m in metas if m and isinstance(m.get("prep"), dict) and "pixel_mm" in m["prep"]), {})
    default = PrepParams()
    if (pixel_mm is None or slice_mm is None) and not rec:
        log.warning("no preprocessing recorded in the model files; using pixel %.2f mm, slice %.2f mm "
                    "(set --pixel-mm / --slice-mm to those the model was trained with)",
                    pixel_mm or default.pixel_mm, slice_mm or default.slice_mm)
    return PrepParams(float(pixel_mm if pixel_mm is not None else rec.get("pixel_mm", default.pixel_mm)),
                      float(slice_mm if slice_mm is not None else rec.get("slice_mm", default.slice_mm)),
                      str(rec.get("storage", "uint8")))


def _index_to_index(points: np.ndarray, src: sitk.Image, dst: sitk.Image) -> np.ndarray:
    """Project-convention continuous indices (pixel i on [i, i+1)) of ``src`` -> those of ``dst``."""
    out = [np.array(dst.TransformPhysicalPointToContinuousIndex(
        src.TransformContinuousIndexToPhysicalPoint((np.asarray(p, float) - 0.5).tolist()))) + 0.5 for p in points]
    return np.array(out).reshape(-1, 3)


def to_scan_coordinates(det: pd.DataFrame, pre: Prepared, img: sitk.Image) -> pd.DataFrame:
    """3D boxes on the preprocessed (clipped) grid -> voxel boxes of the original scan ``img``
    (x1, y1, z1, x2, y2, z2, exclusive upper bounds), its key slice, and the world-mm extents and
    centre (ITK physical coordinates, LPS)."""
    out = det.copy()
    if not len(det):
        for c in [*BOX, "key_slice", *WORLD, *CENTRE]:
            out[c] = pd.Series(dtype="float64")
        return out
    y0, x0 = pre.crop
    b = det[BOX].to_numpy(np.float64) + np.array([x0, y0, 0, x0, y0, 0], np.float64)  # undo border clipping
    orig = map_boxes(b, pre.ref, img)
    out[BOX] = orig
    key = np.stack([(b[:, 0] + b[:, 3]) / 2, (b[:, 1] + b[:, 4]) / 2, det["z"].to_numpy(np.float64) + 0.5], 1)
    out["key_slice"] = np.clip(np.floor(_index_to_index(key, pre.ref, img)[:, 2]), 0,
                               img.GetSize()[2] - 1).astype(np.int64)
    world_lo, world_hi, centre = [], [], []
    for r in orig:
        corners = np.array([[x, y, z] for x in (r[0], r[3]) for y in (r[1], r[4]) for z in (r[2], r[5])]) - 0.5
        w = np.array([img.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
        world_lo.append(w.min(0))
        world_hi.append(w.max(0))
        centre.append(img.TransformContinuousIndexToPhysicalPoint(((r[:3] + r[3:]) / 2 - 0.5).tolist()))
    out[WORLD] = np.hstack([np.array(world_lo), np.array(world_hi)])
    out[CENTRE] = np.array(centre)
    return out


def detect_scan(lens, lens_meta: dict, img: sitk.Image, params: PrepParams, device, *, fpr=None,
                experts: list[str] | None = None, min_score: float = 0.05, proposal_min_score: float = 0.01,
                max_per_slice: int = 20, stack_iou: float = THETA, max_detections: int = 100,
                batch_slices: int = 16, volume_id: str = "scan", precision: str = "fp32") -> pd.DataFrame:
    """Detections of one scan (see the module doc); ``fpr`` is ``(FprNet, meta)`` or None.

    Columns: ``detection_id``, the box in the scan's voxels (x1, y1, z1, x2, y2, z2), ``key_slice``,
    world extents (world_*), centre (center_*_mm), ``score`` (Eq. 4 with FPR, else LENS's fused
    score), ``score_lens`` (+ ``score_fpr``, ``score_fused``), each expert's ``score_<dataset>``,
    ``n_slices`` (on the preprocessed grid). Sorted by score; ``score >= min_score``.
    """
    fuse = experts or lens_meta.get("fuse_experts") or lens.datasets
    unknown = [d for d in fuse if d not in lens.datasets]
    if unknown:
        raise ValueError(f"experts {unknown} are not among the model's datasets {lens.datasets}")
    pre = prepare(img, params)
    props = propose_volume(lens, pre.image, fuse, device, batch_slices, min_score=proposal_min_score,
                           max_per_slice=max_per_slice, precision=precision)
    props.insert(0, "volume_id", volume_id)
    det = stack_proposals_3d(props, stack_iou)
    if len(det):
        det["score_lens"] = det["score"].astype(np.float64)
        if fpr is not None:
            s = fpr_scores(fpr[0], det, lambda _vid: pre.image, device)
            det = with_fpr_scores(det, s, "fused")
        det = det[det["score"] >= min_score]
        det = det.sort_values("score", ascending=False, kind="stable").head(max_detections).reset_index(drop=True)
    det = to_scan_coordinates(det, pre, img)
    det.insert(0, "detection_id", np.arange(len(det), dtype=np.int64))
    experts_cols = [f"score_{d}" for d in lens.datasets if f"score_{d}" in det]
    fpr_cols = [c for c in ("score_fpr", "score_fused") if c in det]
    cols = ["detection_id", *BOX, "key_slice", *WORLD, *CENTRE, "score", "score_lens", *fpr_cols, *experts_cols,
            "n_slices"]
    return det.reindex(columns=cols)


def write_overlays(img: sitk.Image, det: pd.DataFrame, out_dir: Path, top: int = 10) -> list[Path]:
    """PNG of each of the ``top`` detections into ``out_dir`` (a fresh folder: detect publishes it as a
    whole, so the PNGs of two scans never mix): its key slice of the original scan (soft-tissue window)
    with the box drawn and its rank and score written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayViewFromImage(img)  # [z, y, x]
    lo, hi = DISPLAY_HU
    paths = []
    for r in det.head(top).itertuples(index=False):
        sl = np.clip((np.asarray(arr[int(r.key_slice)], np.float64) - lo) / (hi - lo), 0, 1)
        h, w = sl.shape
        up = max(1, 512 // max(h, w))  # small scans are enlarged so that the box stays visible
        im = Image.fromarray(np.uint8(sl * 255)).resize((w * up, h * up), Image.NEAREST).convert("RGB")
        draw = ImageDraw.Draw(im)
        draw.rectangle([r.x1 * up, r.y1 * up, r.x2 * up - 1, r.y2 * up - 1], outline=(255, 40, 40), width=2)
        label = f"#{r.detection_id} {r.score:.2f}"
        draw.text((min(r.x1 * up, w * up - 7 * len(label)), max(0, r.y1 * up - 12)), label, fill=(255, 255, 0))
        path = out_dir / overlay_name(int(r.detection_id), int(r.key_slice))
        im.save(path, format="PNG")
        paths.append(path)
    return paths


def overlay_name(detection_id: int, key_slice: int) -> str:
    return f"detection_{detection_id:03d}_slice{key_slice}.png"


OVERLAY_RE = re.compile(r"detection_\d{3,}_slice\d+\.png")  # what an overlay folder may hold


def write_table(df: pd.DataFrame, path: Path) -> None:
    """CSV (or Parquet for a .parquet name)."""
    path = Path(path)
    if path.suffix == ".parquet":
        write_parquet(df, path)
        return
    df.to_csv(path, index=False, float_format="%.6g")


def _axis_extents_mm(det: pd.DataFrame, img: sitk.Image) -> np.ndarray:
    """[N, 3] box sizes along the image's own axes (voxels x spacing)."""
    vox = det[BOX].to_numpy(np.float64)
    return (vox[:, 3:] - vox[:, :3]) * np.asarray(img.GetSpacing(), np.float64)


def _box_rotation(img: sitk.Image) -> np.ndarray:
    """The scan's axes as a proper rotation: a box is the same box with an axis reversed, so each axis
    points along its largest component and a left-handed set gets its third axis reversed."""
    d = np.asarray(img.GetDirection(), np.float64).reshape(3, 3)
    d = d * np.where(d[np.abs(d).argmax(0), range(3)] < 0, -1.0, 1.0)
    if np.linalg.det(d) < 0:
        d[:, 2] *= -1
    return d


def markups(det: pd.DataFrame, img: sitk.Image, name: str = "lesion") -> dict:
    """The detections as 3D Slicer ROI markups (markups JSON schema v1.0.3): one ROI per detection in
    LPS millimetres, centred on the box, sized and oriented along the scan's own axes (the direction
    matrix), so that an oblique scan's boxes stay on its voxel grid; named by rank and score."""
    orientation = _box_rotation(img).ravel().tolist()  # row-major; columns are the box axes, as Slicer's
    sizes = _axis_extents_mm(det, img)
    rois = []
    for r, size in zip(det.itertuples(index=False), sizes):
        centre = [float(r.center_x_mm), float(r.center_y_mm), float(r.center_z_mm)]
        label = f"{name}-{int(r.detection_id) + 1}"
        text = f"rank {int(r.detection_id) + 1}, score {float(r.score):.4f}"
        rois.append({
            "type": "ROI", "name": f"{label} ({float(r.score):.2f})", "coordinateSystem": "LPS",
            "coordinateUnits": "mm", "roiType": "Box", "locked": True, "center": centre,
            "size": [float(v) for v in size], "orientation": orientation,
            "controlPoints": [{"id": "1", "label": label, "description": text, "position": centre,
                               "orientation": orientation, "locked": True, "positionStatus": "defined"}],
            "display": {"propertiesLabelVisibility": True, "pointLabelsVisibility": False},
        })
    return {"@schema": SLICER_SCHEMA, "markups": rois}


def write_markups(det: pd.DataFrame, img: sitk.Image, path: Path, name: str = "lesion") -> None:
    Path(path).write_text(json.dumps(markups(det, img, name), indent=1))


def label_map(det: pd.DataFrame, img: sitk.Image) -> sitk.Image:
    """The boxes as a label image on the scan's own grid (same size, origin, spacing, direction): voxel
    = rank (1 = best) of the best-ranked box covering its centre, 0 elsewhere; a box that covers no
    voxel centre still marks the voxel holding its centre."""
    nx, ny, nz = img.GetSize()
    lab = np.zeros((nz, ny, nx), np.uint16 if len(det) < 2 ** 16 else np.uint32)
    vox = det[BOX].to_numpy(np.float64)
    ranks = det["detection_id"].to_numpy(np.int64) + 1
    shape = np.array([nx, ny, nz])
    for i in np.argsort(-ranks, kind="stable"):  # worst first: better-ranked boxes paint over it
        b, rank = vox[i], ranks[i]
        lo = np.clip(np.ceil(b[:3] - 0.5), 0, shape).astype(int)   # voxel i is in when i + 0.5 lies in [lo, hi)
        hi = np.clip(np.ceil(b[3:] - 0.5), 0, shape).astype(int)
        c = np.clip(np.floor((b[:3] + b[3:]) / 2), 0, shape - 1).astype(int)
        lo, hi = np.minimum(lo, c), np.maximum(hi, c + 1)
        lab[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = rank
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(img)  # geometry only: no metadata of the input travels
    return out


def write_label_map(det: pd.DataFrame, img: sitk.Image, path: Path) -> None:
    sitk.WriteImage(label_map(det, img), str(path), True)
