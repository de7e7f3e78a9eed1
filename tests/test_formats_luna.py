"""LUNA16 format: writer -> reader round trip, world-mm annotations with TransformMatrix flips, bad input."""
import numpy as np
import pytest
import SimpleITK as sitk

from lens_core.datasets import DatasetError, load_image, read_dataset
from lens_core.datasets.luna16 import EXCLUDED_DEFAULT_DIAMETER_MM, LunaWriter

SPACING_ZYX = (2.5, 0.8, 0.7)
ORIGIN = (40.0, -12.0, -300.0)
FLIP = np.diag([-1.0, -1.0, 1.0])  # LUNA scans with TransformMatrix -1 0 0 0 -1 0 0 0 1 exist


def _scan(blob_kji):
    hu = np.full((8, 32, 32), -800, np.int16)
    k, j, i = blob_kji
    hu[k, j - 1:j + 2, i - 1:i + 2] = 60
    return hu


def _world_of_voxel(hu, kji, direction):
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(SPACING_ZYX[::-1])
    img.SetOrigin(ORIGIN)
    img.SetDirection(direction.ravel())
    k, j, i = kji
    return img.TransformIndexToPhysicalPoint((i, j, k))


def _write(root, nodules=(), excluded=(), direction=FLIP, blob=(4, 20, 9)):
    hu = _scan(blob)
    w = LunaWriter(root)
    w.add_case(0, "1.3.6.1.4.1.99.1", hu, SPACING_ZYX, ORIGIN, direction, nodules=nodules, excluded=excluded)
    w.add_case(1, "1.3.6.1.4.1.99.2", hu, SPACING_ZYX, ORIGIN, direction)
    w.finish()
    return hu


def test_nodule_at_known_world_position_lands_on_its_voxel(tmp_path):
    blob = (4, 20, 9)
    hu = _scan(blob)
    centre = _world_of_voxel(hu, blob, FLIP)
    _write(tmp_path, nodules=[(centre, 6.0)], blob=blob)
    header = (tmp_path / "subset0" / "1.3.6.1.4.1.99.1.mhd").read_text()
    assert "TransformMatrix = -1 0 0 0 -1 0 0 0 1" in header and "ElementType = MET_SHORT" in header
    ix = read_dataset("luna", tmp_path)
    assert len(ix.volumes) == 2 and set(ix.volumes.split) <= {"train", "val"}
    les = ix.lesions.iloc[0]
    assert les.volume_id == "1.3.6.1.4.1.99.1" and les.kind == "3d" and les.label_kind == "gt"
    c = np.array([(les.x1 + les.x2) / 2, (les.y1 + les.y2) / 2, (les.z1 + les.z2) / 2])
    k, j, i = blob
    np.testing.assert_allclose(c, [i + 0.5, j + 0.5, k + 0.5], atol=1e-6)  # within 1 px / 1 slice, exactly here
    # the box spans the diameter per axis by that axis' spacing
    np.testing.assert_allclose([les.x2 - les.x1, les.z2 - les.z1], [6.0 / 0.7, 6.0 / 2.5])
    img = load_image(ix.volumes.iloc[0], tmp_path)
    arr = sitk.GetArrayFromImage(img)
    np.testing.assert_array_equal(arr, hu)
    assert img.GetDirection() == tuple(FLIP.ravel())
    # the brightest voxel of the loaded image lies inside the box
    kk, jj, ii = np.unravel_index(np.argmax(arr), arr.shape)
    assert les.x1 <= ii + 0.5 <= les.x2 and les.y1 <= jj + 0.5 <= les.y2 and les.z1 <= kk + 0.5 <= les.z2


def test_excluded_findings_without_diameter_get_the_evaluation_default(tmp_path):
    hu = _scan((4, 20, 9))
    c = _world_of_voxel(hu, (3, 10, 10), FLIP)
    _write(tmp_path, excluded=[(c, -1.0)])
    les = read_dataset("luna", tmp_path).lesions
    assert list(les.label_kind) == ["excluded"]
    assert les.size_mm.iloc[0] == EXCLUDED_DEFAULT_DIAMETER_MM
    assert les.x2.iloc[0] - les.x1.iloc[0] == pytest.approx(EXCLUDED_DEFAULT_DIAMETER_MM / 0.7)


def test_missing_raw_is_named(tmp_path):
    _write(tmp_path)
    (tmp_path / "subset1" / "1.3.6.1.4.1.99.2.raw").unlink()
    with pytest.raises(DatasetError, match=r"1\.3\.6\.1\.4\.1\.99\.2\.mhd.*99\.2\.raw is missing"):
        read_dataset("luna", tmp_path)


def test_short_raw_is_named(tmp_path):
    _write(tmp_path)
    raw = tmp_path / "subset0" / "1.3.6.1.4.1.99.1.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"99\.1\.raw: short data file \(1000 bytes"):
        read_dataset("luna", tmp_path)
    with pytest.raises(DatasetError, match="short data file"):
        load_image({"dataset": "luna", "source": "subset0/1.3.6.1.4.1.99.1.mhd"}, tmp_path)


def test_malformed_annotation_row_names_file_and_line(tmp_path):
    _write(tmp_path, nodules=[((-30.0, -5.0, -290.0), 5.0)])
    p = tmp_path / "annotations.csv"
    p.write_text(p.read_text() + "1.3.6.1.4.1.99.1,12.5,abc,-290,4\n")
    with pytest.raises(DatasetError, match=r"annotations\.csv:3: malformed row"):
        read_dataset("luna", tmp_path)


def test_nodule_outside_the_image_is_named(tmp_path):
    _write(tmp_path, nodules=[((500.0, 0.0, -290.0), 5.0)])
    with pytest.raises(DatasetError, match=r"annotations\.csv:2.*outside the image"):
        read_dataset("luna", tmp_path)


def test_annotation_for_an_absent_scan_is_named(tmp_path):
    _write(tmp_path)
    p = tmp_path / "annotations.csv"
    p.write_text(p.read_text() + "1.2.3.4,0,0,0,5\n")
    with pytest.raises(DatasetError, match=r"annotations\.csv:2: series 1\.2\.3\.4"):
        read_dataset("luna", tmp_path)


def test_a_scan_whose_name_is_not_a_seriesuid_is_refused(tmp_path):
    """A seriesuid becomes a volume id in tables, logs and the review page: markup in a file name was taken
    as one (issue 23)."""
    _write(tmp_path)
    bad = "<img src=x onerror=alert(1)>"
    (tmp_path / "subset1" / "1.3.6.1.4.1.99.2.mhd").rename(tmp_path / "subset1" / f"{bad}.mhd")
    with pytest.raises(DatasetError, match=r"is not a seriesuid \(a DICOM UID: digits and dots\)"):
        read_dataset("luna", tmp_path)


def test_lens_preprocess_refuses_a_scan_whose_name_is_not_a_seriesuid(tmp_path, caplog):
    """The same through the real entry point: one line naming the file, exit 1, no output."""
    import logging

    from lens_core.cli import main

    root = tmp_path / "luna"
    root.mkdir()
    _write(root)
    bad = "<img src=x onerror=alert(1)>"
    (root / "subset1" / "1.3.6.1.4.1.99.2.mhd").rename(root / "subset1" / f"{bad}.mhd")
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["preprocess", "--format", "luna", "--root", str(root), "--out", str(tmp_path / "prep"),
                     "--no-progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{bad}.mhd: '{bad}' is not a seriesuid" in errors[0], errors
    assert not (tmp_path / "prep").exists()
