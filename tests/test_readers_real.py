"""Every real annotation file we hold parses (copies in tests/data/, see their PROVENANCE.md)."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lens_core.datasets import read_dataset
from lens_core.datasets.common import assign_splits
from lens_core.datasets.deeplesion import parse_dl_info, read_manual_3d
from lens_core.datasets.nihln import annotation_affine, read_annotations

DATA = Path(__file__).parent / "data"
DL_INFO = DATA / "deeplesion-dlinfo-sample" / "DL_info_sample.csv"
NIHLN = DATA / "nih-ln-annotations"
MANUAL_3D = DATA / "deeplesion-manual-3d"


def test_dl_info_sample_rows_parse_with_the_release_conventions():
    rows = parse_dl_info(DL_INFO)
    assert len(rows) == 12
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        rec = np.asarray(r["recist"]).reshape(4, 2)
        # Bounding_boxes = RECIST end-point extent +- 5 px (1e-3: the file's 6 significant digits)
        np.testing.assert_allclose(r["bbox"], [*(rec.min(0) - 5), *(rec.max(0) + 5)], atol=1e-3)
        np.testing.assert_allclose(r["diameters"], [np.linalg.norm(rec[0] - rec[1]), np.linalg.norm(rec[2] - rec[3])],
                                   atol=2e-3)


def test_dl_info_sample_indexes_into_volumes(tmp_path):
    """With blank PNGs for each row's Slice_range, the sample rows become volumes and key-slice boxes."""
    rows = parse_dl_info(DL_INFO)
    (tmp_path / "DL_info.csv").write_bytes(DL_INFO.read_bytes())
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((512, 512), 32768 - 1000, np.uint16)).save(blank)
    for r in rows:
        d = tmp_path / "Images_png" / f"{r['patient']:06d}_{r['study']:02d}_{r['series']:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for n in range(r["slice_range"][0], r["slice_range"][1] + 1):
            if not (d / f"{n:03d}.png").exists():
                os.link(blank, d / f"{n:03d}.png")
    ix = read_dataset("deeplesion", tmp_path)
    # 000089_02_01 holds two disjoint runs (29-41 and 44-56): two volumes
    assert {"000089_02_01_029-041", "000089_02_01_044-056"} <= set(ix.volumes.volume_id)
    assert len(ix.lesions) == 12
    shared = ix.lesions[ix.lesions.volume_id == "000091_03_01_078-108"]
    assert len(shared) == 2 and set(shared.z1) == {93 - 78}          # two lesions on one key slice
    first = ix.lesions[ix.lesions.source_row == "DL_info.csv:2"].iloc[0]
    np.testing.assert_allclose([first.x1, first.y1, first.x2, first.y2], [131.977, 170.808, 165.939, 214.029])
    split = ix.volumes.set_index("patient_id").split
    assert split["000098"].iloc[0] == "val" and split["000090"].iloc[0] == "test" and split["000089"].iloc[0] == "train"
    assert set(ix.lesions[ix.lesions.volume_id.str.startswith("000098")].lesion_type) == {"7", "5"}


def test_manual_3d_test_set_parses():
    boxes, subs = read_manual_3d(MANUAL_3D)
    assert len(boxes) == 5447 and len(subs) == 1000 and (subs.n_boxes == 0).sum() == 31
    assert subs.split.value_counts().to_dict() == {"test": 800, "val": 200}
    n = subs.last_slice - subs.first_slice + 1
    depth = boxes.subvolume.map(dict(zip(subs.subvolume, n)))
    assert (boxes.z1 >= 0).all() and (boxes.z2 <= depth).all() and (boxes.x2 <= 512).all() and (boxes.y2 <= 512).all()
    assert ((boxes.x2 > boxes.x1) & (boxes.z2 > boxes.z1)).all()


def test_all_176_nih_ln_cases_parse_and_fit_one_axis_aligned_affine():
    cases = sorted(p.name for p in NIHLN.iterdir() if p.is_dir())
    assert len(cases) == 176
    assert sum(c.startswith("MED") for c in cases) == 90 and sum(c.startswith("ABD") for c in cases) == 86
    n_nodes = 0
    for c in cases:
        a = read_annotations(NIHLN, c)
        n_nodes += len(a["indices"])
        sp, org, res = annotation_affine(a["indices"], a["points"])
        # physical = origin + spacing * index with positive spacing: 0-based ITK voxel indices, identity direction
        assert np.all(res < 0.01), c
        ok = ~np.isnan(sp)
        assert np.all(sp[ok] > 0), c
        assert np.all((sp[:2][ok[:2]] > 0.5) & (sp[:2][ok[:2]] < 1.0)) and np.all(sp[2:][ok[2:]] <= 5.0 + 1e-6), c
    assert n_nodes == 983


def test_single_type_splits_are_seeded_80_20():
    ids = [f"volume-{i}" for i in range(131)]
    a = assign_splits(ids, 0, 0.2)
    assert sum(v == "val" for v in a.values()) == 26
    assert a == assign_splits(list(reversed(ids)), 0, 0.2)          # independent of file order
    assert a != assign_splits(ids, 1, 0.2)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset("kits", tmp_path)
