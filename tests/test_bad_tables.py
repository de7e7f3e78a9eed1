"""Malformed tables through every mining command: exit status 1, one line naming the file (and the row
where a value is bad), no traceback and nothing written.

Valid inputs are a hand-made prep folder of four small volumes (two patients, two scans each) and the
tables the mining steps pass to each other; each case corrupts one table of one command.
"""
import json
import logging
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lens_core.cli import main
from lens_core.io import InputError, read_table, write_parquet
from lens_core.mining.schema import conform, write_mining_table
from lens_core.preprocess.schema import LESION_SCHEMA, TRUTH_SCHEMA, VOLUME_SCHEMA

SHAPE = (10, 48, 48)
# volume -> (patient, split); the truth lesions of each volume: (instance, z1, z2, box)
VOLUMES = {"v1": ("p1", "train"), "v2": ("p1", "train"), "v3": ("p2", "val"), "v4": ("p2", "val")}
LESIONS = {"v1": [("p1a", 3, 7, (10, 10, 20, 20))], "v2": [("p1a", 4, 8, (11, 10, 21, 20)), ("p1b", 2, 5, (30, 28, 40, 38))],
           "v3": [("p2a", 3, 6, (14, 24, 24, 34))], "v4": [("p2a", 4, 7, (15, 24, 25, 34))]}
LABELED = {("v1", "p1a"), ("v2", "p1b"), ("v3", "p2a")}  # annotated on the key slice; the others are missing


def _frame(rows, schema):
    return pd.DataFrame(rows)[[f.name for f in schema]]


def _prep(d):
    d.mkdir(parents=True)
    vols, lesions, truth = [], [], []
    with h5py.File(d / "volumes.h5", "w") as f:
        for vid, (pid, split) in VOLUMES.items():
            img = np.zeros(SHAPE, np.uint8)
            img[:, 4:44, 4:44] = 120  # the body
            for _, z1, z2, (x1, y1, x2, y2) in LESIONS[vid]:
                img[z1:z2, y1:y2, x1:x2] = 160
            g = f.create_group(vid)
            g.create_dataset("image", data=img)
            g.attrs["spacing"] = [5.0, 4.0, 4.0]
            g.attrs["orig_spacing"] = [2.5, 0.8, 0.8]
            vols.append({"volume_id": vid, "dataset": "deeplesion", "patient_id": pid, "study_id": int(vid[1]),
                         "series_id": 1, "split": split, "n_slices": SHAPE[0], "height": SHAPE[1], "width": SHAPE[2],
                         "spacing_z": 5.0, "spacing_y": 4.0, "spacing_x": 4.0, "source": vid})
            for k, (inst, z1, z2, (x1, y1, x2, y2)) in enumerate(LESIONS[vid]):
                key = (z1 + z2) // 2
                common = {"volume_id": vid, "patient_id": pid, "study_id": int(vid[1]), "series_id": 1,
                          "dataset": "deeplesion", "lesion_id": f"{vid}_{k}", "x1": float(x1), "y1": float(y1),
                          "x2": float(x2), "y2": float(y2), "lesion_type": "liver"}
                truth.append({**common, "z": key, "z1": float(z1), "z2": float(z2), "instance_id": inst,
                              "scan_key": vid, "size_mm": 40.0, "labeled": (vid, inst) in LABELED, "split": split})
                if (vid, inst) in LABELED:
                    lesions.append({**common, "z": key, "z1": float(key), "z2": float(key + 1), "kind": "2d",
                                    "label_kind": "gt"})
    write_parquet(_frame(vols, VOLUME_SCHEMA), d / "volumes.parquet", schema=VOLUME_SCHEMA)
    write_parquet(_frame(lesions, LESION_SCHEMA), d / "lesions.parquet", schema=LESION_SCHEMA)
    write_parquet(_frame(truth, TRUTH_SCHEMA), d / "truth.parquet", schema=TRUTH_SCHEMA)


def _proposals():
    """A box on every slice of every truth lesion, plus a lung-nodule-like box only the LUNA expert likes."""
    rows = []
    for vid, (pid, _) in VOLUMES.items():
        for _, z1, z2, (x1, y1, x2, y2) in LESIONS[vid]:
            rows += [(vid, pid, z, x1, y1, x2, y2, 0.9, 0.1) for z in range(z1, z2)]
        rows += [(vid, pid, z, 36, 6, 42, 12, 0.4, 0.8) for z in (1, 2)]
    df = pd.DataFrame(rows, columns=["volume_id", "patient_id", "z", "x1", "y1", "x2", "y2", "score", "score_luna"])
    df["study_id"], df["series_id"] = df["volume_id"].str[1].astype(int), 1
    df[["x1", "y1", "x2", "y2", "score", "score_luna"]] = df[["x1", "y1", "x2", "y2", "score", "score_luna"]].astype(
        np.float32)
    df["score_deeplesion"], df["score_lits"], df["score_nihln"] = df["score"], np.float32(0.05), np.float32(0.05)
    return df


def _mined(rows, kind, rule):
    """rows: (volume_id, z, box); a mining table as the mining steps write it."""
    df = pd.DataFrame([{"volume_id": v, "patient_id": VOLUMES[v][0], "dataset": "deeplesion", "z": z,
                        "x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]), "kind": "2d",
                        "label_kind": kind, "source_rule": rule, "tracklet_id": 0, "score": 0.9}
                       for v, z, b in rows])
    return conform(df)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A folder with every mining input, built and cross-checked by the real commands."""
    d = tmp_path_factory.mktemp("mining_inputs")
    _prep(d / "prep")
    _proposals().to_parquet(d / "proposals.parquet", index=False)
    assert main(["build-tracklets", "--proposals", str(d / "proposals.parquet"), "--out", str(d / "tracklets.parquet")]) == 0
    assert main(["embed-lesions", "--prep-dir", str(d / "prep"), "--tracklets", str(d / "tracklets.parquet"),
                 "--source", "position", "--out", str(d / "emb.h5")]) == 0
    write_mining_table(_mined([("v1", 3, (10, 10, 20, 20)), ("v1", 4, (10, 10, 20, 20))], "mined_cross_slice",
                              "cross_slice"), d / "cross_slice.parquet")
    write_mining_table(_mined([("v2", 5, (11, 10, 21, 20)), ("v2", 6, (11, 10, 21, 20))], "mined_intra_patient",
                              "intra_patient"), d / "intra_patient.parquet")
    write_mining_table(_mined([("v1", 1, (36, 6, 42, 12)), ("v2", 2, (36, 6, 42, 12))], "uncertain",
                              "cross_dataset_luna"), d / "uncertain.parquet")
    (d / "delta.json").write_text(json.dumps({"delta": 0.5}))
    return d


# the table inputs of each command, as paths relative to the inputs folder
TABLES = {"proposals": "proposals.parquet", "tracklets": "tracklets.parquet", "lesions": "prep/lesions.parquet",
          "volumes": "prep/volumes.parquet", "truth": "prep/truth.parquet", "cross_slice": "cross_slice.parquet",
          "intra_patient": "intra_patient.parquet", "uncertain": "uncertain.parquet"}

COMMANDS = {  # argv ({d}: inputs folder, {o}: output folder) and the tables each one reads
    "build-tracklets": ("build-tracklets --proposals {d}/proposals.parquet --volumes {d}/prep/volumes.parquet "
                        "--out {o}/tracklets.parquet", ["proposals", "volumes"]),
    "mine-cross-slice": ("mine-cross-slice --tracklets {d}/tracklets.parquet --lesions {d}/prep/lesions.parquet "
                         "--volumes {d}/prep/volumes.parquet --extent-ratio 1.5 --out {o}/cross_slice.parquet",
                         ["tracklets", "lesions", "volumes"]),
    "embed-lesions": ("embed-lesions --prep-dir {d}/prep --tracklets {d}/tracklets.parquet --source learned --steps 2 "
                      "--threads 1 --encoder-out {o}/encoder.pt --out {o}/emb.h5", ["tracklets", "lesions", "volumes"]),
    "audit-delta": ("audit-delta --prep-dir {d}/prep --tracklets {d}/tracklets.parquet --embeddings {d}/emb.h5 "
                    "--delta 0.15 --out {o}/delta_audit.parquet --plot {o}/delta_audit.png",
                    ["tracklets", "lesions", "volumes", "truth"]),
    "mine-intra-patient": ("mine-intra-patient --prep-dir {d}/prep --tracklets {d}/tracklets.parquet "
                           "--embeddings {d}/emb.h5 --delta {d}/delta.json --out {o}/intra.parquet",
                           ["tracklets", "lesions", "volumes"]),
    "mine-cross-dataset": ("mine-cross-dataset --proposals {d}/proposals.parquet --volumes {d}/prep/volumes.parquet "
                           "--labels {d}/prep/lesions.parquet {d}/cross_slice.parquet --out {o}/uncertain.parquet",
                           ["proposals", "volumes", "lesions", "cross_slice"]),
    "merge-labels": ("merge-labels --lesions {d}/prep/lesions.parquet --mined {d}/cross_slice.parquet "
                     "{d}/intra_patient.parquet --uncertain {d}/uncertain.parquet --out {o}/labels.parquet",
                     ["lesions", "cross_slice", "intra_patient", "uncertain"]),
    "audit-mining": ("audit-mining --prep-dir {d}/prep --cross-slice {d}/cross_slice.parquet --intra-patient "
                     "{d}/intra_patient.parquet --uncertain {d}/uncertain.parquet --out-md {o}/audit.md "
                     "--out-parquet {o}/audit.parquet --montage {o}/montage.png",
                     ["lesions", "truth", "volumes", "cross_slice", "intra_patient", "uncertain"]),
}

# per table: the column to drop, the column to fill with text, the column to set NaN (row 1)
FAULTS = {"proposals": ("score", "z", "score"), "tracklets": ("tracklet_id", "x1", "z"),
          "lesions": ("x2", "z", "x1"), "volumes": ("split", "split", "split"), "truth": ("instance_id", "z1", "z2"),
          "cross_slice": ("label_kind", "y1", "z"), "intra_patient": ("label_kind", "y2", "x2"),
          "uncertain": ("label_kind", "x1", "y1")}
CORRUPTIONS = ["missing_column", "wrong_dtype", "nan", "inverted_box", "empty_file", "not_parquet"]


def corrupt(path, table, how):
    """Rewrite ``path`` broken in one way; returns whether the message must name row 1."""
    if how == "empty_file":
        path.write_bytes(b"")
        return False
    if how == "not_parquet":
        path.write_text("volume_id,z,x1,y1,x2,y2\nv1,3,10,10,20,20\n")
        return False
    df = pd.read_parquet(path)
    drop, text, nan = FAULTS[table]
    if how == "missing_column":
        df = df.drop(columns=drop)
    elif how == "wrong_dtype":
        if table == "volumes":  # numbers where text belongs
            df["split"] = np.arange(len(df))
        else:
            df[text] = df[text].astype(str)
            df.loc[1, text] = "abc"
    elif how == "nan":
        if table == "volumes":
            df[nan] = df[nan].astype(object)
            df.loc[1, nan] = None
        else:
            df[nan] = df[nan].astype(float)
            df.loc[1, nan] = np.nan
    elif how == "inverted_box":
        x1, x2 = float(df.loc[1, "x1"]), float(df.loc[1, "x2"])
        df.loc[1, "x1"], df.loc[1, "x2"] = x2, x1
    table_ = pa.Table.from_pandas(df, preserve_index=False)
    import pyarrow.parquet as pq

    pq.write_table(table_, path)
    return how in ("nan", "inverted_box") or (how == "wrong_dtype" and table != "volumes")


def run(argv, caplog):
    """``lens argv`` in-process: (exit status, error lines logged)."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="lens"):
        rc = main(argv)
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _argv(command, d, o):
    return COMMANDS[command][0].format(d=d, o=o).split()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_valid_inputs_run(command, valid, tmp_path, caplog):
    """The control: each command succeeds on the uncorrupted inputs (so a failure below is the corruption's)."""
    d = tmp_path / "in"
    shutil.copytree(valid, d)
    rc, errors = run(_argv(command, d, tmp_path / "out"), caplog)
    assert rc == 0 and not errors
    assert any((tmp_path / "out").iterdir())


CASES = [(c, t, how) for c, (_, tables) in COMMANDS.items() for t in tables for how in CORRUPTIONS
         if not (how == "inverted_box" and t == "volumes")]


@pytest.mark.parametrize("command,table,how", CASES, ids=["-".join(c) for c in CASES])
def test_malformed_table_is_one_line_exit_1_and_nothing_written(command, table, how, valid, tmp_path, caplog):
    d = tmp_path / "in"
    shutil.copytree(valid, d)
    bad = d / TABLES[table]
    names_row = corrupt(bad, table, how)
    out = tmp_path / "out"
    rc, errors = run(_argv(command, d, out), caplog)
    assert rc == 1
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0]
    assert str(bad) in errors[0]
    if names_row:
        assert "row 1" in errors[0]
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_real_stderr_is_one_line_without_traceback(valid, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(valid, d)
    corrupt(d / "proposals.parquet", "proposals", "nan")
    res = subprocess.run([sys.executable, "-m", "lens_core", *_argv("build-tracklets", d, tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert str(d / "proposals.parquet") in lines[0] and "row 1: score = nan" in lines[0]


def test_nan_slice_index_in_proposals_is_refused_not_cast(valid, tmp_path, caplog):
    df = pd.read_parquet(valid / "proposals.parquet")
    df["z"] = df["z"].astype(float)
    df.loc[3, "z"] = np.nan
    df.to_parquet(tmp_path / "p.parquet")
    rc, errors = run(["build-tracklets", "--proposals", str(valid / "proposals.parquet"), str(tmp_path / "p.parquet"),
                      "--out", str(tmp_path / "t.parquet")], caplog)
    assert rc == 1 and str(tmp_path / "p.parquet") in errors[0] and "row 3: z = nan" in errors[0]
    assert not (tmp_path / "t.parquet").exists()


def test_empty_box_above_min_score_is_named(valid, tmp_path, caplog):
    df = pd.read_parquet(valid / "proposals.parquet")
    df.loc[2, "x2"] = df.loc[2, "x1"]
    df.loc[2, "score"] = 0.2
    df.to_parquet(tmp_path / "p.parquet")
    ok = ["build-tracklets", "--proposals", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "t.parquet")]
    assert run(ok + ["--min-score", "0.3"], caplog)[0] == 0  # below --min-score: dropped, as before
    rc, errors = run(ok + ["--min-score", "0.1"], caplog)
    assert rc == 1 and "p.parquet: row 2: empty box" in errors[0]


def test_wrong_table_for_merge_and_cross_slice(valid, tmp_path, caplog):
    """Proposals where a lesion table belongs: the missing columns are named, not a KeyError."""
    rc, errors = run(["merge-labels", "--lesions", str(valid / "proposals.parquet"), "--out",
                      str(tmp_path / "l.parquet")], caplog)
    assert rc == 1 and "proposals.parquet (lesion table" in errors[0] and "label_kind" in errors[0]
    rc, errors = run(["mine-cross-slice", "--tracklets", str(valid / "tracklets.parquet"), "--lesions",
                      str(valid / "tracklets.parquet"), "--out", str(tmp_path / "c.parquet")], caplog)
    assert rc == 1 and "tracklets.parquet (lesion table" in errors[0] and "label_kind" in errors[0]
    rc, errors = run(["merge-labels", "--lesions", str(valid / "prep/lesions.parquet"), "--uncertain",
                      str(valid / "cross_slice.parquet"), "--out", str(tmp_path / "l.parquet")], caplog)
    assert rc == 1 and "cross_slice.parquet (uncertain table" in errors[0] and "row 0" in errors[0]
    assert not any(tmp_path.glob("*.parquet"))


@pytest.mark.parametrize("content", ["not json at all", '{"delta": "wide"}', '{"other": 1}', "[1, 2]"])
def test_bad_delta_file_is_named(valid, tmp_path, caplog, content):
    (tmp_path / "delta.txt").write_text(content)
    rc, errors = run(["mine-intra-patient", "--prep-dir", str(valid / "prep"), "--tracklets",
                      str(valid / "tracklets.parquet"), "--embeddings", str(valid / "emb.h5"), "--delta",
                      str(tmp_path / "delta.txt"), "--out", str(tmp_path / "i.parquet")], caplog)
    assert rc == 1 and str(tmp_path / "delta.txt") in errors[0] and not (tmp_path / "i.parquet").exists()


def test_out_that_is_a_folder_or_under_a_file(valid, tmp_path, caplog):
    (tmp_path / "folder.parquet").mkdir()
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "folder.parquet", tmp_path / "file" / "t.parquet"):
        rc, errors = run(["build-tracklets", "--proposals", str(valid / "proposals.parquet"), "--out", str(out)],
                         caplog)
        assert rc == 1 and str(out) in errors[0] and "--out" in errors[0]


def test_text_file_as_model_is_named(valid, tmp_path, caplog):
    (tmp_path / "lens.pt").write_text("this is not a checkpoint\n")
    rc, errors = run(["propose", "--model", str(tmp_path / "lens.pt"), "--prep-dir", str(valid), "--dataset", "prep",
                      "--out", str(tmp_path / "p.parquet"), "--device", "cpu"], caplog)
    assert rc == 1 and f"{tmp_path / 'lens.pt'}: not a LENS model file" in errors[0]
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("argv", [
    ["build-tracklets", "--min-score", "nan"], ["build-tracklets", "--theta", "1.5"],
    ["mine-cross-dataset", "--sigma", "-0.1"], ["embed-lesions", "--steps", "0"],
    ["audit-delta", "--delta", "-1"], ["propose", "--min-score", "nan"],
    ["propose", "--max-per-slice", "-1"], ["audit-mining", "--n-review", "-1"],
])
def test_bad_numeric_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"argument {argv[1]}" in err and err.count("\n") == 1 and err.startswith(f"lens {argv[0]}: error:")


def test_read_table_checks_each_kind_and_names_the_row(tmp_path):
    df = pd.DataFrame({"volume_id": ["a", "b", "c"], "z": [1.0, 2.5, 3.0], "x1": [0.0, 1.0, 2.0],
                       "x2": [1.0, 1.0, 3.0], "note": [None, "x", "y"]})
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    for path in (tmp_path / "t.parquet", tmp_path / "t.csv"):
        assert len(read_table(path, {"volume_id": "text", "x1": "number", "note": "any"}, "boxes")) == 3
        with pytest.raises(InputError, match=r"t\.(parquet|csv) \(boxes\): row 1: z = 2\.5, expected a whole number"):
            read_table(path, {"z": "integer"}, "boxes")
        with pytest.raises(InputError, match=r"row 0: note = .*expected a value"):
            read_table(path, {"note": "text"}, "boxes")
        with pytest.raises(InputError, match=r"row 0: z = 1\.0, expected text \(3 bad rows\)"):
            read_table(path, {"z": "text"}, "boxes")
        with pytest.raises(InputError, match=r"row 1: inverted or empty box"):
            read_table(path, (), "boxes", boxes=("x1", "x2"))
        assert len(read_table(path, (), "boxes", boxes=("x1", "x2"), empty_boxes=True)) == 3
    with pytest.raises(InputError, match=r"nope\.parquet: no such file; expected boxes"):
        read_table(tmp_path / "nope.parquet", (), "boxes")
    with pytest.raises(InputError, match="is a folder"):
        read_table(tmp_path, (), "boxes")


THREE_D = [(c, t) for c, (_, tables) in COMMANDS.items() for t in tables if t in ("proposals", "tracklets")]


@pytest.mark.parametrize("command, table", THREE_D, ids=[f"{c}-{t}" for c, t in THREE_D])
def test_a_3d_box_table_where_2d_boxes_belong_is_refused(command, table, valid, tmp_path, caplog):
    """`lens propose --out3d`'s table has a key slice z and tracklet ids too: it passed as 2D proposals or
    tracklets, and mining ran to an empty output with exit 0 (issue 23)."""
    d = tmp_path / "in"
    shutil.copytree(valid, d)
    path = d / TABLES[table]
    df = pd.read_parquet(path)
    df.assign(z1=df["z"].astype(float), z2=df["z"] + 1.0).to_parquet(path, index=False)
    out = tmp_path / "out"
    rc, errors = run(_argv(command, d, out), caplog)
    assert rc == 1 and len(errors) == 1, errors
    assert f"{path}: a 3D box table (z1, z2 columns)" in errors[0] and "--out3d" in errors[0]
    assert not out.exists() or not any(out.iterdir())
