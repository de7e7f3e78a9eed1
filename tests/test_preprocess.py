"""Preprocessing (paper Sec. VI-A): window, resampling and box mapping through physical space."""
import numpy as np
import pytest
import SimpleITK as sitk

from lens_core.preprocess.volumes import PrepParams, map_boxes, prepare, window


def test_window_maps_paper_range_to_uint8():
    hu = np.array([-2000, -1024, 1023.5, 3071, 5000], float)
    assert window(hu).tolist() == [0, 0, 128, 255, 255]


def _image_with_cube(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(1.0, 1.0, 2.0)):
    a = np.full((20, 40, 40), -1000, np.int16)  # z, y, x
    a[5:10, 10:30, 8:20] = 40  # a box: x 8..19, y 10..29, z 5..9 (voxel indices)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing(spacing)
    img.SetOrigin((-20.0, 15.0, 100.0))
    img.SetDirection(direction)
    return img, np.array([[8, 10, 5, 20, 30, 10]], float)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, -1),
                                       (1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_box_follows_the_lesion_through_resampling_and_flips(direction):
    """Wherever the header puts the axes, the mapped box still encloses the bright voxels."""
    img, box = _image_with_cube(direction)
    pre = prepare(img, PrepParams(pixel_mm=0.5, slice_mm=1.0))
    b = map_boxes(box, img, pre.ref, pre.crop)[0]
    bright = np.argwhere(pre.image > window(np.array([-200.0]))[0])  # z, y, x
    lo = bright.min(0)[::-1]
    hi = bright.max(0)[::-1] + 1
    found = np.array([lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]], float)
    # linear interpolation blurs the edge by up to one output voxel
    assert np.abs(found - b).max() <= 1.0 + 1e-6, (found, b)


def test_border_clipping_removes_air_and_keeps_box_aligned():
    img, box = _image_with_cube()
    pre = prepare(img, PrepParams(pixel_mm=1.0, slice_mm=2.0))
    # only the cube is above -900 HU: the crop keeps it plus the margin
    assert pre.image.shape[1] == 20 + 4 and pre.image.shape[2] == 12 + 4
    b = map_boxes(box, img, pre.ref, pre.crop)[0]
    np.testing.assert_allclose(b, [2, 2, 5, 14, 22, 10], atol=1e-6)


def test_float_storage_keeps_the_contrast_that_uint8_rounds_to_16_hu():
    """Issue 21, item 6: the paper keeps the window's [0, 255] as floats; uint8 rounds to 16 HU levels, more
    than the 10-20 HU between many lesions and their organ. Every storage is read on one scale."""
    from lens_core.preprocess.window import HU_MAX, HU_MIN, level
    from lens_core.model.network_input import normalize

    hu = np.linspace(-1024, 1500, 5001)
    back = {s: window(hu, s).astype(np.float64) * (HU_MAX - HU_MIN) / 255 + HU_MIN for s in ("uint8", "float16", "float32")}
    err = {s: np.abs(b - hu).max() for s, b in back.items()}
    assert 7.5 < err["uint8"] <= 8.1 and err["float16"] <= 2.0 and err["float32"] < 1e-3, err
    # a 10 HU lesion-to-liver contrast (60 vs 50 HU): one uint8 level apart or none; float16 keeps it
    pair = np.array([50.0, 60.0])
    assert np.diff(window(pair, "uint8").astype(float))[0] in (0.0, 1.0)
    assert abs(np.diff(window(pair, "float16").astype(float))[0] - 10 * 255 / 4095) < 0.05
    # the network sees the same scale whatever the storage (air -1, water ~0)
    u, f = normalize(window(hu, "uint8")), normalize(window(hu, "float16"))
    assert f.dtype == u.dtype and float((u - f).abs().max()) <= 0.5 / 64 + 1e-6
    assert abs(float(normalize(window(np.array([-1024.0]), "float16"))[0]) + 1) < 1e-6
    assert abs(float(level(-500)) - 32.63) < 0.01
    with pytest.raises(ValueError, match="storage must be one of"):
        window(hu, "int8")
    with pytest.raises(ValueError, match="storage must be one of"):
        PrepParams(storage="float64")


def test_preprocess_storage_float16_writes_floats_records_them_and_matches_uint8(tiny_corpus, tiny_prep, tmp_path):
    """`lens preprocess --storage float16`: the same volumes as uint8 within half a level, the storage in
    volumes.h5's record (read by training into lens.pt, and judged against the paper's floats)."""
    import h5py
    import pandas as pd

    from lens_core.cli import main
    from lens_core.deviations import training_deviations
    from lens_core.preprocess.schema import prep_meta

    out = tmp_path / "luna"
    assert main(["preprocess", "--format", "luna", "--root", str(tiny_corpus / "luna"), "--out", str(out),
                 "--pixel-mm", "4", "--slice-mm", "5", "--storage", "float16", "--no-progress"]) == 0
    ref = tiny_prep / "luna"
    with h5py.File(out / "volumes.h5", "r") as f, h5py.File(ref / "volumes.h5", "r") as g:
        assert sorted(f) == sorted(g)
        for vid in f:
            a, b = f[vid]["image"][()], g[vid]["image"][()]
            assert a.dtype == np.float16 and b.dtype == np.uint8 and a.shape == b.shape
            assert np.abs(a.astype(np.float64) - b).max() <= 0.5 + 0.07  # + float16's own rounding
            assert np.abs(a.astype(np.float64) - np.round(a.astype(np.float64))).max() > 0.1  # not whole levels
    pd.testing.assert_frame_equal(pd.read_parquet(out / "lesions.parquet"), pd.read_parquet(ref / "lesions.parquet"))
    meta, old = prep_meta(out), prep_meta(ref)
    assert meta["storage"] == "float16" and old["storage"] == "uint8"
    assert training_deviations({}, old)["preprocess.storage"] == {"value": "uint8", "paper": "float32"}
    assert training_deviations({}, {**meta, "storage": "float32"}).get("preprocess.storage") is None


def test_review_cards_and_the_body_mask_read_float_storage_like_uint8():
    """The review page's crops and the embedding's body box threshold the 0..255 scale, not uint8 codes."""
    from lens_core.mining.embedding import body_extents
    from lens_core.review.cards import render

    hu = np.full((3, 40, 50), -1000.0)
    hu[:, 8:30, 5:45] = 40.0   # body
    hu[:, 15:20, 20:26] = 70.0  # a lesion 30 HU above it
    u8, f16 = window(hu, "uint8"), window(hu, "float16")
    assert body_extents(u8[1]) == body_extents(f16[1]) == (5.0, 8.0, 45.0, 30.0)
    (a, wa), (b, wb) = render(u8, 1, 10, 5, 30), render(f16, 1, 10, 5, 30)
    assert a.dtype == b.dtype == np.uint8 and wa == wb
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 0.5 * 255 / (wa[1] - wa[0]) + 1


def test_the_uint8_window_of_float32_hu_rounds_as_before_storage_was_a_choice():
    """The window computed in float64 moved 5 voxels in 2 million by one level (float32 HU from SimpleITK
    had been windowed in float32), and one level anywhere retrains every model differently: the default
    run's tables must stay bit for bit."""
    rng = np.random.default_rng(0)
    hu = (rng.random(2_000_000) * 5000 - 1500).astype(np.float32)
    before = np.rint((np.clip(hu, -1024.0, 3071.0) + 1024.0) * (255.0 / 4095.0)).astype(np.uint8)
    assert np.array_equal(window(hu, "uint8"), before)
