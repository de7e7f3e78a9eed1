"""The built-in corpus (issue 2): four released formats, partial labels, hidden truth, determinism."""
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from lens_core.cli import main
from lens_core.datasets import read_dataset
from lens_core.corpus.generate import LABELED_TYPE

from conftest import FORMATS, ROOT, TINY_CONFIG, build_corpus, preprocess_all


def test_corpus_writes_the_four_released_layouts(tiny_corpus):
    assert (tiny_corpus / "deeplesion" / "DL_info.csv").exists()
    assert list((tiny_corpus / "deeplesion" / "Images_png").glob("*/*.png"))
    assert list((tiny_corpus / "luna").glob("subset*/*.mhd")) and (tiny_corpus / "luna" / "annotations.csv").exists()
    assert list(tiny_corpus.glob("lits/volume-*.nii")) and list(tiny_corpus.glob("lits/segmentation-*.nii"))
    assert list(tiny_corpus.glob("nihln/MED_ABD_LYMPH_ANNOTATIONS/*/*_lymphnodes_indices.txt"))
    stats = json.loads((tiny_corpus / "corpus.json").read_text())["stats"]
    assert {s["dataset"] for s in stats} == set(FORMATS)


def test_deeplesion_is_partially_labeled_and_single_type_sets_label_their_type_only(tiny_corpus):
    truth = pd.read_parquet(tiny_corpus / "hidden_truth.parquet")
    dl = truth[truth.dataset == "deeplesion"]
    assert dl.labeled.any() and (~dl.labeled).any(), "DeepLesion must have annotated and missing lesions"
    for ds, t in (("luna", "lung_nodule"), ("lits", "liver_tumor"), ("nihln", "lymph_node")):
        sub = truth[truth.dataset == ds]
        assert not sub[sub.lesion_type != t].labeled.any(), f"{ds} labels only {t}"
    # the same lesion instance recurs in several volumes of a patient (intra-patient matching, Sec. V-B)
    vols_per_instance = dl.groupby("instance_id").scan_key.nunique()
    assert (vols_per_instance > 1).any()


def test_lesion_at_known_position_lands_in_its_preprocessed_box(tiny_corpus, tiny_prep):
    """Every labeled lesion, placed by the corpus at a known position, goes through its format's writer
    (world mm, RECIST marks, masks, node points), the reader and preprocessing, and its label lands where
    the geometry alone predicts: within 1 px in-plane and 1 slice."""
    truth = pd.read_parquet(tiny_corpus / "hidden_truth.parquet")
    checked = 0
    for fmt in FORMATS:
        les = pd.read_parquet(tiny_prep / fmt / "lesions.parquet")
        les = les[les.label_kind == "gt"]
        link = pd.read_parquet(tiny_prep / fmt / "truth.parquet")[["instance_id", "scan_key", "volume_id"]]
        hidden = truth[(truth.dataset == fmt) & truth.labeled].merge(link, on=["instance_id", "scan_key"])
        assert len(hidden) == ((truth.dataset == fmt) & truth.labeled).sum()
        with h5py.File(tiny_prep / fmt / "volumes.h5") as h5:
            for _, t in hidden.iterrows():
                vid = [t.volume_id]
                g = h5[vid[0]]
                # identity directions: the preprocessed grid keeps voxel edges, so a continuous coordinate
                # scales by old/new spacing, then loses the border crop
                scale = np.asarray(g.attrs["orig_spacing"])[::-1] / np.asarray(g.attrs["spacing"])[::-1]
                y0, x0 = g.attrs["crop"]
                c = np.array([(t.x1 + t.x2) / 2, (t.y1 + t.y2) / 2, (t.z1 + t.z2) / 2]) * scale - [x0, y0, 0]
                cands = les[les.volume_id == vid[0]]
                cc = np.c_[(cands.x1 + cands.x2) / 2, (cands.y1 + cands.y2) / 2, cands.z + 0.5]
                d = np.abs(cc - c)
                best = d[np.argmin(d.sum(1))] if len(d) else None
                assert best is not None, f"{fmt} {vid[0]}: labeled lesion {t.instance_id} missing"
                assert best[0] <= 1.0 and best[1] <= 1.0 and best[2] <= 1.0, (fmt, t.instance_id, best)
                checked += 1
    assert checked >= 10


def test_truth_boxes_agree_with_world_geometry(tiny_corpus, tiny_prep):
    """Preprocessed truth boxes sit where the world coordinates say (HDF5 origin/spacing)."""
    from lens_core.corpus import phantom  # noqa: F401  (geometry lives in the world, checked via centres)

    for fmt in FORMATS:
        tr = pd.read_parquet(tiny_prep / fmt / "truth.parquet")
        vols = pd.read_parquet(tiny_prep / fmt / "volumes.parquet").set_index("volume_id")
        assert len(tr)
        v = vols.loc[tr.volume_id]
        assert (tr.x1.values >= -1).all() and (tr.x2.values <= v.width.values + 1).all()
        assert (tr.z1.values >= 0).all() and (tr.z2.values <= v.n_slices.values).all()
        assert (tr.x2 > tr.x1).all() and (tr.z2 > tr.z1).all()


def test_test3d_lists_every_subvolume(tiny_prep):
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(tiny_prep / "deeplesion" / "test3d.parquet").metadata[b"lens"])
    vols = pd.read_parquet(tiny_prep / "deeplesion" / "volumes.parquet")
    for split in ("val", "test"):
        assert sorted(meta["subvolumes"][split]) == sorted(vols[vols.split == split].volume_id)


def test_same_seed_gives_identical_artifacts(tiny_corpus, tiny_prep, tmp_path):
    again = preprocess_all(build_corpus(tmp_path / "c2"), tmp_path / "p2")
    for fmt in FORMATS:
        for name in ("volumes.parquet", "lesions.parquet", "truth.parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(tiny_prep / fmt / name), pd.read_parquet(again / fmt / name))
        with h5py.File(tiny_prep / fmt / "volumes.h5") as a, h5py.File(again / fmt / "volumes.h5") as b:
            assert sorted(a) == sorted(b)
            for k in a:
                np.testing.assert_array_equal(a[k]["image"][:], b[k]["image"][:])


def test_another_seed_gives_another_world(tiny_corpus, tmp_path):
    other = build_corpus(tmp_path / "c3", seed=11)
    a = pd.read_parquet(tiny_corpus / "hidden_truth.parquet")
    b = pd.read_parquet(other / "hidden_truth.parquet")
    assert not a[["x1", "y1"]].equals(b[["x1", "y1"]])


def test_heldout_cohort_has_only_the_asked_scans_and_new_patients(tiny_corpus, tmp_path):
    """`lens synthesize --set` (what `snakemake fig7` asks for its held-out cohort): no DeepLesion-like
    patients, 3 LUNA-like scans, no others; another seed, so its LUNA-like scans are new ones (their
    seriesuids derive from the seed; LiTS / NIH-LN keys are case numbers and repeat across seeds)."""
    out = tmp_path / "heldout"
    assert main(["synthesize", "--out", str(out), "--config", str(TINY_CONFIG), "--seed", "1000", "--no-progress",
                 "--set", "deeplesion.patients=0", "luna.cases=3", "lits.cases=0", "nihln.cases=0"]) == 0
    truth = pd.read_parquet(out / "hidden_truth.parquet")
    assert set(truth["dataset"]) == {"luna"} and truth["scan_key"].nunique() == 3
    corpus = pd.read_parquet(tiny_corpus / "hidden_truth.parquet")
    assert not set(truth["scan_key"]) & set(corpus["scan_key"])
    assert len(read_dataset("luna", out / "luna").volumes) == 3


@pytest.mark.parametrize("bad, says", [("luna.cases", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("luna..cases=3", "KEY=VALUE"),
                                       ("luna.cases=[1", "not valid YAML"), ("luna.casez=3", "['casez']"),
                                       ("luna=3", "corpus.luna: must be a mapping"), ("lunar.cases=3", "['lunar']")])
def test_synthesize_set_rejects_malformed_overrides(tmp_path, bad, says, caplog):
    """A typo in a corpus override is an error naming it, not a silently ignored key; nothing is written."""
    assert main(["synthesize", "--out", str(tmp_path / "c"), "--set", bad, "--no-progress"]) == 1
    assert says in caplog.text
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.tmp").exists()


def test_bad_input_fails_cleanly_and_leaves_no_artifact(tiny_corpus, tmp_path, caplog):
    """A truncated PNG inside a Slice_range: non-zero exit, an error naming the file, no output files."""
    broken = tmp_path / "dl"
    shutil.copytree(tiny_corpus / "deeplesion", broken)
    png = sorted((broken / "Images_png").glob("*/*.png"))[3]
    png.write_bytes(png.read_bytes()[:40])
    out = tmp_path / "out"
    assert main(["preprocess", "--format", "deeplesion", "--root", str(broken), "--out", str(out), "--no-progress"]) == 1
    assert png.name in caplog.text and png.parent.name in caplog.text
    assert not any(out.glob("*")), list(out.glob("*"))


def test_gathered_shards_equal_one_pass(tiny_corpus, tiny_prep, tmp_path):
    """Preprocessing scattered over 3 shards and gathered gives the same tables and images (issue 7)."""
    fmt = "deeplesion"
    dirs = []
    for i in range(3):
        d = tmp_path / f"s{i}"
        assert main(["preprocess", "--format", fmt, "--root", str(tiny_corpus / fmt), "--out", str(d),
                     "--pixel-mm", "4", "--slice-mm", "5", "--dl-box-pad-px", "0",
                     "--truth", str(tiny_corpus / "hidden_truth.parquet"),
                     "--shard", f"{i}/3", "--no-progress"]) == 0
        dirs.append(str(d))
    assert main(["gather-prep", *dirs, "--out", str(tmp_path / "g")]) == 0
    for name in ("volumes.parquet", "lesions.parquet", "truth.parquet", "test3d.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tiny_prep / fmt / name), pd.read_parquet(tmp_path / "g" / name))
    with h5py.File(tiny_prep / fmt / "volumes.h5") as a, h5py.File(tmp_path / "g" / "volumes.h5") as b:
        assert list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k]["image"][:], b[k]["image"][:])
    # --truth-out: the same truth table, kept out of the folder every later step reads (issue 21)
    apart = tmp_path / "truth" / f"{fmt}.parquet"
    assert main(["gather-prep", *dirs, "--out", str(tmp_path / "g2"), "--truth-out", str(apart)]) == 0
    assert not (tmp_path / "g2" / "truth.parquet").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(tiny_prep / fmt / "truth.parquet"), pd.read_parquet(apart))


def test_real_layout_reader_reads_the_corpus_as_real_data(tiny_corpus):
    """The same readers serve real and built-in data: no corpus-only side channel is needed."""
    for fmt in FORMATS:
        idx = read_dataset(fmt, tiny_corpus / fmt)
        assert len(idx.volumes) and len(idx.lesions)


@pytest.fixture(scope="module")
def default_scans():
    """The default run's corpus (config.yaml's `corpus:` on DEFAULT_CORPUS), generated without writing it."""
    import yaml

    from lens_core.corpus.generate import generate_scans

    return generate_scans(yaml.safe_load((ROOT / "config.yaml").read_text())["corpus"])


def test_the_default_corpus_is_shaped_like_table_1(default_scans):
    """DeepLesion-like labels dominate (the paper: 22.9 K against ~3 K), and its val/test splits hold enough
    fully annotated lesions to choose delta and sigma on and to measure sensitivity."""
    from lens_core.corpus.generate import truth_table

    truth = truth_table(default_scans)
    released = {s.key for s in default_scans if s.dataset == "deeplesion" and any(v.labeled for v in s.lesions)}
    dl = truth[(truth.dataset == "deeplesion") & truth.scan_key.isin(released)]
    single = truth[truth.dataset != "deeplesion"]
    n_train = int(dl[dl.split == "train"].labeled.sum())
    assert n_train >= 300 and n_train >= 5 * int(single.labeled.sum())
    test, val = dl[dl.split == "test"], dl[dl.split == "val"]  # every lesion of a val/test volume is a 3D box
    assert len(test) >= 300 and test.scan_key.nunique() >= 60
    assert len(val) >= 100 and val.scan_key.nunique() >= 20
    # the single-type scans keep other lesion types, present and unlabelled
    other = single[~single.labeled & single.apply(lambda r: r.lesion_type != LABELED_TYPE[r.dataset], axis=1)]
    assert set(other.dataset) == {"luna", "lits", "nihln"}


def test_each_dataset_is_its_own_scanner_domain(default_scans):
    """Noise, reconstruction kernel, slice thickness and contrast phase differ by dataset as configured,
    and the kernel shows in the pixels: a sharp kernel leaves more high-frequency energy than a smooth one."""
    from scipy import ndimage

    looks = {ds: [s.extra["look"] for s in default_scans if s.dataset == ds] for ds in FORMATS}
    thick = {ds: np.mean([s.grid.spacing[0] for s in default_scans if s.dataset == ds]) for ds in FORMATS}
    kernel = {ds: np.mean([lk.kernel for lk in looks[ds]]) for ds in FORMATS}
    assert kernel["luna"] > 0 > kernel["lits"]
    assert np.mean([lk.noise_hu for lk in looks["luna"]]) > np.mean([lk.noise_hu for lk in looks["lits"]])
    assert thick["luna"] < thick["lits"]
    assert np.mean([lk.contrast for lk in looks["lits"]]) > np.mean([lk.contrast for lk in looks["luna"]])
    dl_kernels = [lk.kernel for lk in looks["deeplesion"]]
    assert min(dl_kernels) < 0 < max(dl_kernels)  # DeepLesion: many scanners, smooth and sharp

    def high_freq(s):  # the body's soft tissue, where only noise and kernel make texture
        hu = s.hu.astype(np.float32)
        lap = ndimage.laplace(hu, mode="nearest")
        return float(np.std(lap[(hu > -150) & (hu < 150)]))

    per = {ds: np.median([high_freq(s) for s in default_scans if s.dataset == ds]) for ds in ("luna", "lits")}
    assert per["luna"] > 2 * per["lits"]


def test_the_kernel_sharpens_or_smooths_a_rendered_scan():
    from lens_core.corpus import phantom as ph

    p = ph.make_patient(np.random.default_rng(0), "k", 1, {"liver_tumor": 1}, (2, 2))
    grid = ph.scan_grid("abdomen", (150.0, 200.0), 2.5, 5.0, 64)
    lap = {}
    for k in (-1.0, 0.0, 1.0):
        hu = ph.render(p, 0, ph.SeriesLook(contrast=True, noise_hu=15.0, kernel=k), grid, np.random.default_rng(1))
        lap[k] = float(np.std(np.diff(hu.astype(np.float32), axis=2)))
    assert lap[-1.0] < lap[0.0] < lap[1.0]


def test_centre_marks_lie_in_their_scan_and_a_cut_lesion_stays_unmarked():
    """LUNA16 and NIH-LN mark a lesion at its centre: a nodule or node cut by the scan's first or last slice is
    visible but unmarked (the format could not hold its point). Fig. 7's held-out cohort (config.yaml's
    fig7.heldout: 24 scans, corpus seed 1000) has such a node in ABD_LYMPH_022, which once broke the writer."""
    import yaml

    from lens_core.corpus.generate import generate_scans

    held = yaml.safe_load((ROOT / "config.yaml").read_text())["fig7"]["heldout"]
    scans = generate_scans({"seed": held["seed"], "deeplesion": {"patients": 0},
                            "luna": {"cases": held["cases"]}, "lits": {"cases": 0}, "nihln": {"cases": held["cases"]}})
    cut = []
    for s in scans:
        for v in s.lesions:
            inside = 0 <= v.centre_idx[2] < s.grid.shape[0]
            assert inside or not v.labeled, f"{s.key}: {v.instance_id} is marked at a centre outside its scan"
            if not inside and v.lesion_type == LABELED_TYPE[s.dataset]:
                cut.append(s.key)
    assert "ABD_LYMPH_022" in cut
