"""The releases' own folder layouts: the built-in corpus, rearranged the way users really have the data
(TCIA's NIH-LN download, LUNA16 with or without subset folders, LiTS in two halves and .nii.gz,
DeepLesion's zip parts extracted one level deeper), reads back as the same volumes, lesions and voxels
as from the standard layout. `read_scan` reads each scan from its path alone, identically."""
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lens_core.datasets import DatasetError, load_image, read_dataset, read_scan
from lens_core.datasets.nihln import ANNOTATIONS_DIR


def _read(fmt, root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # DeepLesion: slice runs without a DL_info row are skipped
        return read_dataset(fmt, root)


def _assert_same(fmt, std_root, alt_root):
    """Same volumes (all columns but the file path), lesions and voxels from both layouts."""
    a, b = _read(fmt, std_root), _read(fmt, alt_root)
    assert len(a.volumes) and len(a.lesions)
    pd.testing.assert_frame_equal(a.volumes.drop(columns="source"), b.volumes.drop(columns="source"))
    # LiTS names the segmentation file a lesion came from; its folder and compression are the layout's
    strip = (lambda s: s.str.replace(r"^.*/", "", regex=True).str.replace(".nii.gz", ".nii", regex=False)) \
        if fmt == "lits" else (lambda s: s)
    pd.testing.assert_frame_equal(a.lesions.assign(source_row=strip(a.lesions.source_row)),
                                  b.lesions.assign(source_row=strip(b.lesions.source_row)))
    if a.test3d is not None:
        pd.testing.assert_frame_equal(a.test3d, b.test3d)
    for va, vb in zip(a.volumes.to_dict("records"), b.volumes.to_dict("records")):
        ia, ib = load_image(va, std_root), load_image(vb, alt_root)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib))
        assert (ia.GetSpacing(), ia.GetOrigin(), ia.GetDirection()) == (ib.GetSpacing(), ib.GetOrigin(),
                                                                        ib.GetDirection())
        # a scan read from its path alone is the reader's volume
        ic = read_scan(alt_root / vb["source"], slices=(vb["first_slice"], vb["last_slice"])) \
            if fmt == "deeplesion" else read_scan(alt_root / vb["source"])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ic), sitk.GetArrayFromImage(ia))
        np.testing.assert_allclose(ic.GetSpacing(), ia.GetSpacing())
        np.testing.assert_allclose(ic.GetOrigin(), ia.GetOrigin(), atol=1e-6)
    return b


# ---------------------------------------------------------------------------------------------- NIH-LN
def _tcia_layout(src: Path, dst: Path) -> Path:
    """CT Lymph Nodes/<case>/<study folder>/<series folder>/<any name>.dcm, annotations beside."""
    images = dst / "CT Lymph Nodes"
    for case in sorted(p for p in src.iterdir() if p.name != ANNOTATIONS_DIR):
        series = images / case.name / "09-14-2014-ABDLYMPH-abdominallymphnodes-30274" / "abdominallymphnodes-26828"
        series.mkdir(parents=True)
        files = sorted(case.rglob("*.dcm"))
        for k, f in enumerate(reversed(files)):   # names unrelated to the slice order
            shutil.copy(f, series / f"1-{k + 1:03d}.dcm")
    shutil.copytree(src / ANNOTATIONS_DIR, dst / ANNOTATIONS_DIR)
    return dst


def test_nihln_in_tcia_download_layout(tiny_corpus, tmp_path):
    std = tiny_corpus / "nihln"
    alt = _tcia_layout(std, tmp_path / "NIH-LN")
    b = _assert_same("nihln", std, alt)
    assert b.volumes.source.str.startswith("CT Lymph Nodes/").all()
    # the study and series folders' names (a study date, a description) are identifiers: not in the table
    assert (b.volumes.source == "CT Lymph Nodes/" + b.volumes.volume_id).all()
    # the images folder itself as the root, the annotation folder beside it
    _assert_same("nihln", std, alt / "CT Lymph Nodes")
    # a case's folder given to read_scan: its one series is found at any depth
    case = b.volumes.volume_id.iloc[0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_scan(alt / "CT Lymph Nodes" / case)),
                                  sitk.GetArrayFromImage(load_image(b.volumes.iloc[0], alt)))


def test_nihln_missing_case_and_second_series_are_named(tiny_corpus, tmp_path):
    alt = _tcia_layout(tiny_corpus / "nihln", tmp_path / "NIH-LN")
    cases = sorted(p.name for p in (alt / "CT Lymph Nodes").iterdir())
    moved = alt / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    shutil.move(alt / "CT Lymph Nodes" / cases[0], moved)
    with pytest.raises(DatasetError, match=rf"images of annotated case {cases[0]} are missing; looked for "
                                           rf"<root>/{cases[0]}/ and <root>/\*/{cases[0]}/.*found 1 case folders: "
                                           rf"{cases[1]}"):
        read_dataset("nihln", alt)
    shutil.move(moved / cases[0], alt / "CT Lymph Nodes")
    # a second series in the case (another folder, another SeriesInstanceUID)
    import pydicom
    from pydicom.uid import generate_uid

    case_dir = alt / "CT Lymph Nodes" / cases[1]
    other = case_dir / "other-study" / "other-series"
    other.mkdir(parents=True)
    uid = generate_uid()
    for f in sorted(case_dir.rglob("1-*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(other / f.name)
    with pytest.raises(DatasetError, match=rf"{cases[1]}: 2 DICOM series, expected one \(.*other-study/other-series/1-0\d\d\.dcm"):
        read_dataset("nihln", alt)


def test_nihln_without_annotations_says_what_it_found(tiny_corpus, tmp_path):
    alt = _tcia_layout(tiny_corpus / "nihln", tmp_path / "NIH-LN")
    shutil.rmtree(alt / ANNOTATIONS_DIR)
    with pytest.raises(DatasetError, match=rf"{ANNOTATIONS_DIR}: missing .*found in .*: CT Lymph Nodes/; expected "):
        read_dataset("nihln", alt)


# ---------------------------------------------------------------------------------------------- LUNA16
def test_luna_with_and_without_subset_folders(tiny_corpus, tmp_path):
    std = tiny_corpus / "luna"
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in std.rglob("*"):
        if f.is_file():
            shutil.copy(f, flat / f.name)   # every subset's scans and the CSVs in one folder
    # the release's lung masks share the scans' names; they must not be taken for scans
    masks = flat / "seg-lungs-LUNA16"
    masks.mkdir()
    for f in flat.glob("*.mhd"):
        shutil.copy(f, masks / f.name)
        shutil.copy(f.with_suffix(".raw"), masks / f.with_suffix(".raw").name)
    b = _assert_same("luna", std, flat)
    assert not b.volumes.source.str.contains("/").any()
    # subset<k>/ one level deeper, as the zips extract, and the CSVs in evaluationScript/annotations/
    nested = tmp_path / "nested"
    for sub in std.glob("subset*"):
        shutil.copytree(sub, nested / sub.name / sub.name)
    shutil.copytree(std, nested / "evaluationScript" / "annotations", ignore=shutil.ignore_patterns("subset*"))
    _assert_same("luna", std, nested)


def test_luna_nothing_found_lists_what_is_there(tiny_corpus, tmp_path):
    root = tmp_path / "luna"
    (root / "seg-lungs-LUNA16").mkdir(parents=True)
    for f in (tiny_corpus / "luna").rglob("*.mhd"):
        shutil.copy(f, root / "seg-lungs-LUNA16" / f.name)
    shutil.copy(tiny_corpus / "luna" / "annotations.csv", root)
    with pytest.raises(DatasetError, match=r"no LUNA16 scans found \(found: annotations\.csv, seg-lungs-LUNA16/\); "
                                           r"expected subset<k>/<seriesuid>\.mhd"):
        read_dataset("luna", root)


# ---------------------------------------------------------------------------------------------- LiTS
def test_lits_two_halves_and_nii_gz(tiny_corpus, tmp_path):
    std = tiny_corpus / "lits"
    alt = tmp_path / "LiTS"
    vols = sorted(std.glob("volume-*.nii"))
    assert len(vols) == 2
    for half, vol in zip(("Training Batch 1", "Training Batch 2"), vols):
        seg = std / vol.name.replace("volume", "segmentation")
        (alt / half).mkdir(parents=True)
        if half.endswith("1"):   # one half .nii.gz, the other .nii
            sitk.WriteImage(sitk.ReadImage(str(vol)), str(alt / half / (vol.name + ".gz")), True)
            sitk.WriteImage(sitk.ReadImage(str(seg)), str(alt / half / (seg.name + ".gz")), True)
        else:
            shutil.copy(vol, alt / half)
            shutil.copy(seg, alt / half)
    b = _assert_same("lits", std, alt)
    assert b.volumes.source.str.endswith(".nii.gz").sum() == 1
    # volumes and segmentations in separate folders (as some mirrors ship them)
    apart = tmp_path / "apart"
    (apart / "volume_pt1").mkdir(parents=True)
    (apart / "segmentations").mkdir()
    for f in std.glob("volume-*"):
        shutil.copy(f, apart / "volume_pt1")
    for f in std.glob("segmentation-*"):
        shutil.copy(f, apart / "segmentations")
    _assert_same("lits", std, apart)
    # the same volume twice is refused, not read twice
    shutil.copy(vols[0], alt / "Training Batch 2")
    with pytest.raises(DatasetError, match=r"volume-\d\.nii.*: volume \d also in .*; expected one file per volume"):
        read_dataset("lits", alt)


def test_lits_nothing_found_lists_what_is_there(tmp_path):
    (tmp_path / "lits" / "imagesTr").mkdir(parents=True)
    (tmp_path / "lits" / "imagesTr" / "liver_0.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no LiTS volumes found \(found: imagesTr/\); expected volume-<i>"):
        read_dataset("lits", tmp_path / "lits")


# ---------------------------------------------------------------------------------------------- DeepLesion
def test_deeplesion_zip_parts_one_level_deeper(tiny_corpus, tmp_path):
    std = tiny_corpus / "deeplesion"
    series = sorted((std / "Images_png").iterdir())
    # all parts extracted into one Images_png/: Images_png/Images_png/<series>/
    one = tmp_path / "one"
    shutil.copytree(std, one, ignore=shutil.ignore_patterns("Images_png"))
    shutil.copytree(std / "Images_png", one / "Images_png" / "Images_png")
    b = _assert_same("deeplesion", std, one)
    assert b.volumes.source.str.startswith("Images_png/Images_png/").all()
    # each part extracted into its own folder: Images_png_01/Images_png/<series>/, Images_png_02/...
    parts = tmp_path / "parts"
    shutil.copytree(std, parts, ignore=shutil.ignore_patterns("Images_png"))
    for k, s in enumerate(series):
        shutil.copytree(s, parts / f"Images_png_{k % 2 + 1:02d}" / "Images_png" / s.name)
    _assert_same("deeplesion", std, parts)
    # a series extracted twice is refused
    shutil.copytree(series[0], parts / "Images_png_02" / "Images_png" / series[0].name, dirs_exist_ok=True)
    shutil.copytree(series[0], parts / "Images_png_01" / "Images_png" / series[0].name, dirs_exist_ok=True)
    with pytest.raises(DatasetError, match=rf"series {series[0].name} also in .*; expected it once"):
        read_dataset("deeplesion", parts)


def test_deeplesion_nothing_found_lists_what_is_there(tiny_corpus, tmp_path):
    root = tmp_path / "dl"
    shutil.copytree(tiny_corpus / "deeplesion", root, ignore=shutil.ignore_patterns("Images_png"))
    s = next((tiny_corpus / "deeplesion" / "Images_png").iterdir())
    shutil.copytree(s, root / "pngs" / s.name)   # not below a folder named Images_png
    with pytest.raises(DatasetError, match=r"no DeepLesion series folders found \(found: DL_info\.csv, manual_3d/, "
                                           r"pngs/\); expected Images_png/<PPPPPP_SS_ss>/<NNN>\.png"):
        read_dataset("deeplesion", root)


def test_deeplesion_png_folder_read_scan_spacing(tiny_corpus, tmp_path):
    """A DeepLesion series folder alone: spacing from the DL_info.csv found above it, or given."""
    std = tiny_corpus / "deeplesion"
    ix = _read("deeplesion", std)
    v = ix.volumes.iloc[0]
    folder = std / v.source
    img = read_scan(folder, slices=(v.first_slice, v.last_slice))
    np.testing.assert_allclose(img.GetSpacing(), [v.spacing_x, v.spacing_y, v.spacing_z])
    # copied away from DL_info.csv: the spacing must be given
    alone = tmp_path / v.source.split("/")[-1]
    shutil.copytree(folder, alone)
    with pytest.raises(DatasetError, match=r"no DL_info\.csv in the three folders above it"):
        read_scan(alone, slices=(v.first_slice, v.last_slice))
    given = read_scan(alone, spacing=(0.7, 0.7, 2.5), slices=(v.first_slice, v.last_slice))
    assert given.GetSpacing() == (0.7, 0.7, 2.5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(given), sitk.GetArrayFromImage(img))
    with pytest.raises(ValueError, match=r"spacing must be three numbers of mm \(x, y, z\) in \[0.05, 50.0\]"):
        read_scan(alone, spacing=(0.7, 0.0, 2.5))


def test_no_tcia_folder_name_reaches_a_preprocessed_artifact(tiny_corpus, tmp_path):
    """Through `lens preprocess`: the TCIA study folder's date and description appear in no output file, the
    volumes.h5 attributes and every Parquet table included (issue 23: `source` carried them)."""
    import h5py

    from lens_core.cli import main

    alt = _tcia_layout(tiny_corpus / "nihln", tmp_path / "NIH-LN")
    out = tmp_path / "prep"
    assert main(["preprocess", "--format", "nihln", "--root", str(alt), "--out", str(out), "--pixel-mm", "4",
                 "--slice-mm", "5", "--no-progress"]) == 0
    identifiers = ("09-14-2014", "2014", "ABDLYMPH-abdominallymphnodes", "abdominallymphnodes-26828")
    with h5py.File(out / "volumes.h5", "r") as h5:
        attrs = [str(v) for g in h5.values() for v in g.attrs.values()] + [str(h5.attrs["lens"])]
    assert attrs and not [a for a in attrs if any(i in a for i in identifiers)]
    for table in out.glob("*.parquet"):
        blob = table.read_bytes()
        assert not [i for i in identifiers if i.encode() in blob], table
