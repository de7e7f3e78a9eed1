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
