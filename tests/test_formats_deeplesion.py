"""DeepLesion format: PNG runs + DL_info.csv + manual 3D test set; round trip and bad input."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk

from lens_core.datasets import DatasetError, load_image, read_dataset
from lens_core.datasets.deeplesion import DL_INFO_COLUMNS, DeepLesionWriter, parse_dl_info

SPACING = (0.8, 0.8, 2.0)   # x, y, slice interval


def _vol(n=8, lesion=None):
    hu = np.full((n, 32, 32), -1000, np.int16)
    hu[:, 4:28, 4:28] = 30
    if lesion:
        z, y0, y1, x0, x1 = lesion
        hu[z, y0:y1, x0:x1] = 120
    return hu


def _lesion(w, key, recist, split="train", rng=(10, 17), series=1, ltype=-1):
    w.add_lesion(patient=7, study=2, series=series, key_slice=key, recist=recist, lesion_type=ltype, split=split,
                 slice_range=rng, spacing=SPACING, image_shape=(32, 32), gender="F", age=61)


def test_key_slice_lesion_round_trip(tmp_path):
    # a bright lesion occupying pixels x 12..19, y 8..13 on PNG 12 (run 10..17 -> z = 2)
    hu = _vol(lesion=(2, 8, 14, 12, 20))
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, hu)
    _lesion(w, 12, [12.0, 11.0, 20.0, 11.0, 16.0, 8.0, 16.0, 14.0])   # long axis x 12..20, short axis y 8..14
    w.finish()
    ix = read_dataset("deeplesion", tmp_path)
    v = ix.volumes.iloc[0]
    assert (v.volume_id, v.patient_id, v.study_id, v.series_id, v.first_slice, v.split) == \
        ("000007_02_01_010-017", "000007", 2, 1, 10, "train")
    les = ix.lesions.iloc[0]
    assert (les.kind, les.z1, les.z2, les.lesion_type) == ("2d", 2.0, 3.0, "unknown")
    # Bounding_boxes = RECIST extent +- 5 px (+ the half pixel of the inclusive 1-based convention)
    np.testing.assert_allclose([les.x1, les.y1, les.x2, les.y2], [12 - 5.5, 8 - 5.5, 20 + 5.5, 14 + 5.5])
    assert les.size_mm == pytest.approx(8 * SPACING[0])
    img = load_image(v, tmp_path)
    arr = sitk.GetArrayFromImage(img)
    np.testing.assert_array_equal(arr, hu)
    np.testing.assert_allclose(img.GetSpacing(), SPACING)
    ys, xs = np.nonzero(arr[int(les.z1)] == 120)         # the lesion's pixels lie inside the box
    assert les.x1 <= xs.min() and xs.max() + 1 <= les.x2 and les.y1 <= ys.min() and ys.max() + 1 <= les.y2


def test_dl_info_is_written_like_the_release(tmp_path):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    _lesion(w, 12, [12.25, 11.0, 20.0, 11.0, 16.0, 8.0, 16.0, 14.0], split="val", ltype=4)
    w.finish()
    text = (tmp_path / "DL_info.csv").read_text()
    header, row = text.splitlines()
    assert header.split(",") == DL_INFO_COLUMNS
    fields = next(csv.reader([row]))
    assert fields[0] == "000007_02_01_012.png" and fields[-1] == "2"
    # list fields are quoted "a, b" with %g numbers and 1-based coordinates, scalars bare
    assert '"12.75, 11.5, 20.5, 11.5, 16.5, 8.5, 16.5, 14.5","7.75, 3.5, 25.5, 19.5"' in row
    assert ',4,0,"10, 17","0.8, 0.8, 2","32, 32","-175, 275",F,61,2' in row
    r = parse_dl_info(tmp_path / "DL_info.csv")[0]
    assert r["diameters"][0] == pytest.approx(7.75) and r["split"] == "val"


def test_disjoint_runs_are_separate_volumes_and_shared_key_slices_keep_both_lesions(tmp_path):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    w.write_volume(7, 2, 1, 30, _vol(n=5))
    _lesion(w, 12, [5, 5, 9, 5, 7, 4, 7, 6])
    _lesion(w, 32, [5, 5, 9, 5, 7, 4, 7, 6], rng=(30, 34))
    _lesion(w, 32, [15, 15, 25, 15, 20, 12, 20, 18], rng=(30, 34))   # same key slice as the previous row
    w.finish()
    ix = read_dataset("deeplesion", tmp_path)
    assert list(ix.volumes.volume_id) == ["000007_02_01_010-017", "000007_02_01_030-034"]
    second = ix.lesions[ix.lesions.volume_id == "000007_02_01_030-034"]
    assert len(second) == 2 and set(second.z1) == {2.0} and second.lesion_id.is_unique
    assert sitk.GetArrayFromImage(load_image(ix.volumes.iloc[1], tmp_path)).shape == (5, 32, 32)


def test_manual_3d_test_set_round_trip(tmp_path):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    _lesion(w, 12, [5, 5, 9, 5, 7, 4, 7, 6], split="test")
    w.add_subvolume("test", 7, 2, 1, 10, 17, [[6.0, 7.0, 1.0, 12.0, 15.0, 4.0]])
    w.finish()
    ix = read_dataset("deeplesion", tmp_path)
    assert ix.test3d.subvolume.tolist() == ["000007_02_01_010-017"]
    np.testing.assert_allclose(ix.test3d[["x1", "y1", "z1", "x2", "y2", "z2"]].to_numpy(), [[6, 7, 1, 12, 15, 4]])
    assert ix.test3d_subvolumes.n_boxes.tolist() == [1]


def test_missing_png_inside_a_slice_range_is_named(tmp_path):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    _lesion(w, 12, [5, 5, 9, 5, 7, 4, 7, 6])
    w.finish()
    (tmp_path / "Images_png" / "000007_02_01" / "015.png").unlink()
    with pytest.raises(DatasetError, match=r"000007_02_01/015\.png: missing.*DL_info\.csv:2"):
        read_dataset("deeplesion", tmp_path)


def test_corrupt_png_is_named(tmp_path):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    _lesion(w, 12, [5, 5, 9, 5, 7, 4, 7, 6])
    w.finish()
    ix = read_dataset("deeplesion", tmp_path)
    png = tmp_path / "Images_png" / "000007_02_01" / "014.png"
    png.write_bytes(png.read_bytes()[:60])   # truncated
    with pytest.raises(DatasetError, match=r"014\.png: corrupt PNG"):
        load_image(ix.volumes.iloc[0], tmp_path)


@pytest.mark.parametrize("column,value,message", [
    ("Bounding_boxes", '"1, 2, 3"', "Bounding_boxes: expected 4 numbers"),
    ("Train_Val_Test", "4", "Train_Val_Test: 4 not in 1, 2, 3"),
    ("Slice_range", '"14, 17"', "key slice 13 outside 14..17"),
    ("File_name", "000007_02_01_014.png", "disagrees with"),
])
def test_malformed_dl_info_row_is_named(tmp_path, column, value, message):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    _lesion(w, 12, [5, 5, 9, 5, 7, 4, 7, 6])
    _lesion(w, 13, [5, 5, 9, 5, 7, 4, 7, 6])
    w.finish()
    p = tmp_path / "DL_info.csv"
    rows = list(csv.reader(p.read_text().splitlines()))
    rows[2][DL_INFO_COLUMNS.index(column)] = value.strip('"')
    with open(p, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with pytest.raises(DatasetError, match=rf"DL_info\.csv:3: malformed row \(.*{message}"):
        read_dataset("deeplesion", tmp_path)


def test_recist_outside_the_image_is_named(tmp_path):
    w = DeepLesionWriter(tmp_path)
    w.write_volume(7, 2, 1, 10, _vol())
    _lesion(w, 12, [25, 5, 40, 5, 30, 4, 30, 6])
    w.finish()
    with pytest.raises(DatasetError, match=r"DL_info\.csv:2 \(Measurement_coordinates\).*outside the image"):
        read_dataset("deeplesion", tmp_path)
