"""Reading one CT scan from its file(s), refusing corrupt ones before SimpleITK reads them.

ITK's readers are lenient where a silent wrong volume is worse than an error: a NIfTI shorter than
its header says is zero-filled, a zero `pixdim` becomes 1 mm, a MetaImage whose DimSize is smaller
than its data is read as a truncated or sheared volume, and an 8-bit PNG passes for DeepLesion's
16-bit slices (value = HU + 32768) as an all-negative volume. The checks here read the headers
themselves and compare them with the data on disk; the dataset readers and
:func:`lens_core.datasets.scan_file.read_scan` (what `lens detect` reads a path with) share them.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from .common import DatasetError, _first_line

HU_OFFSET = 32768          # DeepLesion PNG value = HU + 32768
PNG_RE = re.compile(r"(\d+)\.png$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8}


# ---------------------------------------------------------------------------------------------- NIfTI
def is_nifti(path: Path) -> bool:
    return Path(path).name.lower().endswith(_NIFTI_SUFFIXES)


def nifti_header(path: Path) -> dict:
    """dim (list of sizes), pixdim (spacing per dim), bitpix, vox_offset and the data bytes the header
    promises, from a NIfTI-1 or NIfTI-2 single-file header (.nii or .nii.gz)."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read NIfTI header ({_first_line(e)})") from None
    for end in "<>":
        if len(head) >= 4 and struct.unpack(end + "i", head[:4])[0] in (348, 540):
            break
    else:
        raise DatasetError(f"{path}: not a NIfTI file (sizeof_hdr is neither 348 nor 540)")
    v2 = struct.unpack(end + "i", head[:4])[0] == 540
    need = 540 if v2 else 348
    if len(head) < need:
        raise DatasetError(f"{path}: truncated NIfTI header ({len(head)} of {need} bytes)")
    if v2:
        bitpix = struct.unpack(end + "h", head[14:16])[0]
        dim = struct.unpack(end + "8q", head[16:80])
        pixdim = struct.unpack(end + "8d", head[104:168])
        vox_offset = struct.unpack(end + "q", head[168:176])[0]
    else:
        dim = struct.unpack(end + "8h", head[40:56])
        bitpix = struct.unpack(end + "h", head[72:74])[0]
        pixdim = struct.unpack(end + "8f", head[76:108])
        vox_offset = struct.unpack(end + "f", head[108:112])[0]
    n = dim[0]
    if not 1 <= n <= 7 or any(d < 1 for d in dim[1:n + 1]):
        raise DatasetError(f"{path}: malformed NIfTI header (dim {list(dim[:n + 1] if 0 <= n <= 7 else dim)})")
    if bitpix <= 0 or bitpix % 8:
        raise DatasetError(f"{path}: malformed NIfTI header (bitpix {bitpix})")
    return {"dim": list(dim[1:n + 1]), "pixdim": list(pixdim[1:n + 1]), "bitpix": bitpix,
            "vox_offset": int(vox_offset), "data_bytes": int(np.prod(dim[1:n + 1], dtype=np.int64)) * bitpix // 8}


def check_nifti(path: Path, data: bool = True) -> dict:
    """Refuse a NIfTI whose spacing is zero or not a number, or (data=True) whose voxel data is shorter
    than the header's dim x bitpix (ITK would zero-fill the missing voxels). A .nii.gz is decompressed
    to count its bytes: a cut gzip stream and a re-compressed short file are both caught."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    h = nifti_header(path)
    for axis, (name, sp) in enumerate(zip("xyz", h["pixdim"][:3])):
        if not np.isfinite(sp) or sp == 0:
            raise DatasetError(f"{path}: voxel spacing pixdim[{axis + 1}] ({name}) is {sp:g}; expected a positive "
                               f"number of mm")
    if data:
        need = h["vox_offset"] + h["data_bytes"]
        if path.name.lower().endswith(".gz"):
            have = _gzip_length(path)
        else:
            have = path.stat().st_size
        if have < need:
            raise DatasetError(f"{path}: truncated NIfTI ({have} bytes, the header's dim {h['dim']} x "
                               f"{h['bitpix']} bits needs {need})")
    return h


def _gzip_length(path: Path) -> int:
    n = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                n += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: truncated or corrupt gzip stream ({_first_line(e)})") from None
    return n


# ---------------------------------------------------------------------------------------------- MetaImage
def metaimage_header(mhd: Path) -> tuple[dict, int]:
    """The `Key = Value` fields of a MetaImage header (up to and including ElementDataFile, which ends
    it) and the header's length in bytes (where LOCAL data starts)."""
    try:
        blob = Path(mhd).read_bytes()[:1 << 16]
    except OSError as e:
        raise DatasetError(f"{mhd}: cannot read MetaImage header ({e.strerror})") from None
    fields, pos = {}, 0
    for raw in blob.splitlines(keepends=True):
        pos += len(raw)
        line = raw.decode("latin-1").strip()
        if "=" not in line:
            continue
        k, v = (s.strip() for s in line.split("=", 1))
        fields[k] = v
        if k == "ElementDataFile":
            break
    return fields, pos


def check_metaimage(mhd: Path) -> None:
    """A MetaImage must have positive, finite spacing, and its data file must hold exactly
    DimSize x channels x element bytes after HeaderSize: more data than DimSize accounts for would be
    read as a truncated or sheared volume, less as a short one."""
    mhd = Path(mhd)
    if not mhd.is_file():
        raise DatasetError(f"{mhd}: missing")
    h, header_len = metaimage_header(mhd)
    if "ElementSpacing" not in h and "ElementSize" not in h:  # ITK would read it as 1 mm voxels
        raise DatasetError(f"{mhd}: no ElementSpacing in the header; the voxel size in mm is needed, not assumed")
    try:
        dims = [int(v) for v in h["DimSize"].split()]
        nbytes = _MET_BYTES[h["ElementType"]] * int(np.prod(dims, dtype=np.int64)) \
            * int(h.get("ElementNumberOfChannels", "1"))
        name = h["ElementDataFile"]
        spacing = [float(v) for v in h.get("ElementSpacing", h.get("ElementSize")).split()]
        header_size = int(h.get("HeaderSize", "0"))
        matrix = [float(v) for v in h.get("TransformMatrix", "").split()]
    except (KeyError, ValueError) as e:
        raise DatasetError(f"{mhd}: malformed MetaImage header (field {e})") from None
    if matrix and (len(matrix) != len(dims) ** 2 or not np.all(np.isfinite(matrix))
                   or abs(np.linalg.det(np.reshape(matrix, (len(dims), len(dims))))) < 1e-6):
        raise DatasetError(f"{mhd}: TransformMatrix {h['TransformMatrix']!r} is not an invertible "
                           f"{len(dims)}x{len(dims)} orientation")
    if not dims or min(dims) < 1:
        raise DatasetError(f"{mhd}: DimSize {h['DimSize']!r} must be positive sizes")
    if len(spacing) < len(dims) or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise DatasetError(f"{mhd}: ElementSpacing {h.get('ElementSpacing', h.get('ElementSize'))!r} must be "
                           f"{len(dims)} positive numbers of mm")
    if name == "LIST" or "%" in name:   # one file per slice: ITK checks each file's length itself
        return
    local = name == "LOCAL"
    raw = mhd if local else mhd.parent / name
    if not raw.is_file():
        raise DatasetError(f"{mhd}: its data file {name} is missing")
    have = raw.stat().st_size - (header_len if local else 0)
    if h.get("CompressedData", "False").lower() == "true":
        want = h.get("CompressedDataSize")
        if want is not None and have != int(want):
            raise DatasetError(f"{raw}: {have} bytes of compressed data, the header {mhd.name} says "
                               f"CompressedDataSize = {want}")
        return
    if header_size == -1:           # the data are the file's last bytes
        if have < nbytes:
            raise DatasetError(f"{raw}: short data file ({have} bytes, the header {mhd.name} needs {nbytes})")
        return
    have -= header_size
    if have < nbytes:
        raise DatasetError(f"{raw}: short data file ({have} bytes, the header {mhd.name} needs {nbytes})")
    if have > nbytes:
        raise DatasetError(f"{raw}: {have} bytes of data but the header {mhd.name} (DimSize {h['DimSize']}, "
                           f"{h['ElementType']}) accounts for {nbytes}; DimSize is smaller than the data")


# ---------------------------------------------------------------------------------------------- PNG
def png_depth(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR chunk."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DatasetError(f"{path}: not a PNG file")
    return head[24], head[25]


def read_png_slice(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """One DeepLesion slice: a 16-bit grayscale PNG (value = HU + 32768) -> int32 values as stored."""
    depth, colour = png_depth(path)
    if (depth, colour) != (16, 0):
        raise DatasetError(f"{path}: {depth}-bit {'grayscale' if colour == 0 else f'colour type {colour}'} PNG; "
                           f"DeepLesion slices are 16-bit grayscale (HU + 32768)")
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: corrupt PNG ({_first_line(e)})") from None
    if a.ndim != 2:
        raise DatasetError(f"{path}: not a grayscale PNG (shape {a.shape})")
    if shape is not None and a.shape != tuple(shape):
        raise DatasetError(f"{path}: size {a.shape[1]}x{a.shape[0]} differs from DL_info.csv's Image_size "
                           f"{shape[1]}x{shape[0]}")
    return a.astype(np.int32)


def png_volume(files: list[Path], spacing_xyz, first_slice: int, shape: tuple[int, int] | None = None) -> sitk.Image:
    """DeepLesion PNG slices (consecutive numbers from `first_slice`) -> int16 HU image; origin z is the
    PNG number x slice interval, so runs of one series share a frame."""
    for f in files:
        if not Path(f).is_file():
            raise DatasetError(f"{f}: missing")
    slices = [read_png_slice(f, shape) for f in files]
    if shape is None:
        for f, a in zip(files[1:], slices[1:]):
            if a.shape != slices[0].shape:
                raise DatasetError(f"{f}: size {a.shape[1]}x{a.shape[0]} differs from {Path(files[0]).name}'s "
                                   f"{slices[0].shape[1]}x{slices[0].shape[0]}")
    hu = (np.stack(slices) - HU_OFFSET).astype(np.int16)
    img = sitk.GetImageFromArray(hu)
    sx, sy, sz = (float(v) for v in spacing_xyz)
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin((0.0, 0.0, int(first_slice) * sz))
    return img


def png_numbers(folder: Path) -> dict[int, Path]:
    """Slice number -> PNG file of a DeepLesion series folder; two files of one number (045.png and 45.png)
    are refused rather than one silently replacing the other."""
    out: dict[int, Path] = {}
    for f in sorted(Path(folder).iterdir()):
        m = PNG_RE.fullmatch(f.name)
        if m:
            n = int(m.group(1))
            if n in out:
                raise DatasetError(f"{f}: slice {n} again (also {out[n].name}); expected one PNG per slice number")
            out[n] = f
    return out


# ---------------------------------------------------------------------------------------------- any scan
def check_geometry(img: sitk.Image, where) -> sitk.Image:
    """A 3D image with positive, finite spacing and an invertible direction."""
    if img.GetDimension() != 3:
        raise DatasetError(f"{where}: a {img.GetDimension()}D image; expected a 3D CT volume")
    sp = np.asarray(img.GetSpacing(), float)
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        raise DatasetError(f"{where}: voxel spacing {sp.tolist()} mm; expected positive numbers")
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1) > 1e-3:
        raise DatasetError(f"{where}: direction matrix {np.round(d, 4).tolist()} is not a rotation")
    return img


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted slice numbers -> contiguous (first, last) runs."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return [(a, b) for a, b in runs]
