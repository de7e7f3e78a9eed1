"""`lens evaluate` and `lens froc-plot`: files written, numbers as computed by hand, bad input refused."""

import argparse
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_evaluation_lens3d import PRED, TRUTH, UNITS

from lens_core.evaluation.command import add_parser


def run(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def write_truth(path, truth, subvolumes):
    # as preprocess.py writes test3d.parquet: the sub-volume list in the "lens" metadata entry
    table = pa.Table.from_pandas(truth, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"lens": json.dumps({"subvolumes": subvolumes}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.fixture
def toy(tmp_path):
    write_truth(tmp_path / "test3d.parquet", TRUTH.assign(lesion_type=["liver", "lung", "liver"]), UNITS)
    PRED.to_parquet(tmp_path / "pred.parquet")
    return tmp_path


def test_evaluate_writes_the_four_outputs_with_hand_computed_numbers(toy):
    out = toy / "eval" / "toy"
    assert run("evaluate", "--pred", toy / "pred.parquet", "--truth", toy / "test3d.parquet",
               "--protocol", "lens3d", "--name", "toy", "--out", out) == 0
    summary = pd.read_parquet(out / "summary.parquet")
    overall = summary[summary.stratum_by == "all"].iloc[0]
    assert overall["average"] == pytest.approx(31 / 42)  # as in test_evaluation_lens3d
    assert overall["n_units"] == 3  # the empty sub-volume C came from the metadata
    assert set(summary.stratum) == {"all", "liver", "lung"}
    froc = pd.read_parquet(out / "froc.parquet")
    assert froc.loc[froc.stratum == "all", "n_fp"].max() == 2
    md = (out / "summary.md").read_text()
    assert "| toy | all | 3 | 33.3 | 33.3 | 50.0 | 100.0 |" in md
    assert Image.open(out / "froc.png").size[0] > 100
    assert not list(out.glob(".*tmp"))  # no temporary file left behind


def test_froc_plot_combines_variants(toy):
    for name, frac in (("full", 1.0), ("half", 0.5)):
        pred = PRED.iloc[: int(len(PRED) * frac)]
        pred.to_parquet(toy / f"{name}.parquet")
        run("evaluate", "--pred", toy / f"{name}.parquet", "--truth", toy / "test3d.parquet",
            "--protocol", "lens3d", "--name", name, "--out", toy / name)
    assert run("froc-plot", "--curves", toy / "full" / "froc.parquet", toy / "half" / "froc.parquet",
               "--out", toy / "all.png", "--table", toy / "table.md", "--paper", "47.6", "-") == 0
    table = pd.read_parquet(toy / "table.parquet")
    assert table["variant"].tolist() == ["full", "half"]
    assert table.set_index("variant").loc["full", "average"] >= table.set_index("variant").loc["half", "average"]
    assert Image.open(toy / "all.png").format == "PNG"
    md = (toy / "table.md").read_text().splitlines()
    # the paper's figure beside ours, our average with its bootstrap interval (from `lens evaluate`)
    assert md[2].endswith("| average | 95 % CI | paper (average) |")
    full = table.set_index("variant").loc["full"]
    ci = f"[{100 * full['average_low']:.1f}, {100 * full['average_high']:.1f}]"
    assert full["average_low"] <= full["average"] <= full["average_high"]
    assert next(l for l in md if l.startswith("| full |")).endswith(f"| {100 * full['average']:.1f} | {ci} | 47.6 |")
    assert next(l for l in md if l.startswith("| half |")).endswith("| – |")
    with pytest.raises(ValueError, match="--paper has 1 values for 2"):
        run("froc-plot", "--curves", toy / "full" / "froc.parquet", toy / "half" / "froc.parquet",
            "--out", toy / "all.png", "--paper", "47.6")


def test_froc_plot_puts_validation_beside_test(toy):
    for name in ("test", "val"):  # two evaluations standing in for the test and validation splits
        pred = PRED if name == "test" else PRED.iloc[:3]
        pred.to_parquet(toy / f"{name}.parquet")
        run("evaluate", "--pred", toy / f"{name}.parquet", "--truth", toy / "test3d.parquet",
            "--protocol", "lens3d", "--name", "LENS", "--out", toy / name)
    assert run("froc-plot", "--curves", toy / "test" / "froc.parquet", "--val-summaries",
               toy / "val" / "summary.parquet", "--out", toy / "all.png", "--table", toy / "table.md") == 0
    val = pd.read_parquet(toy / "val" / "summary.parquet").iloc[0]
    md = (toy / "table.md").read_text().splitlines()
    assert md[2].endswith("| average | 95 % CI | val average | val 95 % CI | val n_gt |")
    ci = f"[{100 * val['average_low']:.1f}, {100 * val['average_high']:.1f}]"
    assert md[4].endswith(f"| {100 * val['average']:.1f} | {ci} | 3 |")
    with pytest.raises(ValueError, match="--val-summaries has 2 files for 1 --curves"):
        run("froc-plot", "--curves", toy / "test" / "froc.parquet", "--val-summaries",
            toy / "val" / "summary.parquet", toy / "val" / "summary.parquet", "--out", toy / "all.png")


def test_evaluate_writes_the_matches_a_later_bootstrap_needs(toy):
    from lens_core.evaluation.bootstrap import bootstrap_average, read_matches

    out = toy / "eval"
    assert run("evaluate", "--pred", toy / "pred.parquet", "--truth", toy / "test3d.parquet",
               "--protocol", "lens3d", "--bootstrap", "300", "--seed", "4", "--out", out) == 0
    s = pd.read_parquet(out / "summary.parquet").iloc[0]
    ci = bootstrap_average(read_matches(out / "matches.parquet"), n_boot=300, seed=4)
    assert (ci["low"], ci["high"]) == (s["average_low"], s["average_high"])
    assert s["average"] == pytest.approx(31 / 42)  # the point estimate is the plain FROC average


def test_bad_prediction_row_is_named_and_nothing_is_written(toy):
    bad = PRED.copy()
    bad.loc[2, "z2"] = bad.loc[2, "z1"]  # empty box
    bad.to_parquet(toy / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet \(predictions\): row 2"):
        run("evaluate", "--pred", toy / "bad.parquet", "--truth", toy / "test3d.parquet",
            "--protocol", "lens3d", "--out", toy / "out")
    assert not (toy / "out").exists()


def test_luna_on_pixel_box_tables_with_volume_spacing(tmp_path):
    vols = pd.DataFrame({"volume_id": ["S1", "S2"], "split": ["val", "val"], "dataset": "luna",
                         "spacing_x": 1.0, "spacing_y": 1.0, "spacing_z": 2.0})
    vols.to_parquet(tmp_path / "volumes.parquet")
    # a 10 mm nodule centred at pixel (50, 50, 10) of S1; S2 has none
    truth = pd.DataFrame({"volume_id": ["S1"], "x1": [45.0], "y1": [45.0], "z1": [7.5],
                          "x2": [55.0], "y2": [55.0], "z2": [12.5], "label_kind": ["gt"]})
    pred = pd.DataFrame({"volume_id": ["S1", "S1", "S2"], "x1": [46.0, 200, 0], "y1": [46.0, 0, 0],
                         "z1": [8.0, 0, 0], "x2": [54.0, 210, 5], "y2": [54.0, 10, 5],
                         "z2": [12.0, 2, 2], "score": [0.9, 0.8, 0.7]})
    truth.to_parquet(tmp_path / "truth.parquet")
    pred.to_parquet(tmp_path / "pred.parquet")
    assert run("evaluate", "--pred", tmp_path / "pred.parquet", "--truth", tmp_path / "truth.parquet",
               "--protocol", "luna", "--volumes", tmp_path / "volumes.parquet", "--units",
               tmp_path / "volumes.parquet", "--split", "val", "--bootstrap", "20",
               "--out", tmp_path / "out") == 0
    s = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    overall = s[s.stratum_by == "all"].iloc[0]
    # found before any FP: sensitivity 1 at every rate; 2 FPs over 2 scans
    assert overall["average"] == 1.0 and overall["n_units"] == 2 and overall["n_fp"] == 2
    assert overall["average_low"] <= overall["average"] <= overall["average_high"]
    assert set(s.loc[s.stratum_by == "dataset", "stratum"]) == {"luna"}


@pytest.mark.parametrize("split", ["test", "val"])
def test_evaluate_the_preprocessed_builtin_corpus_against_its_hidden_truth(tiny_prep, tmp_path, split):
    """Contract with preprocess: truth.parquet + volumes.parquet as written there, on the test split and
    on the validation split (`lens evaluate --split val`: the same 3D protocol and full truth). Perfect
    detections of the split's volumes find every lesion of every type, size and dataset."""
    prep = tiny_prep / "deeplesion"
    truth = pd.read_parquet(prep / "truth.parquet")
    vols = pd.read_parquet(prep / "volumes.parquet")
    test_vols = set(vols.loc[vols.split == split, "volume_id"])
    perfect = truth[truth.volume_id.isin(test_vols)].assign(score=1.0)
    assert len(perfect), f"the tiny corpus has no {split} lesion"
    # plus the other split's lesions, which must not count here
    other = truth[~truth.volume_id.isin(test_vols)].assign(score=1.0)
    pd.concat([perfect, other]).to_parquet(tmp_path / "pred.parquet")
    assert run("evaluate", "--pred", tmp_path / "pred.parquet", "--truth", prep / "truth.parquet",
               "--protocol", "lens3d", "--units", prep / "volumes.parquet", "--unit-column", "volume_id",
               "--split", split, "--out", tmp_path / "out") == 0
    s = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert (s["average"] == 1.0).all() and (s["n_fp"] == 0).all()
    assert s.loc[s.stratum_by == "all", "n_units"].item() == len(test_vols)
    # the bootstrap resamples patients: each evaluated volume carries its patient from volumes.parquet
    units = pd.read_parquet(tmp_path / "out" / "matches.parquet").query("kind == 'unit'")
    assert dict(zip(units.unit, units.patient)) == dict(vols.loc[vols.split == split, ["volume_id", "patient_id"]]
                                                        .astype(str).to_numpy())
    assert {"lesion_type", "size_bin", "dataset"} <= set(s.stratum_by)


def test_luna_protocol_on_the_preprocessed_luna_like_set(tiny_prep, tmp_path):
    prep = tiny_prep / "luna"
    les = pd.read_parquet(prep / "lesions.parquet")
    vols = pd.read_parquet(prep / "volumes.parquet")
    marks = les[les.label_kind == "gt"].assign(score=0.9)  # the tiny corpus: 2 scans, both train
    assert len(marks) and len(marks) < len(les), "expected nodules and excluded findings"
    marks.to_parquet(tmp_path / "marks.parquet")
    assert run("evaluate", "--pred", tmp_path / "marks.parquet", "--truth", prep / "lesions.parquet",
               "--protocol", "luna", "--volumes", prep / "volumes.parquet", "--units", prep / "volumes.parquet",
               "--out", tmp_path / "out") == 0
    s = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    overall = s[s.stratum_by == "all"].iloc[0]
    assert overall["average"] == 1.0 and overall["n_fp"] == 0
    assert overall["n_gt"] == len(marks)  # excluded findings are not in the denominator
    assert overall["n_units"] == len(vols)


def test_deeplesion2d_from_csv_tables(tmp_path):
    from test_evaluation_protocols import DL_PRED, DL_TRUTH

    DL_PRED.to_csv(tmp_path / "pred.csv", index=False)
    DL_TRUTH.to_csv(tmp_path / "truth.csv", index=False)
    assert run("evaluate", "--pred", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv",
               "--protocol", "deeplesion2d", "--out", tmp_path / "out") == 0
    s = pd.read_parquet(tmp_path / "out" / "summary.parquet").iloc[0]
    assert s["FP@0.5"] == pytest.approx(1 / 3) and s["FP@16"] == pytest.approx(2 / 3)  # as by hand
    assert s["n_units"] == 2


def test_score_column_ranks_by_another_score(toy):
    """FPR alone is evaluated from the Eq. 4 table by ranking on score_fpr: reversed scores, other curve."""
    pred = pd.read_parquet(toy / "pred.parquet")
    pred.assign(score_fpr=1.0 - pred["score"]).to_parquet(toy / "pred2.parquet")
    curves = {}
    for col in ("score", "score_fpr"):
        out = toy / "eval" / col
        assert run("evaluate", "--pred", toy / "pred2.parquet", "--truth", toy / "test3d.parquet",
                   "--protocol", "lens3d", "--score-column", col, "--out", out) == 0
        curves[col] = pd.read_parquet(out / "summary.parquet").query("stratum == 'all'")["average"].item()
    base = run("evaluate", "--pred", toy / "pred.parquet", "--truth", toy / "test3d.parquet",
               "--protocol", "lens3d", "--out", toy / "eval" / "base")
    assert base == 0
    assert curves["score"] == pd.read_parquet(toy / "eval/base/summary.parquet").query("stratum == 'all'")["average"].item()
    assert curves["score_fpr"] != curves["score"]


@pytest.mark.parametrize("flag, value, expected", [
    ("--fp-rates", "0", "expected a finite number > 0"),   # was: the outputs written, then exit 1
    ("--fp-rates", "-1", "expected a finite number > 0"),  # was: a traceback
    ("--threshold", "2", "expected a finite number in [0, 1]"),  # was: every sensitivity 0
    ("--threshold", "nan", "expected a finite number in [0, 1]"),
    ("--max-marks", "0", "expected a whole number > 0"),
])
def test_out_of_range_flags_are_one_line_and_nothing_is_written(toy, capsys, flag, value, expected):
    from lens_core.cli import main

    argv = ["evaluate", "--pred", str(toy / "pred.parquet"), "--truth", str(toy / "test3d.parquet"),
            "--protocol", "lens3d", "--out", str(toy / "out"), flag, value]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: '{value}'" in err and expected in err, err
    assert not (toy / "out").exists()


def test_the_froc_plot_keeps_its_legend_off_the_curves_and_its_whole_title(monkeypatch, tmp_path):
    """The legend sat inside the axes, over the lowest curve, and a long title ran off the figure (issue 23)."""
    import lens_core.evaluation.plots as plots

    rates = [0.125, 0.25, 0.5, 1, 2, 4, 8]
    froc = pd.DataFrame([{"variant": v, "protocol": "lens3d", "stratum": "all", "fp_rate": r, "sensitivity": s}
                         for v, base in (("a", 0.05), ("b", 0.4)) for r, s in zip(rates, np.linspace(base, base + .3, 7))])
    shown = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: shown.update(fig=fig, kw=kw))
    title = "LENS on the DeepLesion-like test split, validation beside it (paper: Table II, on DeepLesion)"
    plots.plot_froc(froc, rates, tmp_path / "froc.png", title=title)
    fig = shown["fig"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.y1 <= axes.y0  # below the axes: no curve under it
    assert ax.get_title().replace("\n", " ") == title and "\n" in ax.get_title()
    assert shown["kw"].get("bbox_inches") == "tight"  # the saved figure grows to hold title and legend


def test_an_empty_truth_table_is_named_not_an_index_error(toy, tmp_path, caplog):
    """DeepLesion without its manual 3D set gives an empty test3d.parquet; evaluate crashed in the bootstrap."""
    from lens_core.cli import main

    write_truth(tmp_path / "empty.parquet", TRUTH.iloc[:0], UNITS)
    assert main(["evaluate", "--pred", str(toy / "pred.parquet"), "--truth", str(tmp_path / "empty.parquet"),
                 "--protocol", "lens3d", "--out", str(tmp_path / "out")]) == 1
    assert "empty.parquet: no ground-truth lesions to score against" in caplog.text
    assert "lens import-manual-3d" in caplog.text and not (tmp_path / "out").exists()


def test_deeplesion2d_scores_3d_boxes_by_their_key_slice_sections_on_the_preprocessed_split(tiny_prep, tmp_path):
    """Issue 23: a real DeepLesion run without the manual 3D set scores the official key-slice protocol.
    The DAG gives it 3D proposals, lesions.parquet and volumes.parquet: the units are the split's key
    slices, and a 3D box counts on a key slice it spans, by its in-plane box."""
    prep = tiny_prep / "deeplesion"
    les = pd.read_parquet(prep / "lesions.parquet")
    vols = pd.read_parquet(prep / "volumes.parquet")
    test_vols = set(vols.loc[vols.split == "test", "volume_id"])
    keys = les[les.volume_id.isin(test_vols)]
    assert len(keys) >= 2, "the tiny corpus has too few test key slices"
    hit = keys.assign(z1=keys.z - 1.0, z2=keys.z + 2.0, score=0.9)          # spans its key slice
    off = keys.assign(z1=keys.z + 1.0, z2=keys.z + 3.0, score=0.95)          # the same box, off the key slice
    other = les[~les.volume_id.isin(test_vols)].assign(score=1.0)            # other splits: not counted
    pd.concat([hit, off, other]).drop(columns=["z"]).to_parquet(tmp_path / "pred.3d.parquet")
    assert run("evaluate", "--pred", tmp_path / "pred.3d.parquet", "--truth", prep / "lesions.parquet",
               "--protocol", "deeplesion2d", "--units", prep / "volumes.parquet", "--split", "test",
               "--out", tmp_path / "out") == 0
    s = pd.read_parquet(tmp_path / "out" / "summary.parquet").query("stratum_by == 'all'").iloc[0]
    n_images = len(keys.drop_duplicates(["volume_id", "z"]))
    assert s["protocol"] == "deeplesion2d" and s["n_gt"] == len(keys) and s["n_units"] == n_images
    assert s["average"] == 1.0 and s["n_fp"] == 0  # the off-slice copies never reach a key slice
    units = pd.read_parquet(tmp_path / "out" / "matches.parquet").query("kind == 'unit'")
    assert set(units.patient) <= set(vols.loc[vols.split == "test", "patient_id"].astype(str))  # resampled by patient
    # a 3D box that starts one slice past the key slice is an FP of nothing: it is not on a test image
    only_off = off.drop(columns=["z"])
    only_off.to_parquet(tmp_path / "off.3d.parquet")
    assert run("evaluate", "--pred", tmp_path / "off.3d.parquet", "--truth", prep / "lesions.parquet",
               "--protocol", "deeplesion2d", "--units", prep / "volumes.parquet", "--split", "test",
               "--out", tmp_path / "out_off") == 0
    s = pd.read_parquet(tmp_path / "out_off" / "summary.parquet").query("stratum_by == 'all'").iloc[0]
    assert s["average"] == 0.0 and s["n_fp"] == 0
