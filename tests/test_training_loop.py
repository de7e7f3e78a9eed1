"""`lens train` (paper Sec. VI-B): artifacts, exact resume after a killed epoch, and real learning."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.ops import box_iou

from lens_core.inference.expert_proposals import propose
from lens_core.model.lens import load_lens
from lens_core.training.config import TrainConfig
from lens_core.training.loop import train
from synthetic_prep import make_prep

DATASETS = ["deeplesion", "luna"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


EPOCHS = 12


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep(tmp_path_factory.mktemp("prep"), datasets=DATASETS, n_volumes=2, depth=10, size=48)


def small_cfg(**kw):
    return TrainConfig.from_config({"datasets": DATASETS, "epochs": 3, "lr": 1e-3, "lr_steps": [1],
                                    "fc_dim": 64, "rois_per_image": 16, **kw})


def test_resume_after_a_killed_epoch_gives_the_weights_of_an_uninterrupted_run(prep, tmp_path):
    cfg = small_cfg()
    ref = train(cfg, prep, tmp_path / "ref", device="cpu", progress=False)

    def kill(epoch, batch):
        if epoch == 2 and batch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, prep, tmp_path / "run", device="cpu", progress=False, on_step=kill)
    assert (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "lens.pt").exists()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2  # epochs 0 and 1 were saved; epoch 2 dies mid-way
    resumed = train(cfg, prep, tmp_path / "run", device="cpu", progress=False, resume=True)

    a = torch.load(ref, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = pd.read_parquet(tmp_path / "ref" / "losses.parquet"), pd.read_parquet(tmp_path / "run" / "losses.parquet")
    pd.testing.assert_frame_equal(la, lb)
    # the lr was divided by 10 after epoch 1 (lr_steps)
    assert np.allclose(la.groupby("epoch")["lr"].first().to_numpy(), [1e-3, 1e-4, 1e-4])
    assert (tmp_path / "ref" / "losses.png").stat().st_size > 0
    # a different seed gives a different run (the equality above is not vacuous)
    other = train(small_cfg(seed=1, epochs=1), prep, tmp_path / "other", device="cpu", progress=False)
    c = torch.load(other, weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_step_budget_trains_that_many_steps_and_resumes_exactly(prep, tmp_path):
    cfg = small_cfg(steps_per_epoch=2)
    ref = train(cfg, prep, tmp_path / "ref", device="cpu", progress=False)
    losses = pd.read_parquet(tmp_path / "ref" / "losses.parquet")
    assert losses.groupby("epoch").size().tolist() == [2, 2, 2]

    def kill(epoch, batch):
        if epoch == 1 and batch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, prep, tmp_path / "run", device="cpu", progress=False, on_step=kill)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["fingerprint"]["training config"]["steps_per_epoch"] == 2  # recorded with the other fields: a change retrains
    resumed = train(cfg, prep, tmp_path / "run", device="cpu", progress=False, resume=True)
    assert _same(_weights(ref), _weights(resumed))


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_another_config_is_not_resumed(prep, tmp_path, caplog):
    """Snakemake always passes --resume: after a config change the rule retrains from scratch."""
    def kill(epoch, batch):
        if epoch == 1 and batch == 0:
            raise Killed

    with pytest.raises(Killed):
        train(small_cfg(epochs=2), prep, tmp_path / "run", device="cpu", progress=False, on_step=kill)
    cfg = small_cfg(epochs=2, lr=1e-2)
    again = train(cfg, prep, tmp_path / "run", device="cpu", progress=False, resume=True)
    assert "not resumed (other training config)" in caplog.text
    assert _same(_weights(again), _weights(train(cfg, prep, tmp_path / "fresh", device="cpu", progress=False)))


def test_a_checkpoint_of_the_older_format_is_not_resumed_but_trained_anew(prep, tmp_path, caplog):
    """A killed run's checkpoint.pt from before the one training loop (its keys: model, optimizer, scheduler,
    sampler, losses, config) is another format: with --resume (which Snakemake always passes) the rule warns
    and trains from scratch, to a fresh run's weights, instead of stopping the workflow."""
    cfg = small_cfg(epochs=1)
    (tmp_path / "run").mkdir()
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "sampler": {"seed": 0, "epoch": 1, "next_batch": 0},
                "losses": [], "config": cfg.to_dict()}, tmp_path / "run" / "checkpoint.pt")
    again = train(cfg, prep, tmp_path / "run", device="cpu", progress=False, resume=True)
    assert "not resumed (a checkpoint of another format" in caplog.text
    assert _same(_weights(again), _weights(train(cfg, prep, tmp_path / "fresh", device="cpu", progress=False)))


def test_a_truncated_checkpoint_is_one_line_naming_it(prep, tmp_path, caplog):
    """A checkpoint cut short (a full disk) made every --resume an OSError traceback (issue 23): it is refused
    like any unreadable one, in one line that names it and says what to do."""
    from lens_core.cli import main

    def kill(epoch, batch):
        if epoch == 1 and batch == 0:
            raise Killed

    cfg = small_cfg(epochs=2)
    with pytest.raises(Killed):
        train(cfg, prep, tmp_path / "run", device="cpu", progress=False, on_step=kill)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"checkpoint.pt: cannot resume: .*; remove it to train from scratch"):
        train(cfg, prep, tmp_path / "run", device="cpu", progress=False, resume=True)
    argv = ["train", "--prep-dir", str(prep), "--config-json", json.dumps(cfg.to_dict()), "--out",
            str(tmp_path / "run"), "--resume", "--no-progress"]
    assert main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and f"{ckpt}: cannot resume" in errors[0], errors


def test_a_killed_run_is_not_resumed_onto_other_labels(prep, tmp_path, caplog):
    """A mining step reran after round 2 was killed: round 2 trains on the new labels from scratch,
    identical to a fresh run on them (continuing the old run would silently mix the two label sets)."""
    import shutil

    run_prep = tmp_path / "prep"
    shutil.copytree(prep, run_prep)
    cfg = small_cfg()

    def kill(epoch, batch):
        if epoch == 1 and batch == 0:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, run_prep, tmp_path / "run", device="cpu", progress=False, on_step=kill)
    lesions = pd.read_parquet(run_prep / "luna" / "lesions.parquet")
    lesions.iloc[1:].to_parquet(run_prep / "luna" / "lesions.parquet")  # one label fewer
    resumed = train(cfg, run_prep, tmp_path / "run", device="cpu", progress=False, resume=True)
    assert "not resumed (other input tables)" in caplog.text
    fresh = train(cfg, run_prep, tmp_path / "fresh", device="cpu", progress=False)
    assert _same(_weights(resumed), _weights(fresh))
    assert not _same(_weights(fresh), _weights(train(cfg, prep, tmp_path / "old", device="cpu", progress=False)))


def test_a_killed_round_2_is_not_resumed_onto_other_round_2_labels(prep, tmp_path, caplog):
    """The same with `--labels` (round 2): the merged label table changed after a mining step reran."""
    labels = pd.concat([pd.read_parquet(prep / d / "lesions.parquet") for d in DATASETS], ignore_index=True)
    labels.to_parquet(tmp_path / "labels.parquet")
    cfg = small_cfg(epochs=2, lr_steps=[1])

    def kill(epoch, batch):
        if epoch == 1 and batch == 0:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, prep, tmp_path / "run", labels=tmp_path / "labels.parquet", device="cpu", progress=False,
              on_step=kill)
    labels.iloc[1:].to_parquet(tmp_path / "labels.parquet")
    resumed = train(cfg, prep, tmp_path / "run", labels=tmp_path / "labels.parquet", device="cpu",
                    progress=False, resume=True)
    assert "not resumed (other input tables)" in caplog.text
    fresh = train(cfg, prep, tmp_path / "fresh", labels=tmp_path / "labels.parquet", device="cpu", progress=False)
    assert _same(_weights(resumed), _weights(fresh))


def test_a_finished_run_leaves_no_checkpoint_so_a_forced_rerun_trains(prep, tmp_path, caplog):
    cfg = small_cfg(epochs=1)
    train(cfg, prep, tmp_path, device="cpu", progress=False)
    assert (tmp_path / "lens.pt").exists() and not (tmp_path / "checkpoint.pt").exists()
    caplog.clear()
    with caplog.at_level("INFO"):
        train(cfg, prep, tmp_path, device="cpu", progress=False, resume=True)
    assert "resuming" not in caplog.text and "epoch 1:" in caplog.text  # it trained the epoch again


def test_an_unreadable_checkpoint_is_a_clear_error(prep, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.pt: cannot resume"):
        train(small_cfg(epochs=1), prep, tmp_path, device="cpu", progress=False, resume=True)


def recall(df, truth):
    """Fraction of lesions found on their centre slice: one of the slice's top (k + 1) proposals, k
    the number of lesions on that slice, has IoU >= 0.5 with it (every lesion counts, labelled or
    not: the synthetic DeepLesion labels only one slice of each)."""
    hits = []
    for r in truth.itertuples():
        k = int(((truth.volume_id == r.volume_id) & (truth.z1 <= r.z) & (truth.z2 > r.z)).sum())
        p = df[(df.volume_id == r.volume_id) & (df.z == r.z)].nlargest(k + 1, "score")
        iou = box_iou(torch.tensor(p[["x1", "y1", "x2", "y2"]].to_numpy(), dtype=torch.float32),
                      torch.tensor([[r.x1, r.y1, r.x2, r.y2]], dtype=torch.float32))
        hits.append(bool((iou >= 0.5).any()))
    return float(np.mean(hits))


@pytest.mark.slow
def test_a_tiny_lens_overfits_a_tiny_corpus_to_high_recall(tmp_path):
    prep = make_prep(tmp_path / "prep", datasets=DATASETS, n_volumes=4, depth=10, size=64, seed=3)
    # every slice of a 3D lesion a positive each epoch (not the paper's one): a test of capacity, it needs the steps
    cfg = TrainConfig.from_config({"datasets": DATASETS, "epochs": EPOCHS, "lr": 1e-3, "lr_steps": [EPOCHS - 2],
                                   "augment": False, "fc_dim": 128, "rois_per_image": 32,
                                   "slices_per_lesion": None})
    untrained_cfg = TrainConfig.from_config({**cfg.to_dict(), "epochs": 1, "lr": 1e-9})
    model_path = train(cfg, prep, tmp_path / "out", device="cpu", progress=False)
    base_path = train(untrained_cfg, prep, tmp_path / "base", device="cpu", progress=False)
    losses = pd.read_parquet(tmp_path / "out" / "losses.parquet")
    first, last = (losses[losses.epoch == e][["center", "class"]].mean() for e in (0, EPOCHS - 1))
    assert (last < 0.5 * first).all(), f"Eq. 1 / class losses {first.to_dict()} -> {last.to_dict()}"
    for path, trained in ((model_path, True), (base_path, False)):
        model, _ = load_lens(path)
        for ds in DATASETS:
            df = propose(model, prep, ds, "train", (0, 1), DATASETS, torch.device("cpu"), min_score=0.0,
                         max_per_slice=10)
            r = recall(df, pd.read_parquet(prep / ds / "truth.parquet"))
            if trained:
                assert r >= 0.85, f"{ds}: recall {r:.2f} after training"
            else:
                assert r < 0.5, f"{ds}: an untrained model already finds {r:.2f}: the test proves nothing"


def test_warmup_raises_the_lr_linearly_then_hands_over_to_the_epoch_schedule(prep, tmp_path):
    # every slice a positive: epoch 1 is longer than the 3 warmup steps
    train(small_cfg(epochs=2, lr_steps=[1], warmup_steps=3, slices_per_lesion=None), prep, tmp_path, device="cpu",
          progress=False)
    lr = pd.read_parquet(tmp_path / "losses.parquet").groupby("step")["lr"].first().to_numpy()
    assert np.allclose(lr[:4], [1e-4, 4e-4, 7e-4, 1e-3])
    assert np.allclose(lr[lr.size // 2:], 1e-4)  # epoch 2: lr / 10 (lr_steps), not the warmup's value


def test_gradient_clipping_bounds_every_step_and_logs_the_norm_before_clipping(prep, tmp_path, monkeypatch):
    """One batch whose focal sum is divided by very few centre pixels must not throw the shared
    backbone off (it did in round 2 without clipping): every applied gradient is within grad_clip."""
    applied = []
    step = torch.optim.RAdam.step

    def spy(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        applied.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.RAdam, "step", spy)
    train(small_cfg(epochs=1, grad_clip=0.05), prep, tmp_path, device="cpu", progress=False)
    logged = pd.read_parquet(tmp_path / "losses.parquet")["grad_norm"].to_numpy()
    assert len(applied) == len(logged) > 0
    assert max(applied) <= 0.05 * (1 + 1e-4)
    assert (logged > 0.05).all()  # the logged norm is the one before clipping: clipping did act
    with pytest.raises(ValueError, match="grad_clip"):
        small_cfg(grad_clip=0)


def test_the_model_records_the_preprocessing_it_was_trained_at_and_detect_uses_it(prep, tmp_path, caplog):
    """`lens detect` ran a 4/5 mm model at 2/4 mm with only a warning: lens.pt had no preprocessing (issue 23)."""
    import h5py

    from lens_core.inference.detect import prep_params
    from lens_core.preprocess.schema import prep_meta

    with h5py.File(prep / "deeplesion" / "volumes.h5", "a") as f:  # as `lens preprocess --pixel-mm 4 --slice-mm 5`
        f.attrs["lens"] = '{"dataset": "deeplesion", "pixel_mm": 4.0, "slice_mm": 5.0}'
    try:
        path = train(small_cfg(epochs=1), prep, tmp_path / "run", device="cpu", progress=False)
    finally:
        with h5py.File(prep / "deeplesion" / "volumes.h5", "a") as f:
            del f.attrs["lens"]
    meta = torch.load(path, weights_only=True)["meta"]
    # a volumes.h5 written before storage was recorded is uint8
    assert meta["prep"] == {"dataset": "deeplesion", "pixel_mm": 4.0, "slice_mm": 5.0, "storage": "uint8"}
    params = prep_params(None, None, meta)
    assert (params.pixel_mm, params.slice_mm) == (4.0, 5.0) and "no preprocessing recorded" not in caplog.text
    assert prep_meta(prep / "deeplesion") == {}  # the fixture is left as it was


def test_the_paper_preset_without_weights_is_an_error_unless_training_from_scratch_is_asked():
    """`train.preset: paper` without weights trained from scratch with only a line in docs (issue 23)."""
    with pytest.raises(ValueError, match="preset paper starts from ImageNet DenseNet-121 weights"):
        TrainConfig.from_config({"preset": "paper", "slices": 9})
    cfg = TrainConfig.from_config({"preset": "paper", "slices": 9, "paper_from_scratch": True})
    from lens_core.deviations import training_deviations

    assert training_deviations(cfg.to_dict())["train.paper_from_scratch"] == {"value": True, "paper": False}
    assert TrainConfig.from_config({"preset": "paper", "slices": 9, "weights_path": "densenet121.pth"}).weights_path


def test_lens_train_refuses_the_paper_preset_without_weights_before_training(tmp_path, caplog):
    """Through the real entry point: one line, exit 1, nothing written."""
    import logging

    from lens_core.cli import main

    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["train", "--prep-dir", str(tmp_path / "prep"), "--config-json", '{"preset": "paper"}',
                     "--out", str(tmp_path / "lens"), "--no-progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "preset paper starts from ImageNet DenseNet-121 weights" in errors[0] \
        and "paper_from_scratch: true" in errors[0], errors
    assert not (tmp_path / "lens").exists()


@pytest.fixture(scope="module")
def prep_val(tmp_path_factory):
    return make_prep(tmp_path_factory.mktemp("prep_val"), datasets=DATASETS, n_volumes=4, depth=10, size=48,
                     splits=("train", "val"))


def test_val_every_writes_the_learning_curve_from_the_validation_boxes(prep_val, tmp_path):
    """Issue 21: the validation score by epoch (the first dataset's fully annotated validation volumes) is how
    a number of epochs is chosen; scoring it changes nothing in the training."""
    scored = train(small_cfg(val_every=2), prep_val, tmp_path / "scored", device="cpu", progress=False)
    curve = pd.read_parquet(tmp_path / "scored" / "val_curve.parquet")
    assert curve["epoch"].tolist() == [2, 3]  # every 2 epochs, and the last one
    assert curve["n_gt"].gt(0).all() and curve["val_average"].between(0, 1).all()
    assert (tmp_path / "scored" / "val_curve.png").stat().st_size > 0
    plain = train(small_cfg(), prep_val, tmp_path / "plain", device="cpu", progress=False)
    assert _same(_weights(scored), _weights(plain))
    assert pd.read_parquet(tmp_path / "plain" / "val_curve.parquet").empty


def test_init_from_starts_from_another_models_weights_and_refuses_other_experts(prep, tmp_path):
    first = train(small_cfg(epochs=1), prep, tmp_path / "r1", device="cpu", progress=False)
    # lr 0: every step leaves the weights where they started, so the result is the initial weights
    again = train(small_cfg(epochs=1, lr=0.0, warmup_steps=0, init_from=str(first)), prep, tmp_path / "r2",
                  device="cpu", progress=False)
    a, b = _weights(first), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
    meta = torch.load(again, weights_only=True)["meta"]
    assert meta["config"]["init_from"] == str(first)
    with pytest.raises(ValueError, match="experts"):
        train(small_cfg(datasets=["deeplesion"], init_from=str(first)), prep, tmp_path / "bad", device="cpu",
              progress=False)


def test_group_norm_is_saved_with_the_model_and_has_no_statistics_to_drift(prep, tmp_path, capsys):
    from lens_core.cli import main

    path = train(small_cfg(epochs=1, norm="group"), prep, tmp_path / "gn", device="cpu", progress=False)
    model, meta = load_lens(path)
    assert meta["norm"] == "group" and any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert main(["bn-drift", "--model", str(path), "--prep-dir", str(prep), "--batches", "2"]) == 0
    assert "no BatchNorm layers" in capsys.readouterr().out
    bn = train(small_cfg(epochs=1), prep, tmp_path / "bn", device="cpu", progress=False)
    out = tmp_path / "drift.parquet"
    assert main(["bn-drift", "--model", str(bn), "--prep-dir", str(prep), "--batches", "2", "--out", str(out)]) == 0
    drift = pd.read_parquet(out)
    assert set(drift["dataset"]) == set(DATASETS) and (drift["drift_sd"] >= 0).all()
    assert drift.groupby("dataset").size().nunique() == 1  # every BatchNorm layer, for each dataset
