"""`lens ablation-table` (paper Table II / V): each row's average sensitivity as mean ± sd over seeds, the
paper's figure beside it, every row's ratio to the first, and the FROC plot of all rows."""
import json

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
    assert main(["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out)]) == 0
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
    assert main(["ablation-table", "--spec", json.dumps(rows), "--eval-dir", str(ev), "--out", str(out)]) == 1
    assert "no 'all' row" in caplog.text
    assert not out.exists() or not any(out.iterdir())  # no partial table
