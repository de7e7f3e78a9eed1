"""`lens ablation-table` (paper Table II / V): each row's average sensitivity as mean ± sd over seeds, the
paper's figure beside it, every row's ratio to the first, and the FROC plot of all rows; with `lens evaluate`'s
matches, each row's pooled patient-bootstrap interval and the paired interval of its difference to a reference."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lens_core.cli import main

RATES = ["FP@0.125", "FP@0.25", "FP@0.5", "FP@1", "FP@2", "FP@4", "FP@8"]


def summary(eval_dir, exp, stage, sens):
    """A summary.parquet as `lens evaluate` writes it, every rate (so the average) equal to ``sens``."""
    path = eval_dir / exp / stage / "summary.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"variant": stage, "stratum_by": by, "stratum": st, "n_gt": 41, **{r: sens for r in RATES},
             "average": sens} for by, st in [("all", "all"), ("lesion_type", "5")]]
    pd.DataFrame(rows).to_parquet(path)


@pytest.fixture
def spec(tmp_path):
    ev = tmp_path / "eval"
    for exp, a, h in [("single_s0", 0.30, None), ("single_s1", 0.36, None), ("single_s2", 0.33, None),
                      ("full_s0", None, 0.45), ("full_s1", None, 0.42), ("full_s2", None, 0.48)]:
        if a is not None:
            summary(ev, exp, "r1_dl", a)
        if h is not None:
            summary(ev, exp, "r2_fpr", h)
    return ev, {"(a) AFP, DeepLesion alone": {"stage": "r1_dl", "paper": 36.8,
                                              "exps": ["single_s0", "single_s1", "single_s2"]},
                "(h) + FPR": {"stage": "r2_fpr", "exps": ["full_s0", "full_s1", "full_s2"]}}


def test_rows_are_mean_and_sd_over_seeds_with_the_paper_and_the_ratio_to_the_first(spec, tmp_path):
    ev, rows = spec
    out = tmp_path / "ablation"
    assert main(["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    t = pd.read_parquet(out / "table.parquet").set_index("row")
    assert t.loc["(a) AFP, DeepLesion alone", "average_mean"] == pytest.approx(33.0)
    assert t.loc["(a) AFP, DeepLesion alone", "average_sd"] == pytest.approx(3.0)
    assert t.loc["(h) + FPR", "average_mean"] == pytest.approx(45.0) and (t["seeds"] == 3).all()
    md = (out / "table.md").read_text()
    assert "| **33.0 ± 3.0** | 36.8 | 3 |" in md  # ours beside the paper's figure
    assert "| **45.0 ± 3.0** | – | 3 |" in md  # a row without a paper figure
    assert "- (h) + FPR: 1.36×" in md  # 45 / 33
    with Image.open(out / "froc.png") as im:
        assert im.size[0] > 400


def test_a_missing_or_foreign_summary_is_a_clear_error(spec, tmp_path, caplog):
    ev, rows = spec
    out = tmp_path / "ablation"
    rows["(h) + FPR"]["exps"].append("full_s3")
    assert main(["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out)]) == 1
    assert "full_s3/r2_fpr/summary.parquet" in caplog.text and "(h) + FPR" in caplog.text
    rows["(h) + FPR"]["exps"].pop()
    pd.DataFrame({"volume_id": ["v"]}).to_parquet(ev / "full_s1" / "r2_fpr" / "summary.parquet")
    caplog.clear()
    assert main(["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out)]) == 1
    assert "full_s1/r2_fpr/summary.parquet (evaluation summary of lens evaluate): missing column(s)" in caplog.text
    assert not out.exists() or not any(out.iterdir())  # no partial table


def evaluated_run(eval_dir, exp, stage, quality, seed, split="test", n_patients=30):
    """`lens evaluate` of a synthetic detection set: 30 patients x 2 volumes, 1-2 lesions each; a lesion is
    found with probability ``quality`` at a random score, plus 3 FPs per volume."""
    rng = np.random.default_rng(seed)
    vols = pd.DataFrame({"volume_id": [f"p{p}_v{v}" for p in range(n_patients) for v in range(2)],
                         "patient_id": [f"p{p}" for p in range(n_patients) for _ in range(2)], "split": split})
    truth_rng = np.random.default_rng(0)  # the same truth for every run
    truth = pd.DataFrame([{"volume_id": v, "x1": 10.0 * k, "y1": 0.0, "z1": 0.0, "x2": 10.0 * k + 8, "y2": 8.0,
                           "z2": 4.0} for v in vols.volume_id for k in range(truth_rng.integers(1, 3))])
    found = truth.loc[rng.uniform(size=len(truth)) < quality].assign(score=lambda d: rng.uniform(0.3, 1, len(d)))
    fps = pd.DataFrame({"volume_id": np.repeat(vols.volume_id, 3), "x1": 100.0, "y1": 100.0, "z1": 0.0, "x2": 108.0,
                        "y2": 108.0, "z2": 4.0, "score": rng.uniform(0, 0.9, 3 * len(vols))})
    folder = eval_dir.parent / "in" / exp / stage / split
    folder.mkdir(parents=True, exist_ok=True)
    vols.to_parquet(folder / "volumes.parquet")
    truth.to_parquet(folder / "truth.parquet")
    pd.concat([found, fps], ignore_index=True).to_parquet(folder / "pred.parquet")
    out = eval_dir / exp / stage if split == "test" else eval_dir / exp / stage / split
    assert main(["evaluate", "--pred", str(folder / "pred.parquet"), "--truth", str(folder / "truth.parquet"),
                 "--protocol", "lens3d", "--units", str(folder / "volumes.parquet"), "--unit-column", "volume_id",
                 "--split", split, "--bootstrap", "0", "--out", str(out)]) == 0


def test_pooled_intervals_and_paired_differences_with_their_verdicts(tmp_path):
    ev = tmp_path / "eval"
    for split in ("test", "val"):
        for s in range(3):
            shift = 100 if split == "val" else 0  # other detections on the validation split
            evaluated_run(ev, f"single_s{s}", "r1_dl", 0.35, 10 + s + shift, split)
            evaluated_run(ev, f"full_s{s}", "r2_fpr", 0.85, 20 + s + shift, split)
    rows = {"(a) AFP, DeepLesion alone": {"stage": "r1_dl", "paper": 36.8, "exps": [f"single_s{s}" for s in range(3)]},
            "(h) + FPR": {"stage": "r2_fpr", "paper": 50.4, "exps": [f"full_s{s}" for s in range(3)],
                          "vs": "(a) AFP, DeepLesion alone"},
            "(a) again": {"stage": "r1_dl", "paper": 30.0, "exps": [f"single_s{s}" for s in range(3)],
                          "vs": "(a) AFP, DeepLesion alone"}}
    out = tmp_path / "ablation"
    argv = ["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out),
            "--bootstrap", "500", "--val"]
    assert main(argv) == 0
    t = pd.read_parquet(out / "table.parquet").set_index("row")
    a = t.loc["(a) AFP, DeepLesion alone"]
    assert a["average_low"] < a["average_mean"] < a["average_high"]  # the seed mean inside its interval
    assert a["val_average_low"] < a["val_average_mean"] < a["val_average_high"]
    assert a["val_average_mean"] != a["average_mean"]
    d = pd.read_parquet(out / "differences.parquet").set_index(["row", "split"])
    h = d.loc[("(h) + FPR", "test")]
    assert h["delta"] == pytest.approx(t.loc["(h) + FPR", "average_mean"] - a["average_mean"])
    assert 0 < h["delta_low"] < h["delta"] < h["delta_high"] and h["verdict"] == "reproduced"
    same = d.loc[("(a) again", "test")]  # the same runs: every draw's difference is 0
    assert same["delta_low"] == same["delta_high"] == 0 and same["verdict"] == "not resolved at this size"
    md = (out / "table.md").read_text()
    assert f"| (h) + FPR | (a) AFP, DeepLesion alone | test | {h['delta']:+.1f} | " in md
    assert "| +13.6 | reproduced |" in md  # the paper's difference, 50.4 - 36.8
    assert "two-level percentile bootstrap (500 draws): each draw resamples the 30 test patients" in md
    # the same command again: the same seed, the same intervals
    assert main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "differences.parquet").set_index(["row", "split"]), d)
    # a reference that is not a row is refused before anything is written
    rows["(h) + FPR"]["vs"] = "(z) missing"
    assert main(argv[:2] + [json.dumps(rows)] + argv[3:5] + ["--out", str(tmp_path / "bad")] + argv[7:]) == 1
    assert not (tmp_path / "bad").exists()
    # ... also without a bootstrap, and a run without one replaces an earlier run's differences by none
    assert main(argv[:2] + [json.dumps(rows)] + argv[3:5] + ["--out", str(tmp_path / "bad"), "--bootstrap", "0"]) == 1
    rows["(h) + FPR"]["vs"] = "(a) AFP, DeepLesion alone"
    assert main(argv[:2] + [json.dumps(rows)] + argv[3:7] + ["--bootstrap", "0"]) == 0
    assert pd.read_parquet(out / "differences.parquet").empty and "average_low" not in pd.read_parquet(
        out / "table.parquet").columns


def test_a_row_compared_with_several_references_gets_one_paired_difference_each(tmp_path):
    # Table V: separate models against the single-dataset row (+2.8 in the paper) and the proposed one (-8.0)
    ev = tmp_path / "eval"
    for s in range(2):
        # rows far apart: the intervals resample the two seeds too (two-level), as wide as one seed's
        evaluated_run(ev, f"single_s{s}", "r1_dl", 0.15, 10 + s)
        evaluated_run(ev, f"sep_s{s}", "sep_fused", 0.6, 20 + s)
        evaluated_run(ev, f"full_s{s}", "r2_fused", 0.98, 30 + s)
    rows = {"single": {"stage": "r1_dl", "paper": 36.8, "exps": ["single_s0", "single_s1"]},
            "proposed": {"stage": "r2_fused", "paper": 47.6, "exps": ["full_s0", "full_s1"]},
            "separate": {"stage": "sep_fused", "paper": 39.6, "exps": ["sep_s0", "sep_s1"],
                         "vs": ["single", "proposed"]}}
    out = tmp_path / "ablation"
    argv = ["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out),
            "--bootstrap", "300"]
    assert main(argv) == 0
    t = pd.read_parquet(out / "table.parquet").set_index("row")["average_mean"]
    d = pd.read_parquet(out / "differences.parquet").set_index("vs")
    assert list(d.index) == ["single", "proposed"] and set(d["row"]) == {"separate"}
    assert d.loc["single", "delta"] == pytest.approx(t["separate"] - t["single"])
    assert d.loc["proposed", "delta"] == pytest.approx(t["separate"] - t["proposed"])
    assert d.loc["single", "paper_delta"] == pytest.approx(2.8)
    assert d.loc["proposed", "paper_delta"] == pytest.approx(-8.0)
    # each difference has its own interval, on the side of zero that its sign says
    assert d.loc["single", "delta_low"] > 0 and d.loc["proposed", "delta_high"] < 0
    assert (d.loc["single", "verdict"], d.loc["proposed", "verdict"]) == ("reproduced", "reproduced")
    # one unknown label in the list is refused, naming it, and nothing is written
    rows["separate"]["vs"] = ["single", "(z) missing"]
    bad = tmp_path / "bad"
    assert main(argv[:2] + [json.dumps(rows)] + argv[3:5] + ["--out", str(bad)] + argv[7:]) == 1
    assert not bad.exists()


def test_verdict_needs_the_interval_to_exclude_zero_with_the_papers_sign():
    from lens_core.paper_tables.ablation import verdict

    assert verdict(0.5, 3.0, 2.0) == "reproduced"
    assert verdict(-3.0, -0.5, 2.0) == "contradicted"
    assert verdict(-0.5, 3.0, 2.0) == verdict(-3.0, 0.5, -2.0) == "not resolved at this size"
