"""Lesion embeddings for intra-patient matching (paper Sec. V-B; LesaNNet [55] stand-in).

The paper embeds each annotation and the centre slice of each tracklet with LesaNNet, which "encodes
the body part, type, and attributes of lesions", and matches pairs within a patient whose L2 distance
is below delta = 0.15. LesaNNet's embedding is L2-normalised (distances in [0, 2]); so is every
embedding here, so that the paper's delta is read on the same scale. LesaNNet is not available, so
the learned embedding is three blocks, each a unit vector, concatenated with equal weight and the
whole vector normalised (``/ sqrt(3)``: exactly unit, since each block is):

- appearance: :class:`~lens_core.mining.embed_model.LesionEncoder` on a context-padded 3-slice crop
  (a unit vector), trained self-supervised from tracklets and annotations only;
- body position: the box centre relative to the body's extent on its slice (``p`` in [-0.5, 0.5]^2;
  the body found by thresholding the slice, which survives the patient lying a few mm differently and
  a different field of view, unlike raw pixel positions), lifted onto the unit sphere as
  ``(p_x, p_y, 0.5) / |.|``: the body's centre is the pole, its corners 55 degrees away;
- size: the log of the box's mean side in mm on a quarter circle, 1 mm at 0 and 200 mm (beyond any
  lesion CT shows) at 90 degrees: a 25 % change in size moves it by 0.07.

The weights are fixed by construction, not tuned: equal weight is the one choice that needs no data
(an earlier version tuned per-block weights on the hidden truth, which real data does not have), and
unit blocks make the whole vector's norm constant, so normalising it does not make a distance depend
on where in the body two lesions lie. ``benchmarks/embedding_ablation.py`` audits each block's worth
against the truth (an audit: it decides nothing).

The source is pluggable (:func:`embed`): ``"learned"`` (all three blocks), ``"position"`` (position
and size only: no training), ``"appearance"`` (the encoder alone), or the path of a user's Parquet
table of embeddings keyed by box (L2-normalised here like the others).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from lens_core.io import InputError, atomic_path, read_table, require_columns
from lens_core.mining.overlap import same_slice_iou
from lens_core.preprocess.window import level

__all__ = ["EmbeddingWeights", "unit_rows", "position_block", "size_block", "box_keys", "body_extents", "position_features", "extract_patches",
           "tracklet_centres", "training_groups", "fit_encoder", "embed", "lookup",
           "write_embeddings_h5", "read_embeddings_h5"]

BOX_COLS = ["x1", "y1", "x2", "y2"]
# HU -500 on the preprocessing window's 0..255 scale (any storage): tissue above, air below.
BODY_THRESHOLD = float(level(-500))


@dataclass(frozen=True)
class EmbeddingWeights:
    """Crop settings of the appearance block (the blocks themselves are fixed: module docstring)."""

    context: float = 2.0      # crop side = context x the box's longer side ...
    min_crop_px: float = 16.0  # ... but at least this many pixels (small lesions need surroundings)

    def to_dict(self) -> dict:
        return asdict(self)


# the position block's lift: the pole's height above the body-relative plane (half the body's extent)
POSITION_LIFT = 0.5
# the size block's quarter circle: log(1 mm) at 0, log(200 mm) at 90 degrees
SIZE_RANGE_MM = (1.0, 200.0)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.maximum(n, 1e-12), 0.0)


def position_block(pos: np.ndarray) -> np.ndarray:
    """[n, 3] unit vectors of the body-relative centres ``pos[:, :2]`` (module docstring)."""
    p = np.asarray(pos, dtype=np.float64)[:, :2]
    return unit_rows(np.column_stack([p, np.full(len(p), POSITION_LIFT)]))


def size_block(log_side_mm: np.ndarray) -> np.ndarray:
    """[n, 2] unit vectors of the log box sizes on a quarter circle (module docstring)."""
    lo, hi = np.log(SIZE_RANGE_MM[0]), np.log(SIZE_RANGE_MM[1])
    phi = 0.5 * np.pi * np.clip((np.asarray(log_side_mm, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.column_stack([np.cos(phi), np.sin(phi)])


def box_keys(df: pd.DataFrame) -> np.ndarray:
    """A string key per box: ``volume_id/z/x1,y1,x2,y2`` (2 decimals); the key of embeddings.h5."""
    _require(df, ["volume_id", "z", *BOX_COLS], "box table")
    z = df["z"].to_numpy(dtype=np.int64)
    b = df[BOX_COLS].to_numpy(dtype=np.float64)
    return np.array([f"{v}/{zz}/{c[0]:.2f},{c[1]:.2f},{c[2]:.2f},{c[3]:.2f}"
                     for v, zz, c in zip(df["volume_id"].astype(str), z, b)], dtype=object)


def _require(df: pd.DataFrame, cols: list[str], name: str) -> None:
    require_columns(df, cols, name)


class _Volumes:
    """Lazy reader of volumes.h5: one volume in memory at a time (boxes are processed volume by volume)."""

    def __init__(self, prep_dir: str | Path):
        self.path = Path(prep_dir) / "volumes.h5"
        if not self.path.exists():
            raise InputError(f"{self.path}: no preprocessed volumes (run `lens preprocess`)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise InputError(f"{self.path}: cannot open the preprocessed volumes ({e})") from e

    def get(self, volume_id: str) -> tuple[np.ndarray, np.ndarray]:
        if volume_id not in self.file:
            raise InputError(f"{self.path}: no volume {volume_id!r}")
        g = self.file[volume_id]
        return g["image"][()], np.asarray(g.attrs["spacing"], dtype=np.float64)

    def close(self) -> None:
        self.file.close()


def body_extents(image_slice: np.ndarray) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of the body on a preprocessed slice: the largest connected region above HU -500
    (holes such as the lungs filled), exclusive bounds; the whole slice if nothing is found."""
    mask = image_slice >= BODY_THRESHOLD
    lab, n = ndimage.label(mask)
    h, w = image_slice.shape
    if n == 0:
        return 0.0, 0.0, float(w), float(h)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    ys, xs = np.nonzero(lab == int(sizes.argmax()))
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def position_features(boxes: pd.DataFrame, prep_dir: str | Path) -> np.ndarray:
    """float32 [n, 3]: box centre x, y relative to the body extent on its slice (-0.5..0.5 inside the
    body) and log of the box's mean side in mm (``sqrt(w * h)`` with the volume's pixel spacing)."""
    _require(boxes, ["volume_id", "z", *BOX_COLS], "box table")
    out = np.zeros((len(boxes), 3), np.float32)
    vols = _Volumes(prep_dir)
    try:
        for vid, idx in boxes.groupby("volume_id", sort=False).indices.items():
            image, spacing = vols.get(str(vid))
            sub = boxes.iloc[idx]
            z = np.clip(sub["z"].to_numpy(dtype=np.int64), 0, image.shape[0] - 1)
            b = sub[BOX_COLS].to_numpy(dtype=np.float64)
            ext = {zz: body_extents(image[zz]) for zz in np.unique(z)}
            e = np.array([ext[zz] for zz in z])
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            out[idx, 0] = (cx - e[:, 0]) / np.maximum(e[:, 2] - e[:, 0], 1.0) - 0.5
            out[idx, 1] = (cy - e[:, 1]) / np.maximum(e[:, 3] - e[:, 1], 1.0) - 0.5
            side_mm = np.sqrt(np.maximum(b[:, 2] - b[:, 0], 1e-3) * spacing[2]
                              * np.maximum(b[:, 3] - b[:, 1], 1e-3) * spacing[1])
            out[idx, 2] = np.log(side_mm)
    finally:
        vols.close()
    return out


def extract_patches(boxes: pd.DataFrame, prep_dir: str | Path, weights: EmbeddingWeights = EmbeddingWeights(),
                    patch_px: int | None = None) -> np.ndarray:
    """uint8 [n, 3, P, P] patches (slices z-1, z, z+1) centred on each box, spanning twice its crop
    (crop side = max(context x longer box side, min_crop_px)); outside the image reads as air (0)."""
    # lazy: torch, for the appearance encoder only (not for lens --help nor the other mining steps)
    import torch
    from torchvision.ops import roi_align

    from lens_core.mining.embed_model import PATCH_PX  # lazy: torch

    p = int(patch_px or PATCH_PX)
    _require(boxes, ["volume_id", "z", *BOX_COLS], "box table")
    out = np.zeros((len(boxes), 3, p, p), np.uint8)
    vols = _Volumes(prep_dir)
    try:
        for vid, idx in boxes.groupby("volume_id", sort=False).indices.items():
            image, _ = vols.get(str(vid))
            nz = image.shape[0]
            sub = boxes.iloc[idx]
            z = sub["z"].to_numpy(dtype=np.int64)
            if (z < 0).any() or (z >= nz).any():
                bad = int(idx[np.flatnonzero((z < 0) | (z >= nz))[0]])
                raise ValueError(f"box row {bad}: slice {int(boxes['z'].iloc[bad])} outside volume {vid} ({nz} slices)")
            used = np.unique(np.concatenate([z - 1, z, z + 1]).clip(0, nz - 1))
            pos = {int(s): k for k, s in enumerate(used)}
            stack = torch.as_tensor(image[used], dtype=torch.float32)  # [U, H, W]
            # channel c of item k = slice z_k - 1 + c (clamped at the volume's ends)
            trip = np.array([[pos[int(min(max(zz - 1 + c, 0), nz - 1))] for c in range(3)] for zz in z])
            b = sub[BOX_COLS].to_numpy(dtype=np.float64)
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            half = np.maximum(weights.context * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]),
                              weights.min_crop_px)  # half the patch = the crop side
            rois = torch.as_tensor(np.stack([np.arange(len(z)), cx - half, cy - half, cx + half, cy + half], 1),
                                   dtype=torch.float32)
            inp = stack[torch.as_tensor(trip)]  # [n, 3, H, W]
            crops = roi_align(inp, rois, output_size=p, spatial_scale=1.0, sampling_ratio=2, aligned=True)
            out[idx] = crops.round().clamp(0, 255).to(torch.uint8).numpy()
    finally:
        vols.close()
    return out


def tracklet_centres(tracklet_boxes: pd.DataFrame) -> pd.DataFrame:
    """One row per tracklet: its box on the centre slice (Sec. V-B: "we run it on the center slice of
    each tracklet"), the highest-scoring one if several; all columns of that box row kept."""
    _require(tracklet_boxes, ["tracklet_id", "volume_id", "z", *BOX_COLS], "tracklet table")
    t = tracklet_boxes.reset_index(drop=True)
    g = t.groupby("tracklet_id")["z"]
    centre = np.floor((g.transform("min") + g.transform("max")) / 2).to_numpy(dtype=np.int64)
    score = t["score"].to_numpy(dtype=np.float64) if "score" in t.columns else np.zeros(len(t))
    # distance to the centre slice first (a tracklet with a gap may lack it), then the best score
    order = np.lexsort((-score, np.abs(t["z"].to_numpy(dtype=np.int64) - centre), t["tracklet_id"].to_numpy()))
    return t.iloc[order].drop_duplicates("tracklet_id").sort_values("tracklet_id").reset_index(drop=True)


def training_groups(annotations: pd.DataFrame, tracklet_boxes: pd.DataFrame, iou_threshold: float = 0.5) -> pd.DataFrame:
    """The encoder's training boxes with a ``group`` column: what the user knows to be one lesion.

    Every tracklet is a group (its boxes on different slices are positives of each other). An
    annotation joins the tracklet it overlaps on its key slice (IoU > theta, the best one), else it is
    a group of its own (positives come from augmentation). Built from annotations and proposals only.
    """
    ann = annotations.reset_index(drop=True)
    if "label_kind" in ann.columns:
        ann = ann[ann["label_kind"] == "gt"].reset_index(drop=True)
    trk = tracklet_boxes.reset_index(drop=True)
    _require(trk, ["tracklet_id", "volume_id", "z", *BOX_COLS], "tracklet table")
    group_a = -1 - np.arange(len(ann), dtype=np.int64)  # own groups, negative ids
    if len(ann) and len(trk):
        pairs = same_slice_iou(ann, trk)
        pairs = pairs[pairs["iou"] > iou_threshold].sort_values(["a_row", "iou"], ascending=[True, False])
        best = pairs.drop_duplicates("a_row")
        group_a[best["a_row"].to_numpy()] = trk["tracklet_id"].to_numpy(dtype=np.int64)[best["b_row"].to_numpy()]
    cols = ["volume_id", "patient_id", "z", *BOX_COLS]
    return pd.concat([ann[cols].assign(group=group_a, role="annotation"),
                      trk[cols].assign(group=trk["tracklet_id"].to_numpy(dtype=np.int64), role="tracklet")],
                     ignore_index=True)


def fit_encoder(groups: pd.DataFrame, prep_dir: str | Path, weights: EmbeddingWeights = EmbeddingWeights(),
                cfg=None, max_per_group: int = 8, log=None, **training):
    """Train the appearance encoder on :func:`training_groups` output; returns ``(model, cfg, history)``.

    At most ``max_per_group`` boxes per group (evenly spaced slices) so that long tracklets do not
    dominate the patches held in memory. ``training``: train_encoder's checkpoint, resume, progress, on_step.
    """
    from lens_core.mining.embed_model import EncoderTraining, train_encoder  # lazy: torch

    cfg = cfg or EncoderTraining()
    _require(groups, ["group", "volume_id", "patient_id", "z", *BOX_COLS], "training groups")
    g = groups.reset_index(drop=True)
    rank = g.groupby("group").cumcount().to_numpy()
    size = g.groupby("group")["z"].transform("size").to_numpy()
    stride = np.maximum(size // max_per_group, 1)
    g = g[(rank % stride == 0) & (rank // stride < max_per_group)].reset_index(drop=True)
    if g["group"].nunique() < 2:
        raise ValueError("the encoder needs at least two lesion groups (annotations or tracklets) to train")
    patches = extract_patches(g, prep_dir, weights)
    patient, _ = pd.factorize(g["patient_id"].astype(str))
    volume, _ = pd.factorize(g["volume_id"].astype(str))
    model, history = train_encoder(patches, g["group"].to_numpy(), patient, volume, cfg, log=log, **training)
    return model, cfg, history


def _encoder(encoder):
    from lens_core.mining.embed_model import LesionEncoder, load_encoder  # lazy: torch

    if isinstance(encoder, LesionEncoder):
        return encoder
    if encoder is None:
        raise ValueError("source='learned'/'appearance' needs an encoder (a LesionEncoder or a checkpoint path)")
    return load_encoder(encoder)[0]


def embed(boxes: pd.DataFrame, prep_dir: str | Path | None, source: str | Path = "learned", *,
          encoder=None, weights: EmbeddingWeights = EmbeddingWeights()) -> tuple[np.ndarray, np.ndarray]:
    """Embed 2D boxes: ``(keys, emb)``, keys = :func:`box_keys`, emb float32 [n, d] in row order.

    source: ``"learned"`` (appearance + position + size; ``encoder`` = a LesionEncoder or the path of
    one saved by ``embed_model.save_encoder``), ``"position"`` (position + size; d = 3),
    ``"appearance"`` (the encoder's unit vectors alone), or the path of a user Parquet table with
    ``volume_id, z, x1, y1, x2, y2`` and either an ``embedding`` list column or ``emb_0 .. emb_{d-1}``
    columns; each box takes the row on its slice with the highest IoU (>= 0.9 required).
    """
    keys = box_keys(boxes)
    if isinstance(source, str) and source in ("learned", "position", "appearance"):
        if prep_dir is None:
            raise ValueError(f"source={source!r} reads the images: prep_dir is required")
        parts = []
        if source in ("learned", "appearance"):
            from lens_core.mining.embed_model import encode  # lazy: torch, not for source position

            parts.append(unit_rows(encode(_encoder(encoder), extract_patches(boxes, prep_dir, weights))))
        if source in ("learned", "position"):
            pos = position_features(boxes, prep_dir)
            parts += [position_block(pos), size_block(pos[:, 2])]
        # unit blocks, equal weight: the concatenation's norm is sqrt(len(parts)), so this is its L2 norm
        return keys, (np.concatenate(parts, axis=1) / np.sqrt(len(parts))).astype(np.float32)
    return keys, unit_rows(_user_embeddings(boxes, Path(source))).astype(np.float32)


def _user_embeddings(boxes: pd.DataFrame, path: Path, min_iou: float = 0.9) -> np.ndarray:
    what = "embedding table (--source must be 'learned', 'position', 'appearance' or a Parquet table's path)"
    table = read_table(path, {"volume_id": "text", "z": "integer", **dict.fromkeys(BOX_COLS, "number")}, what)
    if "embedding" in table.columns:
        lens = table["embedding"].map(len).to_numpy()
        if len(table) and (lens != lens[0]).any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(lens != lens[0])[0])} has an embedding of "
                             f"length {int(lens[np.flatnonzero(lens != lens[0])[0]])}, row 0 of {int(lens[0])}")
        vec = np.stack(table["embedding"].to_numpy()).astype(np.float32) if len(table) else np.zeros((0, 0), np.float32)
    else:
        cols = sorted((c for c in table.columns if c.startswith("emb_")), key=lambda c: int(c[4:]))
        if not cols:
            raise InputError(f"{path}: embedding table has neither an 'embedding' column nor emb_0.. columns")
        vec = table[cols].to_numpy(dtype=np.float32)
    bad = ~np.isfinite(vec).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0])} has a non-finite embedding")
    b = boxes.reset_index(drop=True)
    pairs = same_slice_iou(b, table.reset_index(drop=True))
    pairs = pairs[pairs["iou"] >= min_iou].sort_values(["a_row", "iou"], ascending=[True, False]).drop_duplicates("a_row")
    found = np.zeros(len(b), bool)
    found[pairs["a_row"].to_numpy()] = True
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        r = b.iloc[i]
        raise InputError(f"{path}: no embedding for box row {i} (volume {r['volume_id']}, slice {int(r['z'])}, "
                       f"box {[round(float(r[c]), 2) for c in BOX_COLS]}); {int((~found).sum())} boxes lack one")
    out = np.empty((len(b), vec.shape[1]), np.float32)
    out[pairs["a_row"].to_numpy()] = vec[pairs["b_row"].to_numpy()]
    return out


def lookup(keys: np.ndarray, emb: np.ndarray, boxes: pd.DataFrame, source: str = "embeddings") -> np.ndarray:
    """The rows of ``emb`` for ``boxes`` (by :func:`box_keys`), e.g. to feed ``mine_intra_patient``."""
    index = pd.Index(np.asarray(keys, dtype=object))
    if not index.is_unique:
        index = index.drop_duplicates()
        emb = emb[~pd.Index(np.asarray(keys, dtype=object)).duplicated()]
    want = box_keys(boxes)
    pos = index.get_indexer(want)
    if (pos < 0).any():
        i = int(np.flatnonzero(pos < 0)[0])
        raise InputError(f"{source}: no embedding for box row {i} ({want[i]})")
    return emb[pos]


def write_embeddings_h5(path: str | Path, keys: np.ndarray, emb: np.ndarray, config: dict | None = None) -> None:
    """embeddings.h5, atomically: datasets ``keys`` (utf-8 strings [n]) and ``embedding`` (float32
    [n, d]); attribute ``config`` (JSON: the source, weights and encoder settings)."""
    emb = np.asarray(emb, dtype=np.float32)
    keys = np.asarray(keys, dtype=object)
    if emb.ndim != 2 or len(keys) != len(emb):
        raise ValueError(f"keys [n] and embedding [n, d] must line up, got {keys.shape} and {emb.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("keys", data=keys.astype(str).astype(object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("embedding", data=emb, compression="gzip")
        f.attrs["config"] = json.dumps(config or {})


def read_embeddings_h5(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(keys, embedding, config)`` from :func:`write_embeddings_h5`'s file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            keys = np.array([k.decode() if isinstance(k, bytes) else k for k in f["keys"][()]], dtype=object)
            emb = f["embedding"][()].astype(np.float32)
            config = json.loads(f.attrs.get("config", "{}"))
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not an embeddings file ({exc})") from exc
    if len(keys) != len(emb):
        raise InputError(f"{path}: {len(keys)} keys but {len(emb)} embeddings")
    return keys, emb, config
