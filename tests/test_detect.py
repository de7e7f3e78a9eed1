"""`lens detect` (issue 6): a trained LENS (+ FPR) on one scan written as NIfTI, MetaImage or a DICOM
folder finds the lesion planted in it, in the scan's own voxels and in world millimetres."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from lens_core import cli
from lens_core.boxes import iobb
from lens_core.datasets.common import atomic_write_image, make_image
from lens_core.datasets.nihln import write_dicom_series
from lens_core.inference.detect import BOX, WORLD, read_scan, to_scan_coordinates
from lens_core.fpr.train import FprTrainConfig, train_fpr
from lens_core.inference.proposals import propose, stack_proposals_3d
from lens_core.preprocess.volumes import PrepParams, map_boxes, prepare
from lens_core.training.config import TrainConfig
from lens_core.training.loop import train
from lens_core.training.synthetic import make_prep, make_volume

DATASETS = ["deeplesion", "luna"]
# the scan is 2x finer than the model's grid (1 mm pixels, 2 mm slices vs 2 / 4): each preprocessed
# voxel averages 2 x 2 x 2 equal scan voxels, so the detector sees the training domain exactly
SCALE, PAD = 2, 10  # PAD: scan voxels of air left of and above the body (removed by border clipping)
GRID = ["--pixel-mm", "2", "--slice-mm", "4"]
ORIGIN = (-80.0, 30.0, 200.0)
DIRECTION = (1, 0, 0, 0, -1, 0, 0, 0, 1)  # y flipped: preprocessing reorients to LPS, detect undoes it


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def lens_main():
    return cli.main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny LENS trained on a synthetic prep tree (as in tests/test_training_loop.py), and an FPR
    network trained on that LENS's own 3D proposals of the training volumes."""
    root = tmp_path_factory.mktemp("detect")
    prep = make_prep(root / "prep", datasets=DATASETS, n_volumes=4, depth=10, size=64, seed=3)
    cfg = TrainConfig.from_config({"datasets": DATASETS, "epochs": 12, "lr": 1e-3, "lr_steps": [10],
                                   "augment": False, "fc_dim": 128, "rois_per_image": 32})
    lens_path = train(cfg, prep, root / "lens", device="cpu", progress=False)
    from lens_core.model.lens import load_lens

    lens, _ = load_lens(lens_path)
    props = stack_proposals_3d(propose(lens, prep, "deeplesion", "train", (0, 1), DATASETS, torch.device("cpu")))
    labels = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    fpr_path = root / "fpr.pt"
    train_fpr(FprTrainConfig.for_preset("cpu", epochs=2, tp_per_epoch=32), prep / "deeplesion", props, labels,
              fpr_path, device="cpu")
    return lens_path, fpr_path


def planted_scan(seed: int = 14):
    """HU scan with one bright lesion, and the lesion's box in the scan's voxels."""
    small, boxes = make_volume(np.random.default_rng(seed), depth=10, size=64, n_lesions=1)
    hu = small.astype(np.float32) * (4095.0 / 255.0) - 1024.0  # inverse of the preprocessing window
    hu = hu.repeat(SCALE, 0).repeat(SCALE, 1).repeat(SCALE, 2)
    hu = np.pad(hu, ((0, 0), (PAD, 0), (PAD, 0)), constant_values=-1024.0)
    x1, y1, x2, y2, z1, z2 = boxes[0]
    box = np.array([x1 * SCALE + PAD, y1 * SCALE + PAD, z1 * SCALE, x2 * SCALE + PAD, y2 * SCALE + PAD, z2 * SCALE])
    return np.rint(hu).astype(np.int16), box


def write_scan(fmt: str, hu: np.ndarray, folder):
    spacing_zyx = (2.0, 1.0, 1.0)
    if fmt == "dicom":
        write_dicom_series(folder / "case", "case", hu, spacing_zyx, ORIGIN, DIRECTION)
        return folder / "case"  # the series is in case/CT/: a case folder is found through
    path = folder / {"nifti": "scan.nii.gz", "mhd": "scan.mhd"}[fmt]
    atomic_write_image(make_image(hu, spacing_zyx, ORIGIN, DIRECTION), path, compress=fmt == "nifti")
    return path


def world_box(img: sitk.Image, box) -> np.ndarray:
    corners = np.array([[x, y, z] for x in (box[0], box[3]) for y in (box[1], box[4]) for z in (box[2], box[5])]) - 0.5
    w = np.array([img.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return np.concatenate([w.min(0), w.max(0)])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nifti", "mhd", "dicom"])
def test_detect_finds_the_planted_lesion_in_a_scan_of_each_format(fmt, models, tmp_path, lens_main):
    lens_path, fpr_path = models
    hu, box = planted_scan()
    path = write_scan(fmt, hu, tmp_path)
    written = make_image(hu, (2.0, 1.0, 1.0), ORIGIN, DIRECTION)  # the geometry as written
    truth_world = world_box(written, box)
    args = ["detect", "--model", str(lens_path), "--input", str(path), "--out", str(tmp_path / "det.csv"), *GRID]
    if fmt == "nifti":  # one format also runs FPR (Eq. 4) and draws overlays
        args += ["--fpr", str(fpr_path), "--overlays", str(tmp_path / "png"), "--overlay-top", "2"]
    assert lens_main(args) == 0
    det = pd.read_csv(tmp_path / "det.csv")
    assert len(det) >= 1 and det["score"].is_monotonic_decreasing
    top = det.iloc[0]
    # the best detection is the lesion by the paper's 3D criterion (IoBB > 0.3, Sec. VI-C), in world mm
    found = top[WORLD].to_numpy(float)
    assert iobb(found, truth_world)[0] > 0.3, (found.tolist(), truth_world.tolist())
    centre = (found[:3] + found[3:]) / 2
    assert np.all((truth_world[:3] < centre) & (centre < truth_world[3:]))
    # its voxel box is the same box in the voxels of the scan as read (a DICOM reader may order the
    # slices otherwise than the array was written)
    scan = read_scan(path)
    np.testing.assert_allclose(world_box(scan, top[BOX].to_numpy(float)), found, atol=1e-2)
    truth_vox = map_boxes(box, written, scan)[0]
    assert iobb(top[BOX].to_numpy(float), truth_vox)[0] > 0.3
    assert truth_vox[2] <= top["key_slice"] < truth_vox[5]
    assert {"score_lens", "score_deeplesion", "score_luna"} <= set(det.columns)
    if fmt == "nifti":
        np.testing.assert_allclose(det["score"], (det["score_lens"] + det["score_fpr"]) / 2, atol=1e-5)
        pngs = sorted((tmp_path / "png").glob("*.png"))
        assert len(pngs) == min(2, len(det)) and all(p.stat().st_size > 0 for p in pngs)
    else:
        np.testing.assert_allclose(det["score"], det["score_lens"], atol=1e-5)


def test_detections_map_back_to_the_scans_voxels_and_world_mm():
    """Boxes found on the preprocessed grid land on the original voxels, through resampling, border
    clipping and a flipped axis."""
    hu, box = planted_scan()
    img = make_image(hu, (2.0, 1.0, 1.0), ORIGIN, DIRECTION)
    pre = prepare(img, PrepParams(2.0, 4.0))
    assert pre.crop != (0, 0)  # the air border was clipped
    on_grid = map_boxes(box, img, pre.ref, pre.crop)[0]  # where the detector sees the lesion
    det = pd.DataFrame([dict(zip(BOX, on_grid), z=int((on_grid[2] + on_grid[5]) // 2), score=0.9)])
    out = to_scan_coordinates(det, pre, img).iloc[0]
    np.testing.assert_allclose(out[BOX].to_numpy(float), box, atol=1e-4)
    np.testing.assert_allclose(out[WORLD].to_numpy(float), world_box(img, box), atol=1e-3)
    assert box[2] <= out["key_slice"] < box[5]


def test_unreadable_scans_fail_with_the_file_named_and_no_output(tmp_path, lens_main, caplog):
    (tmp_path / "broken.nii").write_bytes(b"this is not a NIfTI file")
    (tmp_path / "empty").mkdir()
    flat = tmp_path / "flat.mhd"
    atomic_write_image(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), flat)
    model = tmp_path / "lens.pt"  # never reached: the scan is read first
    for bad, message in ((tmp_path / "broken.nii", "cannot read"), (tmp_path / "empty", "no DICOM series"),
                         (tmp_path / "missing.mhd", "not found"), (flat, "3D")):
        caplog.clear()
        rc = lens_main(["detect", "--model", str(model), "--input", str(bad), "--out", str(tmp_path / "det.csv")])
        assert rc == 1
        assert str(bad) in caplog.text and message in caplog.text
        assert not (tmp_path / "det.csv").exists()
    with pytest.raises(ValueError, match="broken.nii"):
        read_scan(tmp_path / "broken.nii")
