"""NIH-LN format: DICOM series (one file a slice) + node annotations in the released text format."""
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lens_core.datasets import DatasetError, load_image, read_dataset
from lens_core.datasets.nihln import ANNOTATIONS_DIR, NihlnWriter, annotation_affine, read_annotations

SPACING_ZYX = (2.5, 0.75, 0.75)
ORIGIN = (-12.0, -10.0, -400.0)
CASE = "ABD_LYMPH_004"


def _case(tmp_path, node_kji=(5, 20, 11), diameter=9.0):
    hu = np.full((10, 32, 32), -100, np.int16)
    k, j, i = node_kji
    hu[k, j - 1:j + 2, i - 1:i + 2] = 300
    world = np.asarray(ORIGIN) + np.array([i, j, k]) * np.asarray(SPACING_ZYX[::-1])  # the node's voxel centre
    w = NihlnWriter(tmp_path)
    w.add_case(CASE, hu, SPACING_ZYX, ORIGIN, nodes=[(world + [0.2, -0.1, 0.4], diameter)])
    w.add_case("MED_LYMPH_001", hu, SPACING_ZYX, ORIGIN, nodes=[])
    w.finish()
    return hu


def test_node_at_known_world_position_lands_on_its_voxel(tmp_path):
    hu = _case(tmp_path)
    ann = tmp_path / ANNOTATIONS_DIR / CASE
    assert (ann / f"{CASE}_lymphnodes_indices.txt").read_text() == "11 20 5\n"   # released format: "x y z"
    assert (ann / f"{CASE}_lymphnodes_physicalPoints.txt").read_text() == "-3.75 5 -387.5\n"
    ix = read_dataset("nihln", tmp_path)
    assert list(ix.volumes.volume_id) == [CASE, "MED_LYMPH_001"]
    les = ix.lesions.iloc[0]
    assert (les.volume_id, les.kind, les.label_kind, les.lesion_type, les.size_mm) == (CASE, "3d", "gt", "2", 9.0)
    c = [(les.x1 + les.x2) / 2, (les.y1 + les.y2) / 2, (les.z1 + les.z2) / 2]
    np.testing.assert_allclose(c, [11.5, 20.5, 5.5], atol=1e-4)
    np.testing.assert_allclose([les.x2 - les.x1, les.z2 - les.z1], [9 / 0.75, 9 / 2.5], rtol=1e-4)
    img = load_image(ix.volumes.iloc[0], tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), hu)
    np.testing.assert_allclose(img.GetOrigin(), ORIGIN)
    np.testing.assert_allclose(img.GetSpacing(), SPACING_ZYX[::-1])
    assert img.GetMetaDataKeys() == ()


def test_written_dicom_holds_no_patient_identity(tmp_path):
    _case(tmp_path)
    files = sorted((tmp_path / CASE).rglob("*.dcm"))
    assert len(files) == 10
    ds = pydicom.dcmread(files[3])
    assert ds.PatientID == CASE and int(ds.InstanceNumber) == 4
    for tag in ("PatientName", "PatientBirthDate", "PatientSex", "PatientAge", "InstitutionName",
                "ReferringPhysicianName", "AccessionNumber", "StudyDate", "OtherPatientIDs"):
        assert tag not in ds


def test_default_diameter_when_no_sizes_file(tmp_path):
    _case(tmp_path)
    (tmp_path / ANNOTATIONS_DIR / CASE / f"{CASE}_lymphnodes_sizes.txt").unlink()
    les = read_dataset("nihln", tmp_path, default_ln_diameter_mm=15.0).lesions.iloc[0]
    assert les.size_mm == 15.0 and les.x2 - les.x1 == pytest.approx(15 / 0.75, rel=1e-4)


def test_missing_slice_in_the_series_is_named(tmp_path):
    _case(tmp_path)
    (tmp_path / CASE / "CT" / "000006.dcm").unlink()
    with pytest.raises(DatasetError, match=r"missing slice between 000005\.dcm .* and 000007\.dcm"):
        read_dataset("nihln", tmp_path)


def test_indices_that_disagree_with_the_points_are_named(tmp_path):
    _case(tmp_path)
    (tmp_path / ANNOTATIONS_DIR / CASE / f"{CASE}_lymphnodes_indices.txt").write_text("11 20 8\n")
    with pytest.raises(DatasetError, match=r"physicalPoints\.txt:1: .*indices\.txt:1 says \[11, 20, 8\]"):
        read_dataset("nihln", tmp_path)


def test_node_outside_the_image_and_malformed_lines_are_named(tmp_path):
    _case(tmp_path)
    d = tmp_path / ANNOTATIONS_DIR / CASE
    (d / f"{CASE}_lymphnodes_physicalPoints.txt").write_text("-3.75 5 -300\n")
    (d / f"{CASE}_lymphnodes_indices.txt").write_text("11 20 40\n")
    with pytest.raises(DatasetError, match=r"physicalPoints\.txt:1.*outside the image"):
        read_dataset("nihln", tmp_path)
    (d / f"{CASE}_lymphnodes_indices.txt").write_text("11 20\n")
    with pytest.raises(DatasetError, match=r"indices\.txt:1: malformed line"):
        read_dataset("nihln", tmp_path)


def test_written_annotations_fit_one_affine_like_the_release(tmp_path):
    hu = np.zeros((10, 32, 32), np.int16)
    nodes = [((-12 + 0.75 * i, -10 + 0.75 * j, -400 + 2.5 * k), 8.0) for i, j, k in [(3, 4, 1), (20, 9, 7), (30, 30, 9)]]
    NihlnWriter(tmp_path).add_case(CASE, hu, SPACING_ZYX, ORIGIN, nodes=nodes)
    a = read_annotations(tmp_path / ANNOTATIONS_DIR, CASE)
    sp, org, res = annotation_affine(a["indices"], a["points"])
    np.testing.assert_allclose(sp, SPACING_ZYX[::-1])
    np.testing.assert_allclose(org, ORIGIN, atol=1e-6)
    assert res.max() < 1e-3


def test_uneven_slice_spacing_is_named(tmp_path):
    import pydicom

    _case(tmp_path)
    f = tmp_path / CASE / "CT" / "000006.dcm"
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 0.8]   # 0.8 mm off a 2.5 mm step
    ds.save_as(f)
    with pytest.raises(DatasetError, match=r"uneven slice spacing at 000006\.dcm: step 3\.300 mm after 000005\.dcm, "
                                           r"the series' step is 2\.500 mm"):
        read_dataset("nihln", tmp_path)


def test_series_without_a_slice_count_still_reads(tmp_path):
    """Many real series carry no ImagesInAcquisition: the count check must not refuse them."""
    import pydicom

    hu = _case(tmp_path)
    for f in (tmp_path / CASE / "CT").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.ImagesInAcquisition
        ds.save_as(f)
    ix = read_dataset("nihln", tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_image(ix.volumes.iloc[0], tmp_path)), hu)
