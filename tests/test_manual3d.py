"""`lens import-manual-3d`: the authors' pickle of DeepLesion's manual 3D test set -> the reader's CSVs, read by
an unpickler that builds numpy arrays only (issue 23). The test pickle is built here with the release's
structure from the release's own content (tests/data/deeplesion-manual-3d, converted from that pickle)."""
import logging
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

from lens_core.cli import main
from lens_core.datasets.deeplesion import read_manual_3d

DATA = __import__("pathlib").Path(__file__).parent / "data" / "deeplesion-manual-3d"


def release_like(path):
    """{'val': {name: float64 (n, 6)}, 'test': {...}}, pickle protocol 3, as DeepLesion_manual_1K_test_release.pkl."""
    boxes, subs = pd.read_csv(DATA / "boxes.csv"), pd.read_csv(DATA / "subvolumes.csv")
    doc = {split: {} for split in ("val", "test")}
    for s in subs.itertuples():
        b = boxes[boxes.subvolume == s.subvolume][["x1", "y1", "z1", "x2", "y2", "z2"]]
        doc[s.split][s.subvolume] = b.to_numpy(np.float64).reshape(-1, 6)
    path.write_bytes(pickle.dumps(doc, protocol=3))
    return doc


def test_the_release_becomes_the_readers_csvs(tmp_path, caplog):
    doc = release_like(tmp_path / "release.pkl")
    with caplog.at_level(logging.INFO, logger="lens"):
        assert main(["import-manual-3d", str(tmp_path / "release.pkl"), "--out", str(tmp_path / "manual_3d")]) == 0
    assert "1000 sub-volumes, 5447 boxes" in caplog.text
    for name in ("boxes.csv", "subvolumes.csv"):  # the published conversion, line for line
        assert (tmp_path / "manual_3d" / name).read_text() == (DATA / name).read_text()
    boxes, subs = read_manual_3d(tmp_path / "manual_3d")
    assert len(subs) == 1000 and (subs.n_boxes == 0).sum() == 31 and len(boxes) == 5447
    assert sum(len(v) for v in doc["test"].values()) == (boxes.split == "test").sum()


def test_import_never_replaces_a_folder_it_did_not_write(tmp_path, caplog):
    """--out is replaced as a whole: a folder of the user's own files is refused, untouched (issue 23)."""
    release_like(tmp_path / "release.pkl")
    mine = tmp_path / "manual_3d"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["import-manual-3d", str(tmp_path / "release.pkl"), "--out", str(mine)]) == 1
    assert "holds files this project did not write here (notes.txt); nothing was changed" in caplog.text
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep"
    # a folder it wrote itself is replaced on the next import
    shutil.rmtree(mine)
    assert main(["import-manual-3d", str(tmp_path / "release.pkl"), "--out", str(mine)]) == 0
    assert main(["import-manual-3d", str(tmp_path / "release.pkl"), "--out", str(mine)]) == 0


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {Payload.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, caplog):
    Payload.marker = tmp_path / "pwned"
    doc = {"val": {"000046_03_02_086-104": np.zeros((1, 6))}, "test": {"000001_01_01_001-010": Payload()}}
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(doc, protocol=3))
    assert main(["import-manual-3d", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "manual_3d")]) == 1
    assert "evil.pkl: not the manual 3D release: refuses global posix.system (only numpy arrays are read)" \
        in caplog.text
    assert not Payload.marker.exists() and not (tmp_path / "manual_3d").exists()


@pytest.mark.parametrize("doc, message", [
    ({"train": {}}, "want a dict of splits"),
    ({"val": {"not_a_name": np.zeros((0, 6))}}, "val/not_a_name: not a sub-volume name"),
    ({"val": {"000046_03_02_086-104": np.zeros((2, 5))}}, "expected an (n, 6) array"),
    ({"val": {"000046_03_02_086-104": np.array([[1, 1, 90, 5, 5, 120.0]])}}, "outside slices 86..104"),
    ({"val": {"000046_03_02_086-104": np.array([[1, 1, 90, 5, 5, np.nan]])}}, "whole pixel and slice numbers"),
])
def test_a_pickle_of_another_shape_is_named(doc, message, tmp_path, caplog):
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(doc, protocol=3))
    assert main(["import-manual-3d", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "out")]) == 1
    assert message in caplog.text and not (tmp_path / "out").exists()
