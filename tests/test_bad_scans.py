"""Corrupt scans and bad settings through the real `lens preprocess` / `lens gather-prep`: each case is a
corrupted copy of the built-in corpus; the run must fail (non-zero exit) with one line that names the
file (and row or slice) and says what was expected, and leave no output behind, not even a folder.

Every case here was a silent wrong result or a traceback before: ITK zero-fills a short NIfTI, reads a
zero pixdim as 1 mm and a MetaImage with too small a DimSize as a sheared volume; an 8-bit PNG read as
an all-negative volume; a shifted segmentation or a lost last DICOM slice went unnoticed; a box outside
the image was clipped; an empty DL_info.csv gave an empty dataset; shards of two datasets merged.
"""
import logging
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lens_core.cli import main
from lens_core.datasets import DatasetError, read_scan
from lens_core.io import MARKER

PREP = ["--pixel-mm", "4", "--slice-mm", "5", "--dl-box-pad-px", "0", "--no-progress"]


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


# ------------------------------------------------------------------------------------------- corruptions
# each takes the copied dataset folder, corrupts it, returns (the file the message must name, a regex)
def png_8bit(root):
    row = (root / "DL_info.csv").read_text().splitlines()[1]
    name = row.split(",")[0]                       # PPPPPP_SS_ss_NNN.png: the first row's key slice
    f = root / "Images_png" / name[:12] / name[13:]
    a = np.asarray(Image.open(f)).astype(np.int32) - 32768
    Image.fromarray(np.clip(a + 1024, 0, 255).astype(np.uint8)).save(f)
    return f, r"8-bit grayscale PNG; DeepLesion slices are 16-bit grayscale \(HU \+ 32768\)"


def nifti_truncated(root):
    f = root / "volume-0.nii"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])
    return f, r"truncated NIfTI \(\d+ bytes, the header's dim \[64, 64, \d+\] x 16 bits needs \d+\)"


def nifti_gz_cut(root):
    f = root / "volume-1.nii"
    gz = f.with_name(f.name + ".gz")
    sitk.WriteImage(sitk.ReadImage(str(f)), str(gz), True)
    f.unlink()
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])        # a download cut short
    return gz, r"truncated or corrupt gzip stream"


def nifti_gz_short(root):
    import gzip

    f = root / "volume-1.nii"
    gz = f.with_name(f.name + ".gz")
    data = f.read_bytes()
    gz.write_bytes(gzip.compress(data[: len(data) - 4096]))   # a valid gzip of a short file
    f.unlink()
    return gz, r"truncated NIfTI"


def nifti_zero_pixdim(root):
    f = root / "volume-0.nii"
    with open(f, "r+b") as fh:
        fh.seek(76 + 4 * 3)                       # NIfTI-1 pixdim[3]: the slice spacing
        fh.write(struct.pack("<f", 0.0))
    return f, r"voxel spacing pixdim\[3\] \(z\) is 0; expected a positive number of mm"


def seg_zero_pixdim(root):
    f = root / "segmentation-1.nii"
    with open(f, "r+b") as fh:
        fh.seek(76 + 4 * 1)
        fh.write(struct.pack("<f", 0.0))
    return f, r"pixdim\[1\] \(x\) is 0"


def seg_shifted_origin(root):
    f = root / "segmentation-0.nii"
    img = sitk.ReadImage(str(f))
    img.SetOrigin(tuple(np.add(img.GetOrigin(), (0.0, 0.0, 15.0))))
    sitk.WriteImage(img, str(f))
    return f, r"origin \(.*\) mm differs from its volume volume-0\.nii"


def seg_flipped(root):
    f = root / "segmentation-1.nii"
    img = sitk.ReadImage(str(f))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin(tuple(np.add(img.GetOrigin(), (0.0, 0.0, 0.0))))
    sitk.WriteImage(img, str(f))
    return f, r"direction \(-1\.0, .*\) differs from its volume volume-1\.nii"


def _edit_mhd(root, key, fn):
    f = _first(root, "*.mhd")
    lines = f.read_text().splitlines()
    for i, ln in enumerate(lines):
        if ln.split("=")[0].strip() == key:
            lines[i] = f"{key} = {fn(ln.split('=', 1)[1].split())}"
    f.write_text("\n".join(lines) + "\n")
    return f


def mhd_dimsize_small(root):
    f = _edit_mhd(root, "DimSize", lambda v: f"{v[0]} {v[1]} {int(v[2]) - 1}")
    return f.with_suffix(".raw"), r"bytes of data but the header .*\.mhd \(DimSize 64 64 \d+, MET_SHORT\) accounts " \
                                  r"for \d+; DimSize is smaller than the data"


def mhd_zero_spacing(root):
    f = _edit_mhd(root, "ElementSpacing", lambda v: f"{v[0]} 0 {v[2]}")
    return f, r"ElementSpacing '[\d.]+ 0 [\d.]+' must be 3 positive numbers of mm"


def mhd_negative_spacing(root):
    f = _edit_mhd(root, "ElementSpacing", lambda v: f"{v[0]} {v[1]} -{v[2]}")
    return f, r"ElementSpacing .* must be 3 positive numbers of mm"


def mhd_no_spacing(root):
    f = _first(root, "*.mhd")
    f.write_text("".join(ln + "\n" for ln in f.read_text().splitlines() if not ln.startswith("ElementSpacing")))
    return f, r"no ElementSpacing in the header; the voxel size in mm is needed, not assumed"  # was read as 1 mm


def mhd_singular_matrix(root):
    f = _edit_mhd(root, "TransformMatrix", lambda v: "1 0 0 0 1 0 0 0 0")
    return f, r"TransformMatrix '1 0 0 0 1 0 0 0 0' is not an invertible 3x3 orientation"  # was a traceback


def _series(root):
    case = sorted(p for p in root.iterdir() if p.name.endswith(tuple("0123456789")))[0]
    return case / "CT", sorted((case / "CT").glob("*.dcm"))


def dicom_last_slice_missing(root):
    d, files = _series(root)
    files[-1].unlink()
    return d, rf"{len(files) - 1} slices, but their ImagesInAcquisition says {len(files)}; InstanceNumbers " \
              rf"1\.\.{len(files) - 1} \(first or last slice missing\?\)"


def dicom_first_slice_missing(root):
    d, files = _series(root)
    files[0].unlink()
    return d, rf"ImagesInAcquisition says {len(files)}; InstanceNumbers 2\.\.{len(files)}"


def dicom_middle_slice_missing(root):
    d, files = _series(root)
    files[3].unlink()
    return d, rf"missing slice between {files[2].name} .* and {files[4].name}"


def dicom_foreign_slice(root):
    import pydicom
    from pydicom.uid import generate_uid

    d, files = _series(root)
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(d / "foreign.dcm")
    return d.parent, rf"{d.parent.name}: 2 DICOM series, expected one \(.*\b1 file: CT/foreign\.dcm"


def dicom_pixel_spacing_differs(root):
    import pydicom

    d, files = _series(root)
    ds = pydicom.dcmread(files[4])
    ds.PixelSpacing = [float(v) * 1.5 for v in ds.PixelSpacing]
    ds.save_as(files[4])
    return d, rf"{files[4].name}: PixelSpacing \[.*\] mm differs from {files[0].name}'s"  # was accepted


def dl_box_outside(root):
    f = root / "DL_info.csv"
    lines = f.read_text().splitlines()
    parts = re.split(r'(".*?")', lines[2])
    quoted = [i for i, p in enumerate(parts) if p.startswith('"')]
    parts[quoted[1]] = '"100, 100, 120, 120"'      # Bounding_boxes, the second quoted field
    lines[2] = "".join(parts)
    f.write_text("\n".join(lines) + "\n")
    return f, r"DL_info\.csv:3: malformed row \(column Bounding_boxes: 100, 100, 120, 120 lies outside the 64x64 " \
              r"image \(Image_size\) by more than the released 5 px margin\)"


def dl_info_no_rows(root):
    f = root / "DL_info.csv"
    f.write_text(f.read_text().splitlines()[0] + "\n")
    return f, r"no lesion rows after the header"


CASES = {
    "deeplesion": [png_8bit, dl_box_outside, dl_info_no_rows],
    "lits": [nifti_truncated, nifti_gz_cut, nifti_gz_short, nifti_zero_pixdim, seg_zero_pixdim,
             seg_shifted_origin, seg_flipped],
    "luna": [mhd_dimsize_small, mhd_zero_spacing, mhd_negative_spacing, mhd_no_spacing, mhd_singular_matrix],
    "nihln": [dicom_last_slice_missing, dicom_first_slice_missing, dicom_middle_slice_missing,
              dicom_foreign_slice, dicom_pixel_spacing_differs],
}
TABLE = [pytest.param(fmt, fn, id=f"{fmt}-{fn.__name__}") for fmt, fns in CASES.items() for fn in fns]


def _run(argv, caplog):
    """rc and the error lines of one `lens` command run in-process."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="lens"):
        rc = main(argv)
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _assert_nothing_written(top: Path, out: Path):
    assert not out.exists(), f"{out} left behind: {sorted(p.name for p in out.rglob('*'))}"
    left = [p for p in top.rglob(f".{out.name}.tmp*")]
    assert not left, f"temporary folders left behind: {left}"


@pytest.mark.parametrize("fmt, corrupt", TABLE)
def test_corrupt_scan_is_refused_by_preprocess(tiny_corpus, tmp_path, caplog, fmt, corrupt):
    root = tmp_path / fmt
    shutil.copytree(tiny_corpus / fmt, root)
    bad, message = corrupt(root)
    out = tmp_path / "prep" / "nested" / fmt
    rc, errors = _run(["preprocess", "--format", fmt, "--root", str(root), "--out", str(out), *PREP], caplog)
    assert rc == 1
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert str(bad) in errors[0], errors[0]
    assert re.search(message, errors[0]), errors[0]
    _assert_nothing_written(tmp_path, out)
    assert not (tmp_path / "prep").exists()   # the parents it would have created are gone too


def test_failed_rerun_keeps_the_previous_outputs(tiny_corpus, tmp_path, caplog):
    root = tmp_path / "lits"
    shutil.copytree(tiny_corpus / "lits", root)
    out = tmp_path / "prep"
    argv = ["preprocess", "--format", "lits", "--root", str(root), "--out", str(out), *PREP]
    assert _run(argv, caplog)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == [MARKER, "lesions.parquet", "test3d.parquet", "truth.parquet", "volumes.h5",
                              "volumes.parquet"]
    nifti_truncated(root)
    rc, errors = _run(argv, caplog)
    assert rc == 1 and "truncated NIfTI" in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_out_that_is_a_file_is_refused(tiny_corpus, tmp_path, caplog):
    out = tmp_path / "out"
    out.write_text("not a folder")
    rc, errors = _run(["preprocess", "--format", "lits", "--root", str(tiny_corpus / "lits"), "--out", str(out),
                       *PREP], caplog)
    assert rc == 1 and len(errors) == 1 and f"{out}: --out exists and is not a folder" in errors[0], errors
    assert out.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("flag, value, expected", [
    ("--pixel-mm", "0", "expected a finite number > 0"),
    ("--pixel-mm", "nan", "expected a finite number > 0"),
    ("--slice-mm", "-2", "expected a finite number > 0"),
    ("--dl-box-pad-px", "-50", "expected a finite number >= 0"),
    ("--dl-box-pad-px", "inf", "expected a finite number >= 0"),
    ("--ln-diameter-mm", "ten", "is not a number"),
])
def test_bad_preprocess_numbers_are_refused(tiny_corpus, tmp_path, capsys, flag, value, expected):
    out = tmp_path / "out"
    argv = ["preprocess", "--format", "deeplesion", "--root", str(tiny_corpus / "deeplesion"), "--out", str(out),
            *PREP, flag, value]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: '{value}'" in err and expected in err, err
    assert not out.exists()


def test_gather_of_shards_of_two_datasets_is_refused(tiny_corpus, tmp_path, caplog):
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    for fmt, shard, out in (("luna", "0/2", s0), ("lits", "1/2", s1)):
        argv = ["preprocess", "--format", fmt, "--root", str(tiny_corpus / fmt), "--out", str(out),
                "--shard", shard, *PREP]
        assert _run(argv, caplog)[0] == 0
    out = tmp_path / "gathered"
    rc, errors = _run(["gather-prep", str(s0), str(s1), "--out", str(out)], caplog)
    assert rc == 1 and len(errors) == 1
    assert f"{s1 / 'volumes.h5'}: dataset 'lits' differs from {s0 / 'volumes.h5'}'s 'luna'" in errors[0], errors[0]
    assert not out.exists()
    # one dataset's shards, but not all of them (shard 1/2 twice, 0/2 never)
    s2 = tmp_path / "s2"
    argv = ["preprocess", "--format", "lits", "--root", str(tiny_corpus / "lits"), "--out", str(s2),
            "--shard", "1/2", *PREP]
    assert _run(argv, caplog)[0] == 0
    rc, errors = _run(["gather-prep", str(s1), str(s2), "--out", str(out)], caplog)
    assert rc == 1 and "not shards 0..n-1 of one run, each once" in errors[0], errors
    assert not out.exists()


# the scan a corruption damaged, as `lens detect` would be given it
SCAN_PATH = {png_8bit: lambda f: f.parent, mhd_dimsize_small: lambda f: f.with_suffix(".mhd")}
SCAN_CASES = [pytest.param(fmt, fn, id=f"{fmt}-{fn.__name__}") for fmt, fns in CASES.items() for fn in fns
              if not fn.__name__.startswith(("seg_", "dl_"))]


@pytest.mark.parametrize("fmt, corrupt", SCAN_CASES)
def test_read_scan_refuses_the_same_corrupt_scans(tiny_corpus, tmp_path, fmt, corrupt):
    """`read_scan` (what `lens detect` reads a path with) applies the readers' checks to a lone scan."""
    root = tmp_path / fmt
    shutil.copytree(tiny_corpus / fmt, root)
    bad, message = corrupt(root)
    path = SCAN_PATH.get(corrupt, lambda f: f)(bad)
    with pytest.raises(DatasetError, match=message) as e:
        read_scan(path)
    assert str(bad) in str(e.value)


def test_read_scan_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "scan.nrrd").write_bytes(b"NRRD0004")
    with pytest.raises(DatasetError, match=r"scan\.nrrd: not a scan file read here; expected a \.nii/\.nii\.gz"):
        read_scan(tmp_path / "scan.nrrd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no DICOM series found at any depth \(found: an empty folder\)"):
        read_scan(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"nowhere: missing"):
        read_scan(tmp_path / "nowhere")
