"""The built-in corpus, written by the format writers, reads back through the same readers as real data:
every lesion a dataset labels comes back at its hidden-truth position (within 1 px / 1 slice)."""
import warnings

import numpy as np
import pandas as pd
import pytest

from lens_core.corpus.write import write_corpus
from lens_core.datasets import read_dataset

CFG = {"deeplesion": {"patients": 3}, "luna": {"cases": 2}, "lits": {"cases": 2}, "nihln": {"cases": 3}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "corpus"
    write_corpus(root, CFG, progress=False)
    return root, pd.read_parquet(root / "hidden_truth.parquet")


def _scan_key(ds, volume_id):
    return {"deeplesion": volume_id[:12], "lits": volume_id.removeprefix("volume-")}.get(ds, volume_id)


@pytest.mark.parametrize("ds", ["deeplesion", "luna", "lits", "nihln"])
def test_labeled_truth_lesions_come_back_through_the_readers(built, ds):
    root, truth = built
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ix = read_dataset(ds, root / ds)
    gt = ix.lesions[ix.lesions.label_kind == "gt"]
    labeled = truth[(truth.dataset == ds) & truth.labeled]
    assert len(gt) == len(labeled)
    for les in gt.itertuples():
        t = labeled[labeled.scan_key == _scan_key(ds, les.volume_id)]
        c = np.array([(les.x1 + les.x2) / 2, (les.y1 + les.y2) / 2, (les.z1 + les.z2) / 2])
        tc = np.c_[(t.x1 + t.x2) / 2, (t.y1 + t.y2) / 2, (t.z1 + t.z2) / 2]
        if ds == "deeplesion":   # key-slice box: its slice meets the lesion's z extent (a lesion thinner
            # than a 5 mm slice lies inside the slice rather than the slice inside the lesion)
            inside = (t.z1.to_numpy() < les.z2) & (les.z1 < t.z2.to_numpy())
            tc, c = tc[inside][:, :2], c[:2]
        assert len(tc) and np.abs(tc - c).max(axis=1).min() <= 1.0, les.lesion_id
    assert set(ix.volumes.split) <= {"train", "val", "test"}
    if ds == "deeplesion":
        assert ix.test3d is not None and set(ix.test3d_subvolumes.split) <= {"val", "test"}
