"""A tiny synthetic ``results/prep`` tree in the artifact contract (docs/artifacts.md), for the tests: noisy
volumes with bright ellipsoid "lesions"; ``deeplesion`` gets 2D key-slice boxes, the other datasets 3D boxes;
``truth.parquet`` holds every lesion's 3D box. (It shipped in the package as lens_core/training/synthetic.py,
though nothing the pipeline runs uses it.)"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd


def make_volume(rng: np.random.Generator, depth: int, size: int, n_lesions: int, radius=(4, 8)):
    """uint8 ``[z, y, x]`` noise with ``n_lesions`` bright ellipsoids; returns image and 3D boxes."""
    img = rng.normal(60, 8, size=(depth, size, size))
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(size), np.arange(size), indexing="ij")
    boxes = []
    for _ in range(n_lesions):
        for _try in range(50):
            r = rng.uniform(*radius)
            rz = rng.uniform(1.5, 2.5)
            cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
            cz = rng.uniform(rz, depth - rz)
            box = [cx - r, cy - r, cx + r, cy + r]
            if all(box[2] < b[0] - 2 or box[0] > b[2] + 2 or box[3] < b[1] - 2 or box[1] > b[3] + 2 for b in boxes):
                break
        inside = ((xx + 0.5 - cx) / r) ** 2 + ((yy + 0.5 - cy) / r) ** 2 + ((zz + 0.5 - cz) / rz) ** 2 <= 1
        img[inside] = rng.normal(170, 8, size=inside.sum())
        zs = np.flatnonzero(inside.any(axis=(1, 2)))
        ys = np.flatnonzero(inside.any(axis=(0, 2)))
        xs = np.flatnonzero(inside.any(axis=(0, 1)))
        boxes.append([float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1), int(zs[0]), int(zs[-1] + 1)])
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def make_prep(root: Path, datasets=("deeplesion", "luna"), n_volumes: int = 4, depth: int = 10, size: int = 64,
              lesions_per_volume: int = 2, seed: int = 0, splits=("train",)) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in datasets:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        vols, les, truth = [], [], []
        with h5py.File(d / "volumes.h5", "w") as f:
            for v in range(n_volumes):
                vid = f"{name}_{v:03d}"
                img, boxes = make_volume(rng, depth, size, lesions_per_volume)
                g = f.create_group(vid)
                g.create_dataset("image", data=img, chunks=(1, size, size), compression="gzip")
                g.attrs["spacing"] = [2.0, 0.8, 0.8]
                split = splits[v % len(splits)]
                vols.append({"volume_id": vid, "dataset": name, "patient_id": f"p{v // 2}", "study_id": f"s{v}",
                             "series_id": f"r{v}", "split": split, "n_slices": depth, "height": size, "width": size,
                             "spacing_z": 2.0, "spacing_y": 0.8, "spacing_x": 0.8, "source": vid})
                for i, (x1, y1, x2, y2, z1, z2) in enumerate(boxes):
                    truth.append({"volume_id": vid, "x1": x1, "y1": y1, "z1": z1, "x2": x2, "y2": y2, "z2": z2,
                                  "z": (z1 + z2) // 2, "instance_id": f"{vid}_{i}"})
                    key = (z1 + z2) // 2
                    two_d = name == "deeplesion"
                    les.append({"volume_id": vid, "patient_id": f"p{v // 2}", "study_id": f"s{v}", "series_id": f"r{v}",
                                "dataset": name, "lesion_id": f"{vid}_{i}", "z": key, "x1": x1, "y1": y1, "x2": x2,
                                "y2": y2, "z1": key if two_d else z1, "z2": key + 1 if two_d else z2,
                                "kind": "2d" if two_d else "3d", "lesion_type": "blob", "label_kind": "gt"})
        pd.DataFrame(vols).to_parquet(d / "volumes.parquet", index=False)
        pd.DataFrame(les).to_parquet(d / "lesions.parquet", index=False)
        pd.DataFrame(truth).to_parquet(d / "truth.parquet", index=False)  # every lesion, in 3D
        # the fully annotated 3D boxes of the val / test volumes (the manual 3D set's place)
        split_of = {v["volume_id"]: v["split"] for v in vols}
        test3d = pd.DataFrame([{"subvolume": t["volume_id"], "volume_id": t["volume_id"], "split": split_of[t["volume_id"]],
                                **{c: float(t[c]) for c in ("x1", "y1", "z1", "x2", "y2", "z2")}}
                               for t in truth if split_of[t["volume_id"]] != "train"],
                              columns=["subvolume", "volume_id", "split", "x1", "y1", "z1", "x2", "y2", "z2"])
        test3d.to_parquet(d / "test3d.parquet", index=False)
    return root
