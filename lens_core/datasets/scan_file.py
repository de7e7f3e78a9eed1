"""One CT scan from a path, whatever its released format (what `lens detect` reads): a NIfTI or MetaImage
file, a folder of one DICOM series, or a DeepLesion folder of 16-bit PNG slices, refused when corrupt by the
checks of :mod:`lens_core.datasets.scans`. It sits above the format readers, since a DeepLesion folder needs
DL_info.csv's spacing and a DICOM folder NIH-LN's series reader.

    read_scan(path, *, spacing=None, dl_info=None, slices=None) -> SimpleITK.Image (HU)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .common import DatasetError, read_image
from .deeplesion import series_spacing
from .nihln import find_series_dir, read_dicom_series
from .scans import _runs, check_geometry, check_metaimage, check_nifti, is_nifti, png_numbers, png_volume


# a voxel size in mm that a CT can have (1e-9 passed, 1000 ended in an ITK traceback while resampling)
SPACING_MM = (0.05, 50.0)


def read_scan(path, *, spacing=None, dl_info=None, slices: tuple[int, int] | None = None) -> sitk.Image:
    """One CT scan from a path, through the same checks as the dataset readers -> SimpleITK image in HU
    with spacing, origin and direction, and no metadata (no patient fields).

    path:
      - `*.nii` / `*.nii.gz` (LiTS): header checked (pixdim > 0, data as long as dim x bitpix);
      - `*.mhd` (LUNA16) / `*.mha`: spacing > 0, data exactly DimSize x element bytes;
      - a folder holding one DICOM series at any depth (NIH-LN; TCIA's case/study/series folders): one
        series only, no missing slice (even z steps, InstanceNumber without gaps, ImagesInAcquisition
        when present), one size and orientation;
      - a DeepLesion series folder of `<NNN>.png` (16-bit, HU + 32768): spacing (x, y, z mm) from
        `spacing=`, else from the DL_info.csv rows of that series (`dl_info=` or the first DL_info.csv
        found in the three folders above it). `slices=(first, last)` picks one run of PNG numbers;
        without it the folder must hold one contiguous run.
    spacing is for PNG folders only (the other formats carry their own). Raises DatasetError
    (a ValueError) naming the file, and the slice or row where one is at fault.
    """
    path = Path(path)
    if spacing is not None:
        spacing = tuple(float(v) for v in spacing)
        lo, hi = SPACING_MM
        if len(spacing) != 3 or not all(np.isfinite(v) and lo <= v <= hi for v in spacing):
            raise ValueError(f"spacing must be three numbers of mm (x, y, z) in [{lo}, {hi}] as a CT's are, "
                             f"got {spacing}")
        if dl_info is not None:
            raise ValueError("give the spacing or DL_info.csv, not both (--spacing would silently win)")
    if path.is_file():
        name = path.name.lower()
        if is_nifti(path):
            check_nifti(path)
        elif name.endswith((".mhd", ".mha")):
            check_metaimage(path)
        else:
            raise DatasetError(f"{path}: not a scan file read here; expected a .nii/.nii.gz or .mhd/.mha file, a "
                               f"folder of one DICOM series, or a DeepLesion folder of 16-bit PNG slices")
        if spacing is not None:
            raise ValueError(f"{path}: spacing is given by the file's header; --spacing is for DeepLesion "
                             f"PNG folders only")
        img = read_image(path)
        for k in img.GetMetaDataKeys():
            img.EraseMetaData(k)
        return check_geometry(img, path)
    if not path.is_dir():
        raise DatasetError(f"{path}: missing")
    numbers = png_numbers(path)
    if numbers:
        return _read_png_folder(path, numbers, spacing, dl_info, slices)
    if spacing is not None:
        raise ValueError(f"{path}: a DICOM series carries its spacing; --spacing is for DeepLesion PNG folders only")
    return check_geometry(read_dicom_series(find_series_dir(path)), path)


def _read_png_folder(folder: Path, numbers: dict[int, Path], spacing, dl_info, slices) -> sitk.Image:
    runs = _runs(sorted(numbers))
    if slices is not None:
        first, last = (int(v) for v in slices)
        # the first number of first..last that no run holds, found from the runs (a range of two billion
        # slice numbers was once listed one by one: ~64 GB before failing)
        missing = first
        for a, b in runs:
            if a <= missing <= b:
                missing = b + 1
        if first > last or missing <= last:
            raise DatasetError(f"{folder / f'{missing:03d}.png'}: missing, but inside the "
                               f"requested slices {first}..{last} (the folder holds runs "
                               f"{', '.join(f'{a}-{b}' for a, b in runs)})")
    elif len(runs) != 1:
        raise DatasetError(f"{folder}: {len(runs)} separate runs of slices ({', '.join(f'{a}-{b}' for a, b in runs)});"
                           f" choose one (lens detect --slices FIRST-LAST)")
    else:
        first, last = runs[0]
    shape = None
    if spacing is None:
        spacing, shape = series_spacing(folder, dl_info)
    return png_volume([numbers[n] for n in range(first, last + 1)], spacing, first, shape)
