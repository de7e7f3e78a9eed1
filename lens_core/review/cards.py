"""The cards of the review page: which mined boxes get one, what each shows, and its PNG crops.

Every cross-slice and intra-patient box gets a card; uncertain boxes are many and ignored in training
anyway, so a seeded sample of them (``uncertain_sample``) does. A card shows the box on its slice, the
same crop on ``window`` slices either side (the tracklet's boxes and the annotations drawn there), the
annotation the box was mined from (cross-slice: the key-slice annotation of the same scan; intra-patient:
the matched lesion in the patient's other study or series), the strategy, every expert's score, the
fused score and, where the strategy has one, the key-slice IoU or the embedding distance.

The crops are native-resolution grey PNGs (Pillow); the page scales them and draws every box itself, so
a box the reviewer drags maps back to pixel coordinates exactly (``crop = [x0, y0, side]``).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from lens_core.mining.montage import WINDOWS
from lens_core.preprocess.window import level
from lens_core.review.boxes import STRATEGIES

BOX = ["x1", "y1", "x2", "y2"]
AIR_LEVEL = float(level(-500))  # -500 HU on the preprocessing's 0..255 scale


def choose_cards(boxes: pd.DataFrame, uncertain_sample: int | None, seed: int = 0) -> pd.DataFrame:
    """The rows of ``boxes`` (review_boxes) that get a card, in page order: strategy, volume, slice.
    ``uncertain_sample``: how many uncertain boxes (a seeded random sample; None = all)."""
    unc = boxes["strategy"] == "uncertain"
    pick = np.flatnonzero(unc.to_numpy())
    if uncertain_sample is not None and len(pick) > uncertain_sample:
        pick = np.sort(np.random.default_rng(seed).choice(pick, size=int(uncertain_sample), replace=False))
    keep = np.zeros(len(boxes), bool)
    keep[~unc.to_numpy()] = True
    keep[pick] = True
    order = {s: i for i, s in enumerate(STRATEGIES)}
    out = boxes[keep].assign(_o=boxes.loc[keep, "strategy"].map(order))
    return out.sort_values(["_o", "volume_id", "z", "x1"], kind="stable").drop(columns="_o").reset_index(drop=True)


def expert_scores(cards: pd.DataFrame, tracklets: pd.DataFrame | None, proposals: pd.DataFrame | None) -> list[dict]:
    """Each card's ``{expert: score}`` from the proposal it was mined from: a cross-slice or intra-patient
    box is a tracklet box (same tracklet, slice and coordinates), an uncertain box a round-1 proposal
    (same volume, slice and coordinates). {} where the table is not given or has no such row."""
    out: list[dict] = [{} for _ in range(len(cards))]
    for src, key in ((tracklets, ["tracklet_id", "volume_id", "z", *BOX]), (proposals, ["volume_id", "z", *BOX])):
        if src is None or not len(src):
            continue
        experts = [c for c in src.columns if c.startswith("score_")]
        if not experts or any(k not in src.columns for k in key):
            continue
        table = src[key + experts].drop_duplicates(key).reset_index(drop=True)
        # cards of the strategy this table explains: tracklets for the mined lesions, proposals for uncertain
        rows = np.flatnonzero((cards["strategy"] != "uncertain").to_numpy() if "tracklet_id" in key
                              else (cards["strategy"] == "uncertain").to_numpy())
        if not len(rows):
            continue
        m = cards.iloc[rows][key].reset_index(drop=True).merge(table, on=key, how="left")
        for j, r in zip(rows, m[experts].to_numpy(float)):
            out[j] = {e.removeprefix("score_"): round(float(v), 4) for e, v in zip(experts, r) if np.isfinite(v)}
    return out


def source_annotations(cards: pd.DataFrame, lesions: pd.DataFrame) -> list[dict | None]:
    """The annotation each card's box was mined from (None for uncertain boxes, or when the lesion id is
    not found): the ``gt`` row with the card's ``lesion_id`` in the same volume (cross-slice) or in another
    volume of the patient (intra-patient); the first such row when there are several."""
    gt = lesions[lesions["label_kind"] == "gt"].reset_index(drop=True)
    by_id = gt.groupby(gt["lesion_id"].astype(str)).indices
    out: list[dict | None] = []
    for c in cards.itertuples(index=False):
        rows = by_id.get(str(c.lesion_id), []) if c.strategy != "uncertain" else []
        same = [i for i in rows if str(gt.at[i, "volume_id"]) == str(c.volume_id)]
        other = [i for i in rows if str(gt.at[i, "volume_id"]) != str(c.volume_id)
                 and str(gt.at[i, "patient_id"]) == str(c.patient_id)]
        pick = (same if c.strategy == "cross_slice" else other)[:1]
        if not pick:
            out.append(None)
            continue
        a = gt.iloc[pick[0]]
        out.append({"volume_id": str(a["volume_id"]), "study_id": int(a["study_id"]), "series_id": int(a["series_id"]),
                    "z": int(a["z"]), "box": [round(float(a[k]), 2) for k in BOX], "lesion_id": str(a["lesion_id"]),
                    "lesion_type": str(a["lesion_type"])})
    return out


def crop_square(box, context: float, min_side: int) -> tuple[int, int, int]:
    """(x0, y0, side): an integer square of ``context`` x the box's longer side (at least ``min_side``)
    centred on the box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = int(np.ceil(max(context * max(x2 - x1, y2 - y1), min_side)))
    return int(np.floor((x1 + x2 - side) / 2)), int(np.floor((y1 + y2 - side) / 2)), side


def _window(crop: np.ndarray) -> tuple[float, float]:
    """The display window: lung when the crop is mostly air, else soft tissue (as the audit montage)."""
    return WINDOWS["lung" if np.median(crop) < AIR_LEVEL else "soft_tissue"]


def render(image: np.ndarray, z: int, x0: int, y0: int, side: int, lo: float | None = None,
           hi: float | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Slice ``z`` of ``image`` ([z, y, x] on the 0..255 scale, any storage) cropped to the square (zero
    outside the image), windowed to 0..255 uint8; and the window used (``lo``/``hi``: given, else chosen
    from this crop)."""
    out = np.zeros((side, side), np.float32)
    if 0 <= z < image.shape[0]:
        h, w = image.shape[1:]
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + side, h), min(x0 + side, w)
        if ye > ys and xe > xs:
            out[ys - y0:ye - y0, xs - x0:xe - x0] = image[z, ys:ye, xs:xe]
    if lo is None or hi is None:
        lo, hi = _window(out)
    scaled = np.clip((out - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return scaled, (lo, hi)


def boxes_on(table: pd.DataFrame, volume: str, zs, x0: int, y0: int, side: int) -> dict[int, list]:
    """{z: [[x1, y1, x2, y2], ...]} of ``table``'s boxes of ``volume`` on slices ``zs`` that touch the crop
    (3D annotations count on every slice of their z1..z2 span)."""
    t = table[table["volume_id"].astype(str) == volume]
    out: dict[int, list] = {}
    if not len(t):
        return out
    z = t["z"].to_numpy(np.int64)
    z1 = t["z1"].to_numpy(float) if "z1" in t else z.astype(float)
    z2 = t["z2"].to_numpy(float) if "z2" in t else z + 1.0
    span = np.isfinite(z1) & np.isfinite(z2) & (z2 > z1)
    lo, hi = np.where(span, np.floor(np.nan_to_num(z1)), z), np.where(span, np.ceil(np.nan_to_num(z2)), z + 1)
    b = t[BOX].to_numpy(float)
    near = (b[:, 2] > x0) & (b[:, 0] < x0 + side) & (b[:, 3] > y0) & (b[:, 1] < y0 + side)
    for zz in zs:
        on = near & (lo <= zz) & (zz < hi)
        if on.any():
            out[int(zz)] = [[round(float(v), 2) for v in r] for r in b[on]]
    return out


def write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, optimize=True)


def render_cards(cards: pd.DataFrame, h5_path: Path, out_dir: Path, lesions: pd.DataFrame,
                 tracklets: pd.DataFrame | None, sources: list, window: int = 2, context: float = 3.0,
                 min_side: int = 32) -> list[dict]:
    """Write each card's PNGs into ``out_dir`` (``{box_id}.png``: the box's slice; ``{box_id}_strip.png``:
    the 2 * window + 1 slices side by side; ``{box_id}_src.png``: the source annotation's slice) and
    return the geometry the page needs: crop squares, strip slices, the boxes to draw on each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gt = lesions[lesions["label_kind"] == "gt"]
    trk = tracklets if tracklets is not None and len(tracklets) else None
    geo = []
    with h5py.File(h5_path, "r") as f:
        for k, c in enumerate(cards.itertuples(index=False)):
            vid, z, bid = str(c.volume_id), int(c.z), str(c.box_id)
            if vid not in f:
                raise ValueError(f"{h5_path}: no volume {vid!r} (mined box {bid})")
            image = f[vid]["image"]
            x0, y0, side = crop_square([c.x1, c.y1, c.x2, c.y2], context, min_side)
            zs = list(range(z - window, z + window + 1))
            lo_z, hi_z = max(z - window, 0), min(z + window + 1, image.shape[0])
            stack = np.zeros((len(zs),) + image.shape[1:], image.dtype)
            stack[lo_z - (z - window):hi_z - (z - window)] = image[lo_z:hi_z]
            main, win = render(stack, window, x0, y0, side)
            write_png(out_dir / f"{bid}.png", main)
            strip = np.concatenate([render(stack, i, x0, y0, side, *win)[0] for i in range(len(zs))], axis=1)
            write_png(out_dir / f"{bid}_strip.png", strip)
            track = {}
            if trk is not None and int(c.tracklet_id) >= 0:
                t = trk[(trk["tracklet_id"] == int(c.tracklet_id)) & (trk["volume_id"].astype(str) == vid)]
                track = boxes_on(t, vid, zs, x0, y0, side)
            g = {"img": f"img/{bid}.png", "crop": [x0, y0, side], "strip": f"img/{bid}_strip.png",
                 "strip_z": [zz if 0 <= zz < image.shape[0] else None for zz in zs],
                 "annotations": {str(k2): v for k2, v in boxes_on(gt, vid, zs, x0, y0, side).items()},
                 "tracklet": {str(k2): v for k2, v in track.items()}}
            src = sources[k]
            if src is not None:
                if src["volume_id"] not in f:
                    raise ValueError(f"{h5_path}: no volume {src['volume_id']!r} (annotation of mined box {bid})")
                sx0, sy0, sside = crop_square(src["box"], context, min_side)
                simg = f[src["volume_id"]]["image"]
                pix, _ = render(simg, src["z"], sx0, sy0, sside)
                write_png(out_dir / f"{bid}_src.png", pix)
                g["source"] = {**src, "img": f"img/{bid}_src.png", "crop": [sx0, sy0, sside]}
            geo.append(g)
    return geo
