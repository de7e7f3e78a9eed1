"""LiTS format: every 3D connected component of label 2 is one lesion box; bad input."""
import numpy as np
import pytest
import SimpleITK as sitk

from lens_core.datasets import DatasetError, load_image, read_dataset
from lens_core.datasets.lits import write_lits_case

SPACING_ZYX = (3.0, 0.9, 0.9)
DIRECTION = np.diag([-1.0, -1.0, 1.0])   # NIfTI RAS stored as ITK LPS


def _case():
    hu = np.full((8, 32, 32), -900, np.int16)
    seg = np.zeros(hu.shape, np.uint8)
    seg[1:7, 4:28, 4:28] = 1                     # liver
    seg[2:5, 10:14, 6:9] = 2                     # tumour A: z 2..4, y 10..13, x 6..8
    seg[5, 20, 20] = seg[6, 21, 21] = 2          # tumour B: two voxels touching at a corner (26-connected)
    hu[seg == 2] = 40
    return hu, seg


def test_each_tumour_component_is_one_box_at_its_voxels(tmp_path):
    hu, seg = _case()
    write_lits_case(tmp_path / "Training Batch 1", 7, hu, seg, SPACING_ZYX, (10.0, 20.0, -50.0), DIRECTION)
    write_lits_case(tmp_path / "Training Batch 2", 12, hu, np.where(seg == 2, 1, seg), SPACING_ZYX, (0, 0, 0))
    ix = read_dataset("lits", tmp_path)
    assert sorted(ix.volumes.volume_id) == ["volume-12", "volume-7"]
    les = ix.lesions[ix.lesions.volume_id == "volume-7"]
    boxes = sorted(les[["x1", "y1", "z1", "x2", "y2", "z2"]].to_numpy().tolist())
    assert boxes == [[6, 10, 2, 9, 14, 5], [20, 20, 5, 22, 22, 7]]
    assert (les.kind == "3d").all() and (les.label_kind == "gt").all()
    assert ix.lesions[ix.lesions.volume_id == "volume-12"].empty   # a scan without tumours has no boxes
    img = load_image("volume-7", tmp_path, index=ix)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), hu)
    np.testing.assert_allclose(img.GetSpacing(), SPACING_ZYX[::-1])
    np.testing.assert_allclose(img.GetDirection(), DIRECTION.ravel())


def test_volume_segmentation_shape_mismatch_is_named(tmp_path):
    hu, seg = _case()
    write_lits_case(tmp_path, 3, hu, seg, SPACING_ZYX, (0, 0, 0))
    bad = sitk.GetImageFromArray(seg[:6])
    bad.SetSpacing(SPACING_ZYX[::-1])
    sitk.WriteImage(bad, str(tmp_path / "segmentation-3.nii"))
    with pytest.raises(DatasetError, match=r"segmentation-3\.nii: shape \(32, 32, 6\).*volume-3\.nii \(32, 32, 8\)"):
        read_dataset("lits", tmp_path)


def test_unknown_labels_and_missing_segmentation_are_named(tmp_path):
    hu, seg = _case()
    write_lits_case(tmp_path, 3, hu, seg, SPACING_ZYX, (0, 0, 0))
    bad = sitk.ReadImage(str(tmp_path / "segmentation-3.nii"))
    bad[0, 0, 0] = 5
    sitk.WriteImage(bad, str(tmp_path / "segmentation-3.nii"))
    with pytest.raises(DatasetError, match=r"segmentation-3\.nii: labels \[5\]"):
        read_dataset("lits", tmp_path)
    (tmp_path / "segmentation-3.nii").unlink()
    with pytest.raises(DatasetError, match=r"volume-3\.nii: no segmentation-3"):
        read_dataset("lits", tmp_path)
