"""`lens fig7-table` (paper Fig. 7): alone vs joint by training fraction, mean ± sd over seeds, from hand-made
summaries as `lens evaluate --protocol luna` writes them."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lens_core.cli import main

RATES = ["FP@0.125", "FP@0.25", "FP@0.5", "FP@1", "FP@2", "FP@4", "FP@8"]


def summary(path, cpm, protocol="luna", n_gt=6):
    """A summary.parquet whose 'all' row has every rate (and so the average) equal to ``cpm``."""
    rows = [{"variant": "m", "protocol": protocol, "stratum_by": by, "stratum": st, "n_gt": n_gt, "n_units": 2,
             "n_fp": 10, **{r: cpm for r in RATES}, "average": cpm}
            for by, st in [("all", "all"), ("lesion_type", "5")]]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


@pytest.fixture
def spec(tmp_path):
    # luna: alone 0.2 / 0.4 (two seeds) at 25 %, 0.6 at 100 %; joint 0.5 / 0.7 at 25 %, 0.6 at 100 %
    cpms = {("luna", "alone", 0.25): [0.2, 0.4], ("luna", "joint", 0.25): [0.5, 0.7],
            ("luna", "alone", 1.0): [0.6, 0.6], ("luna", "joint", 1.0): [0.6, 0.6],
            ("lits", "alone", 0.25): [0.1, 0.1], ("lits", "joint", 0.25): [0.3, 0.3]}
    return [{"dataset": d, "mode": m, "fraction": f, "seed": s,
             "summary": summary(tmp_path / "eval" / f"{d}_{m}_{f}_{s}" / "summary.parquet", v[s])}
            for (d, m, f), v in cpms.items() for s in (0, 1)]


def test_table_averages_seeds_and_puts_alone_beside_joint(spec, tmp_path):
    out = tmp_path / "fig7"
    assert main(["fig7-table", "--spec", json.dumps(spec), "--scored-on", "held-out cohort, 24 scans per dataset",
                 "--out", str(out), "--bootstrap", "0"]) == 0
    t = pd.read_parquet(out / "table.parquet").set_index(["dataset", "fraction", "mode"])
    assert t.loc[("luna", 0.25, "alone"), "average_mean"] == pytest.approx(30.0)
    assert t.loc[("luna", 0.25, "alone"), "average_sd"] == pytest.approx(14.142, abs=1e-3)
    assert t.loc[("luna", 0.25, "joint"), "average_mean"] == pytest.approx(60.0)
    assert t.loc[("luna", 1.0, "joint"), "average_sd"] == 0 and (t["seeds"] == 2).all()
    # datasets in the spec's order, fractions ascending
    assert list(pd.read_parquet(out / "table.parquet")["dataset"].unique()) == ["luna", "lits"]
    md = (out / "table.md").read_text()
    assert "(held-out cohort, 24 scans per dataset, LUNA16 CPM %" in md.splitlines()[0]
    assert "| LUNA | 25% | 30.0 ± 14.1 | 60.0 ± 14.1 | +30.0 | 2/2 | 6 / 2 |" in md
    assert "| LUNA | 100% | 60.0 ± 0.0 | 60.0 ± 0.0 | +0.0 |" in md
    assert "| LiTS | 25% | 10.0 ± 0.0 | 30.0 ± 0.0 | +20.0 |" in md
    with Image.open(out / "fig7.png") as im:  # one panel per dataset side by side
        assert im.size[0] > 1.5 * im.size[1]


def test_missing_runs_and_other_protocols_are_refused(spec, tmp_path):
    out = tmp_path / "fig7"
    missing = spec[:1] + [dict(spec[1], summary=str(tmp_path / "nope" / "summary.parquet"))]
    assert main(["fig7-table", "--spec", json.dumps(missing), "--out", str(out)]) == 1
    lens3d = [dict(spec[0], summary=summary(tmp_path / "lens3d" / "summary.parquet", 0.5, protocol="lens3d"))]
    with pytest.raises(ValueError, match="luna protocol"):
        main(["-v", "fig7-table", "--spec", json.dumps(lens3d), "--out", str(out)])
    with pytest.raises(ValueError, match="mode must be one of"):
        main(["-v", "fig7-table", "--spec", json.dumps([dict(spec[0], mode="pooled")]), "--out", str(out)])
    assert not out.exists()


def luna_run(folder, quality, seed, n_scans=24):
    """`lens evaluate --protocol luna` of synthetic marks on 24 scans of 12 patients (2 nodules per scan):
    a nodule is marked with probability ``quality``, plus 4 FPs per scan."""
    rng = np.random.default_rng(seed)
    scans = pd.DataFrame({"scan": [f"s{i}" for i in range(n_scans)], "patient_id": [f"p{i // 2}" for i in range(n_scans)]})
    nod = pd.DataFrame({"scan": np.repeat(scans.scan, 2), "x": np.tile([20.0, 60.0], n_scans), "y": 0.0, "z": 0.0,
                        "diameter_mm": 10.0})
    hits = nod.loc[rng.uniform(size=len(nod)) < quality, ["scan", "x", "y", "z"]].assign(
        score=lambda d: rng.uniform(0.3, 1, len(d)))
    fps = pd.DataFrame({"scan": np.repeat(scans.scan, 4), "x": 500.0, "y": 0.0, "z": 0.0,
                        "score": rng.uniform(0, 0.9, 4 * n_scans)})
    folder.mkdir(parents=True, exist_ok=True)
    scans.to_parquet(folder / "scans.parquet")
    nod.to_parquet(folder / "nodules.parquet")
    pd.concat([hits, fps], ignore_index=True).to_parquet(folder / "marks.parquet")
    out = folder / "eval"
    assert main(["evaluate", "--pred", str(folder / "marks.parquet"), "--truth", str(folder / "nodules.parquet"),
                 "--protocol", "luna", "--units", str(folder / "scans.parquet"), "--bootstrap", "0",
                 "--out", str(out)]) == 0
    return str(out / "summary.parquet")


@pytest.mark.parametrize("joint_quality, expected", [(0.9, "reproduced"), (0.05, "contradicted")])
def test_cells_carry_pooled_intervals_and_joint_minus_alone_a_paired_one(tmp_path, joint_quality, expected):
    runs = [{"dataset": "luna", "mode": m, "fraction": 0.5, "seed": s,
             "summary": luna_run(tmp_path / f"{m}{s}", q, 10 * s + (m == "joint"))}
            for m, q in (("alone", 0.3), ("joint", joint_quality)) for s in (0, 1)]
    out = tmp_path / "fig7"
    assert main(["fig7-table", "--spec", json.dumps(runs), "--out", str(out), "--bootstrap", "400"]) == 0
    t = pd.read_parquet(out / "table.parquet").set_index("mode")
    for mode in ("alone", "joint"):
        assert t.loc[mode, "average_low"] < t.loc[mode, "average_mean"] < t.loc[mode, "average_high"]
    delta = t.loc["joint", "average_mean"] - t.loc["alone", "average_mean"]
    assert t.loc["joint", "delta_low"] < delta < t.loc["joint", "delta_high"]
    # far apart on 24 scans: the paired interval excludes 0, on the side the marks were made
    assert (t.loc["joint", "delta_low"] > 0) if expected == "reproduced" else (t.loc["joint", "delta_high"] < 0)
    assert t.loc["joint", "verdict"] == expected and pd.isna(t.loc["alone", "verdict"])
    assert np.isnan(t.loc["alone", "delta_low"])
    md = (out / "table.md").read_text()
    j = t.loc["joint"]
    assert f"{j['average_mean']:.1f} ± {j['average_sd']:.1f} [{j['average_low']:.1f}, {j['average_high']:.1f}]" in md
    assert f"{delta:+.1f} [{j['delta_low']:.1f}, {j['delta_high']:.1f}] | 2/2 | 48 / 24 | {expected} |" in md
    assert "percentile bootstrap over the scored patients (400 draws" in md
