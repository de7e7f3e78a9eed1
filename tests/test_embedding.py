"""Lesion embeddings for intra-patient matching (paper Sec. V-B)."""

import h5py
import numpy as np
import pandas as pd
import pytest

from lens_core.io import InputError
from lens_core.mining import delta_audit, embedding
from lens_core.mining.audit import annotation_pad_px, match_truth, truth_slices
from lens_core.mining.embed_model import EncoderTraining, load_encoder, save_encoder
from lens_core.mining.intra_patient import match_intra_patient
from lens_core.tracklets import tracklets_from_table


def _write_prep(path, volumes: dict):
    path.mkdir(parents=True, exist_ok=True)
    with h5py.File(path / "volumes.h5", "w") as f:
        for vid, img in volumes.items():
            g = f.create_group(vid)
            g.create_dataset("image", data=img)
            g.attrs["spacing"] = [5.0, 2.0, 2.0]
            g.attrs["orig_spacing"] = [5.0, 2.0, 2.0]
    return path


def _body(shape, centre, axes, value=100):
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx + 0.5 - centre[0]) / axes[0]) ** 2 + ((yy + 0.5 - centre[1]) / axes[1]) ** 2 <= 1
    img = np.zeros(shape, np.uint8)
    img[:, inside] = value
    return img


def test_body_position_follows_the_body_not_the_image(tmp_path):
    """A patient lying 12 px further right: the same lesion keeps its body-relative position."""
    a = _body((3, 80, 100), (40, 40), (30, 25))
    b = _body((3, 80, 100), (52, 40), (30, 25))
    prep = _write_prep(tmp_path, {"a": a, "b": b})
    boxes = pd.DataFrame({"volume_id": ["a", "b", "a"], "z": [1, 1, 1], "x1": [30.0, 42.0, 55.0],
                          "y1": [30.0, 30.0, 30.0], "x2": [40.0, 52.0, 65.0], "y2": [40.0, 40.0, 40.0]})
    pos = embedding.position_features(boxes, prep)
    assert pos[0] == pytest.approx(pos[1], abs=1e-6)
    assert abs(pos[2, 0] - pos[0, 0]) > 0.3  # 25 px across a 60 px body
    assert pos[0, 2] == pytest.approx(np.log(20.0))  # 10 px x 2 mm


def test_user_embedding_table_is_used_by_box(tmp_path):
    boxes = pd.DataFrame({"volume_id": ["a", "a", "b"], "z": [1, 2, 1], "x1": [10.0, 10.0, 5.0],
                          "y1": [10.0, 10.0, 5.0], "x2": [20.0, 20.0, 9.0], "y2": [20.0, 20.0, 9.0]})
    # the user's table: other row order, coordinates rounded differently, an extra box
    user = boxes.iloc[[2, 0, 1]].reset_index(drop=True).copy()
    user["x1"] += 0.01
    user = pd.concat([user, boxes.head(1).assign(z=5)], ignore_index=True)
    user["embedding"] = [[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [9.0, 9.0]]
    path = tmp_path / "mine.parquet"
    user.to_parquet(path)
    keys, emb = embedding.embed(boxes, None, str(path))
    # each row L2-normalised, as every embedding is (the paper's delta is on that scale); zero stays zero
    assert np.allclose(emb, [[0.0, 0.0], [0.5 ** 0.5, 0.5 ** 0.5], [1.0, 0.0]])
    assert keys.tolist() == embedding.box_keys(boxes).tolist()
    # emb_0.. columns work too
    wide = user.drop(columns="embedding").assign(emb_0=[2.0, 0.0, 1.0, 9.0], emb_1=[0.0, 0.0, 1.0, 9.0])
    wide.to_parquet(tmp_path / "wide.parquet")
    assert np.array_equal(embedding.embed(boxes, None, tmp_path / "wide.parquet")[1], emb)
    with pytest.raises(InputError, match=r"mine\.parquet.*box row 0"):
        embedding.embed(boxes.assign(z=7), None, str(path))
    with pytest.raises(InputError, match="nothere"):
        embedding.embed(boxes, None, str(tmp_path / "nothere.parquet"))


def test_embeddings_h5_round_trip_and_lookup(tmp_path):
    boxes = pd.DataFrame({"volume_id": ["a", "b"], "z": [1, 3], "x1": [1.0, 2.0], "y1": [1.0, 2.0],
                          "x2": [5.0, 6.0], "y2": [5.0, 6.0]})
    keys = embedding.box_keys(boxes)
    emb = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    embedding.write_embeddings_h5(tmp_path / "e.h5", keys, emb, {"source": "position"})
    k, e, cfg = embedding.read_embeddings_h5(tmp_path / "e.h5")
    assert k.tolist() == keys.tolist() and np.array_equal(e, emb) and cfg == {"source": "position"}
    assert np.array_equal(embedding.lookup(k, e, boxes.iloc[::-1]), emb[::-1])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="line up"):
        embedding.write_embeddings_h5(tmp_path / "f.h5", keys[:1], emb)
    assert not (tmp_path / "f.h5").exists()
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="bad.h5"):
        embedding.read_embeddings_h5(tmp_path / "bad.h5")


@pytest.fixture(scope="module")
def dl(tiny_prep):
    prep = tiny_prep / "deeplesion"
    truth = pd.read_parquet(prep / "truth.parquet")
    ann = pd.read_parquet(prep / "lesions.parquet")
    trk = tracklets_from_table(delta_audit.proposals_from_truth(truth, prep, seed=0), 0.5)
    return prep, truth, ann, trk


@pytest.fixture(scope="module")
def encoder(dl):
    prep, _, ann, trk = dl
    groups = embedding.training_groups(ann, trk)
    model, cfg, hist = embedding.fit_encoder(groups, prep, cfg=EncoderTraining(steps=60, batch=32, seed=0))
    return model, cfg, hist


def _retrieval(dl, source, model):
    """Share of tracklets (of a lesion annotated in another volume of the patient) whose nearest
    annotation there is that same lesion, and the chance rate of a random pick."""
    prep, truth, ann, trk = dl
    centres = embedding.tracklet_centres(trk)
    _, ea = embedding.embed(ann, prep, source, encoder=model)
    _, et = embedding.embed(centres, prep, source, encoder=model)
    sl = truth_slices(truth, annotation_pad_px(prep))
    a_inst = match_truth(ann, sl)["instance_id"].to_numpy()
    t_inst = match_truth(centres, sl)["instance_id"].to_numpy()
    pat, _ = pd.factorize(pd.concat([ann["patient_id"], centres["patient_id"]]).astype(str))
    vol, _ = pd.factorize(pd.concat([ann["volume_id"], centres["volume_id"]]).astype(str))
    n = len(ann)
    ai, ti, d = match_intra_patient(pat[:n], vol[:n], ea, pat[n:], vol[n:], et, 1e9)
    pairs = pd.DataFrame({"a": ai, "t": ti, "d": d, "same": (t_inst[ti] != "") & (t_inst[ti] == a_inst[ai])})
    findable = pairs.groupby("t")["same"].transform("any")
    pairs = pairs[findable]
    nearest = pairs.sort_values(["t", "d"]).drop_duplicates("t")
    chance = pairs.groupby("t")["same"].mean().mean()
    return nearest["same"].mean(), chance, nearest["t"].nunique()


@pytest.mark.slow  # trains the encoder (shared module fixture)
def test_same_lesion_in_another_study_is_nearer_than_other_lesions(dl, encoder):
    """Sec. V-B: "the distance of two embeddings should be small if they are from the same lesion
    instance" -- for the position+size embedding and the learned (appearance+position+size) one."""
    for source in ("position", "learned"):
        rate, chance, n = _retrieval(dl, source, encoder[0])
        assert n >= 5
        assert rate >= 0.7 and rate >= chance + 0.3, (source, rate, chance)


@pytest.mark.slow  # trains the encoder (shared module fixture)
def test_encoder_training_lowers_the_contrastive_loss_and_round_trips(dl, encoder, tmp_path):
    prep, _, ann, _ = dl
    model, cfg, hist = encoder
    first = np.mean([h["loss"] for h in hist[:10]])
    last = np.mean([h["loss"] for h in hist[-10:]])
    assert last < first
    save_encoder(model, cfg, tmp_path / "enc.pt")
    again, cfg2 = load_encoder(tmp_path / "enc.pt")
    assert cfg2 == cfg
    a = embedding.embed(ann.head(4), prep, "appearance", encoder=model)[1]
    b = embedding.embed(ann.head(4), prep, "appearance", encoder=str(tmp_path / "enc.pt"))[1]
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)  # appearance block is unit length
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_encoder(tmp_path / "junk.pt")


@pytest.mark.slow  # trains the encoder (shared module fixture)
def test_learned_embedding_is_three_unit_blocks_of_equal_weight(dl, encoder):
    """LesaNNet-like: the whole vector is unit length (distances in [0, 2], the paper's delta's scale), made of
    appearance, position and size blocks that are each unit length, weighted equally (no tuned weights)."""
    prep, _, ann, _ = dl
    _, e = embedding.embed(ann.head(3), prep, "learned", encoder=encoder[0])
    pos = embedding.position_features(ann.head(3), prep)
    d = encoder[1].dim
    assert e.shape == (3, d + 3 + 2)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    for block in (e[:, :d], e[:, d:d + 3], e[:, d + 3:]):
        assert np.allclose(np.linalg.norm(block, axis=1), 1 / np.sqrt(3), atol=1e-5)
    assert np.allclose(e[:, d:d + 3] * np.sqrt(3), embedding.position_block(pos), atol=1e-6)
    assert np.allclose(e[:, d + 3:] * np.sqrt(3), embedding.size_block(pos[:, 2]), atol=1e-6)


def test_position_and_size_blocks_keep_order_and_scale():
    # the body's centre is the pole; farther from it, farther on the sphere
    p = embedding.position_block(np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.4, 0.0, 0.0]]))
    assert np.allclose(p[0], [0, 0, 1]) and np.allclose(np.linalg.norm(p, axis=1), 1)
    assert np.linalg.norm(p[1] - p[0]) < np.linalg.norm(p[2] - p[0])
    # size: a 25 % larger lesion moves the block by ~0.07; 1 mm and 200 mm are 90 degrees apart
    s = embedding.size_block(np.log([10.0, 12.5, 1.0, 200.0, 1000.0]))
    assert np.linalg.norm(s[1] - s[0]) == pytest.approx(0.066, abs=0.005)
    assert np.linalg.norm(s[3] - s[2]) == pytest.approx(np.sqrt(2))
    assert np.allclose(s[4], s[3])  # beyond the range: clipped


def test_position_embedding_is_unit_length(dl):
    prep, _, ann, _ = dl
    _, e = embedding.embed(ann.head(5), prep, "position")
    assert e.shape == (min(5, len(ann)), 5) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_tracklet_centre_is_the_middle_slice(dl):
    _, _, _, trk = dl
    long = trk.groupby("tracklet_id")["z"].agg(["min", "max", "size"]).query("size >= 3").index[0]
    c = embedding.tracklet_centres(trk)
    row = c[c["tracklet_id"] == long].iloc[0]
    z = trk.loc[trk["tracklet_id"] == long, "z"]
    assert row["z"] == (z.min() + z.max()) // 2
    assert len(c) == trk["tracklet_id"].nunique()


def test_embed_lesions_killed_with_minus_9_resumes_to_the_encoder_of_an_uninterrupted_run(dl, tmp_path):
    """Issue 24: the encoder trains in the one training loop: a checkpoint every 50 steps, and `lens
    embed-lesions --resume` after a kill -9 ends with the uninterrupted run's weights and embeddings."""
    from killing import run_killed

    from lens_core.cli import main

    prep, truth, _, trk = dl
    trk.to_parquet(tmp_path / "tracklets.parquet")

    def args(out, seed=0):
        return ["embed-lesions", "--prep-dir", prep, "--tracklets", tmp_path / "tracklets.parquet", "--source",
                "learned", "--steps", "120", "--seed", seed, "--threads", "1", "--encoder-out", out / "encoder.pt",
                "--out", out / "embeddings.h5", "--no-progress"]

    assert main([str(a) for a in args(tmp_path / "ref")]) == 0
    run_killed(args(tmp_path / "run"), epoch=1, batch=10)  # step 60 of 120
    ckpt = tmp_path / "run" / "encoder.checkpoint.pt"
    assert ckpt.exists() and not (tmp_path / "run" / "encoder.pt").exists()
    import torch

    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # steps 0-49 saved
    assert main([str(a) for a in args(tmp_path / "run")] + ["--resume"]) == 0
    assert not ckpt.exists()
    (a, _), (b, _) = load_encoder(tmp_path / "ref" / "encoder.pt"), load_encoder(tmp_path / "run" / "encoder.pt")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ka, ea = embedding.read_embeddings_h5(tmp_path / "ref" / "embeddings.h5")[:2]
    kb, eb = embedding.read_embeddings_h5(tmp_path / "run" / "embeddings.h5")[:2]
    assert np.array_equal(ea, eb) and list(ka) == list(kb)
    # another seed's checkpoint is not continued: that run trains anew, to other weights (not vacuous)
    run_killed(args(tmp_path / "other"), epoch=1, batch=0)
    assert main([str(a) for a in args(tmp_path / "other", seed=1)] + ["--resume"]) == 0
    c = load_encoder(tmp_path / "other" / "encoder.pt")[0].state_dict()
    assert not all(torch.equal(sa[k], c[k]) for k in sa)
