"""`lens fig7-table` (paper Fig. 7): alone vs joint by training fraction, mean ± sd over seeds, from hand-made
summaries as `lens evaluate --protocol luna` writes them."""
import json

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
                 "--out", str(out)]) == 0
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
