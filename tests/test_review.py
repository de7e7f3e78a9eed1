"""Review of mined lesions: box ids, the self-contained page, verdict import and its errors, round-2 labels
from verdicts, the simulated reviewer and the review-value table."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lens_core.cli import main
from lens_core.io import read_meta
from lens_core.mining.audit import annotation_pad_px, match_truth, truth_slices
from lens_core.mining.verdicts import mined_box_ids
from lens_core.review.boxes import mined_boxes
from lens_core.review.page import build_page
from lens_core.review.simulate import simulate_verdicts
from lens_core.review.value import value_table, write_value_table
from review_data import build_mining, merge_args, page_data, run


@pytest.fixture(scope="module")
def dl_prep(tiny_prep):
    return tiny_prep / "deeplesion"


@pytest.fixture(scope="module")
def mining(dl_prep, tmp_path_factory):
    return build_mining(dl_prep, tmp_path_factory.mktemp("mining"))


@pytest.fixture(scope="module")
def boxes(mining):
    return pd.read_parquet(mining / "review_boxes.parquet")


def _page_data(page: Path) -> dict:
    return page_data(page)


def _doc(rows):
    return {"format": "lens-review-verdicts", "version": 1, "page": {}, "verdicts": rows}


def _row(box_id, decision, box=None):
    return {"box_id": box_id, "decision": decision, "box": box, "reviewer": "tester",
            "time": "2026-12-02T10:00:00.000Z"}


# ----------------------------------------------------------------------------------------- box ids
def test_every_mined_box_has_a_stable_unique_id(mining, boxes):
    tables = {s: pd.read_parquet(mining / f"{s}.parquet") for s in ("cross_slice", "intra_patient", "uncertain")}
    assert set(boxes["strategy"]) == set(tables) and all(len(t) for t in tables.values())
    assert len(boxes) == sum(len(t) for t in tables.values())
    assert boxes["box_id"].is_unique
    # the same table gives the same ids; moving a box changes its id only
    cs = tables["cross_slice"]
    again = mined_box_ids(cs)
    assert list(again) == list(boxes.loc[boxes["strategy"] == "cross_slice", "box_id"])
    moved = cs.copy()
    moved.loc[0, "x1"] += 0.5
    changed = mined_box_ids(moved) != again
    assert changed[0] and not changed[1:].any()
    # the image size comes from volumes.parquet, the dataset of an uncertain box from its volume
    assert (boxes["width"] > 0).all() and (boxes["height"] > 0).all()
    assert (boxes["dataset"] == "deeplesion").all()
    with pytest.raises(ValueError, match="uncertain row 0: volume 'nope'"):
        mined_boxes({"uncertain": tables["uncertain"].assign(volume_id="nope")},
                    pd.DataFrame({"volume_id": ["v"], "width": [1], "height": [1], "n_slices": [1]}))


# ------------------------------------------------------------------------------------------ the page
def test_page_is_self_contained_with_one_card_per_mined_box(mining, boxes, dl_prep):
    page = mining / "review"
    html = (page / "index.html").read_text()
    # no server, no network: nothing loaded from elsewhere, no external script or style
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert not re.search(r"<link[^>]*href=\"(?!data:)", html) and not re.search(r"<script[^>]*\bsrc=", html)
    assert "http://" not in html and "https://" not in html
    data = _page_data(page)
    cards = data["cards"]
    counts = boxes["strategy"].value_counts()
    shown = pd.Series([c["strategy"] for c in cards]).value_counts()
    assert shown["cross_slice"] == counts["cross_slice"] and shown["intra_patient"] == counts["intra_patient"]
    assert shown["uncertain"] == min(6, counts["uncertain"])  # --uncertain-sample 6
    assert {c["id"] for c in cards} <= set(boxes["box_id"])
    for c in cards:
        for key in ("img", "strip"):
            assert (page / c[key]).is_file(), c[key]
            assert not c[key].startswith("/")
        assert c["experts"] and set(c["experts"]) == {"deeplesion", "luna", "lits", "nihln"}
        assert c["score"] is not None
        x0, y0, side = c["crop"]
        assert x0 <= c["box"][0] and c["box"][2] <= x0 + side  # the box lies inside its crop
        assert len(c["strip_z"]) == 5 and c["strip_z"][2] == c["z"]
    lesions = pd.read_parquet(dl_prep / "lesions.parquet")
    for c in cards:
        if c["strategy"] == "uncertain":
            assert "source" not in c and c["key_iou"] is None and c["embedding_distance"] is None
            continue
        src = c["source"]
        assert (page / src["img"]).is_file()
        row = lesions[(lesions["lesion_id"] == src["lesion_id"]) & (lesions["z"] == src["z"])]
        assert len(row) == 1 and row["label_kind"].iloc[0] == "gt"
        if c["strategy"] == "cross_slice":  # propagated from the key slice of the same scan
            assert src["volume_id"] == c["volume_id"] and c["key_iou"] > 0.5
        else:  # matched to the lesion annotated in another study or series of the patient
            assert src["volume_id"] != c["volume_id"] and c["embedding_distance"] <= 0.3  # the fixture's delta (cards round to 4 decimals)
            assert row["patient_id"].iloc[0] == c["patient_id"]


def test_a_failed_page_build_keeps_the_previous_page(mining, boxes, dl_prep, tmp_path):
    out = tmp_path / "review"
    shutil.copytree(mining / "review", out)
    before = sorted(p.name for p in out.rglob("*"))
    bad = boxes.copy()
    bad.loc[len(bad) - 1, "volume_id"] = "no_such_volume"
    with pytest.raises(ValueError, match="no volume 'no_such_volume'"):
        build_page(bad, dl_prep, out, uncertain_sample=None)
    assert sorted(p.name for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["review"]  # no temporary folder left behind


def test_the_page_never_replaces_a_folder_it_did_not_write(mining, dl_prep, tmp_path, caplog):
    out = tmp_path / "my_review"
    out.mkdir()
    (out / "index.html").write_text("a page of mine")  # a name the step writes, beside one it does not
    (out / "notes.txt").write_text("keep")
    assert main(["review", "--boxes", str(mining / "review_boxes.parquet"), "--prep-dir", str(dl_prep),
                 "--out", str(out)]) == 1
    assert "notes.txt" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "notes.txt"]
    assert (out / "index.html").read_text() == "a page of mine"


# ------------------------------------------------------------------------------------------ import
def _import(tmp_path, doc, boxes_path, name="verdicts.json"):
    src = tmp_path / name
    src.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    out = tmp_path / "review.parquet"
    return main(["review-import", str(src), "--boxes", str(boxes_path), "--out", str(out)]), out


def test_import_keeps_the_decided_rows_and_an_unchanged_set_leaves_the_file_alone(mining, boxes, tmp_path):
    ids = list(boxes["box_id"])
    w, h = int(boxes["width"].iloc[2]), int(boxes["height"].iloc[2])
    doc = _doc([_row(ids[0], "accept"), _row(ids[1], "reject"), _row(ids[2], "fix", [1, 2, w - 1.5, h]),
                _row(ids[3], None)])
    rc, out = _import(tmp_path, doc, mining / "review_boxes.parquet")
    assert rc == 0
    review = pd.read_parquet(out)
    assert list(review["box_id"]) == ids[:3] and list(review["decision"]) == ["accept", "reject", "fix"]
    assert review.loc[2, ["x1", "y1", "x2", "y2"]].tolist() == [1.0, 2.0, w - 1.5, float(h)]
    assert review.loc[:1, "x1"].isna().all() and (review["reviewer"] == "tester").all()
    assert list(review["strategy"]) == list(boxes["strategy"].iloc[:3])
    stamp = out.stat().st_mtime_ns
    assert _import(tmp_path, doc, mining / "review_boxes.parquet", "again.json")[0] == 0
    assert out.stat().st_mtime_ns == stamp  # same verdicts: round 2 is not retrained
    doc["verdicts"][0]["decision"] = "reject"
    assert _import(tmp_path, doc, mining / "review_boxes.parquet")[0] == 0
    assert pd.read_parquet(out)["decision"].iloc[0] == "reject"


@pytest.mark.parametrize("case, message", [
    ("unknown", r"verdicts.json: row 1 \(box deadbeef0000\): unknown box id"),
    ("outside", r"verdicts.json: row 1 \(box \w+\): box \[.*\] lies outside the \d+ x \d+ image of volume"),
    ("empty", r"row 1 .*: box \[.*\] is empty"),
    ("nobox", r"row 1 .*: a fix needs 'box'"),
    ("decision", r"row 1 .*: decision 'maybe' is not one of"),
    ("twice", r"row 1 .*: box id given twice"),
    ("time", r"row 1 .*: time 'yesterday' is not an ISO 8601"),
    ("notjson", r"verdicts.json: not a JSON verdict file"),
    ("format", r"verdicts.json: not a review page export"),
    ("strings", r"row 1 .*: box \['2', '2', '9', '10'\] is not four numbers"),  # were accepted (issue 23)
    ("booleans", r"row 1 .*: box \[True, 2, 9, 10\] is not four numbers"),
    ("nested", r"verdicts.json: not a JSON verdict file \(nested too deeply\)"),  # was a RecursionError
])
def test_import_rejects_bad_verdicts_naming_file_and_row(mining, boxes, tmp_path, caplog, case, message):
    ids = list(boxes["box_id"])
    w = int(boxes["width"].iloc[1])
    second = {"unknown": _row("deadbeef0000", "accept"), "outside": _row(ids[1], "fix", [2, 2, w + 3, 10]),
              "empty": _row(ids[1], "fix", [5, 5, 5, 9]), "nobox": _row(ids[1], "fix"),
              "decision": _row(ids[1], "maybe"), "twice": _row(ids[0], "reject"),
              "time": {**_row(ids[1], "accept"), "time": "yesterday"},
              "strings": _row(ids[1], "fix", ["2", "2", "9", "10"]),
              "booleans": _row(ids[1], "fix", [True, 2, 9, 10])}.get(case)
    doc = _doc([_row(ids[0], "accept"), second]) if second else "{not json" if case == "notjson" else \
        "[" * 100000 + "]" * 100000 if case == "nested" else {"rows": []}
    rc, out = _import(tmp_path, doc, mining / "review_boxes.parquet")
    assert rc != 0
    assert re.search(message, caplog.text), caplog.text
    assert not out.exists() and not list(tmp_path.glob(".review.parquet*"))  # nothing written


# ------------------------------------------------------------------------------- merge with verdicts
def _merge(dl_prep, mining, out, review=None):
    args = [*merge_args(dl_prep, mining), "--out", out] + (["--review", review] if review else [])
    return main([str(a) for a in args])


def _has(labels, row, kind=None):
    b = labels[(labels["volume_id"] == row["volume_id"]) & (labels["z"] == row["z"])
               & np.isclose(labels["x1"], row["x1"]) & np.isclose(labels["y1"], row["y1"])
               & np.isclose(labels["x2"], row["x2"]) & np.isclose(labels["y2"], row["y2"])]
    return len(b) > 0 if kind is None else (b["label_kind"] == kind).any()


def test_merge_labels_trains_on_the_verdicts(mining, boxes, dl_prep, tmp_path):
    by = {s: boxes[boxes["strategy"] == s].reset_index(drop=True) for s in ("cross_slice", "intra_patient", "uncertain")}
    acc_cs, rej_cs, fix_ip = by["cross_slice"].iloc[0], by["cross_slice"].iloc[1], by["intra_patient"].iloc[0]
    rej_unc, acc_unc = by["uncertain"].iloc[0], by["uncertain"].iloc[1]
    new = [fix_ip["x1"] - 1.0, fix_ip["y1"] - 1.0, fix_ip["x2"] + 1.0, fix_ip["y2"] + 1.0]
    doc = _doc([_row(acc_cs["box_id"], "accept"), _row(rej_cs["box_id"], "reject"),
                _row(fix_ip["box_id"], "fix", new), _row(rej_unc["box_id"], "reject"),
                _row(acc_unc["box_id"], "accept")])
    rc, review = _import(tmp_path, doc, mining / "review_boxes.parquet")
    assert rc == 0
    assert _merge(dl_prep, mining, tmp_path / "reviewed.parquet", review) == 0
    assert _merge(dl_prep, mining, tmp_path / "plain.parquet") == 0
    reviewed, plain = pd.read_parquet(tmp_path / "reviewed.parquet"), pd.read_parquet(tmp_path / "plain.parquet")
    # without verdicts: today's merge, byte for byte (the same command twice, no review in the metadata)
    assert (tmp_path / "plain.parquet").read_bytes() == (mining / "labels_round2.parquet").read_bytes()
    assert "review" not in read_meta(tmp_path / "plain.parquet")
    assert read_meta(tmp_path / "reviewed.parquet")["review"]["accept"] == 2
    # accepted: lesions (a person's annotation now)
    assert _has(plain, acc_cs, "mined_cross_slice") and _has(reviewed, acc_cs, "gt")
    assert _has(plain, acc_unc, "uncertain") and _has(reviewed, acc_unc, "gt")
    # rejected: dropped; the rejected uncertain box is no ignore region any more (its area trains as background)
    assert _has(plain, rej_cs) and not _has(reviewed, rej_cs)
    assert _has(plain, rej_unc, "uncertain") and not _has(reviewed, rej_unc)
    # fixed: the reviewer's box replaces the mined one
    fixed = dict(fix_ip) | dict(zip(["x1", "y1", "x2", "y2"], new))
    assert _has(plain, fix_ip, "mined_intra_patient") and not _has(reviewed, fix_ip) and _has(reviewed, fixed, "gt")
    # every other box is merged as without review
    touched = [acc_cs, rej_cs, fix_ip, rej_unc, acc_unc]
    rest = plain[[not any(_has(pd.DataFrame([r]), t) for t in touched) for _, r in plain.iterrows()]]
    assert len(rest) == len(plain) - 5
    assert all(_has(reviewed, r, r["label_kind"]) for _, r in rest.iterrows())
    assert len(reviewed) == len(plain) - 2


def test_merge_labels_refuses_verdicts_of_another_mining_run(mining, boxes, dl_prep, tmp_path, caplog):
    review = pd.DataFrame({"box_id": ["0123456789ab"], "strategy": ["cross_slice"], "volume_id": ["v"], "z": [0],
                           "decision": ["accept"], "x1": [np.nan], "y1": [np.nan], "x2": [np.nan], "y2": [np.nan],
                           "reviewer": ["x"], "time": ["2026-01-01T00:00:00"]})
    review.to_parquet(tmp_path / "review.parquet")
    assert _merge(dl_prep, mining, tmp_path / "labels.parquet", tmp_path / "review.parquet") != 0
    assert re.search(r"review.parquet: verdict for box 0123456789ab: no mined box has this id", caplog.text)
    assert not (tmp_path / "labels.parquet").exists()


# ------------------------------------------------------------------------------- simulated reviewer
def test_simulated_reviewer_answers_a_share_of_the_boxes_from_the_truth(boxes, dl_prep, mining, tmp_path):
    truth = pd.read_parquet(dl_prep / "truth.parquet")
    pad = annotation_pad_px(dl_prep)
    none = simulate_verdicts(boxes, truth, 0.0, pad_px=pad)
    assert len(none["verdicts"]) == len(boxes) and all(v["decision"] is None for v in none["verdicts"])
    part = simulate_verdicts(boxes, truth, 0.25, pad_px=pad, seed=3)
    assert sum(v["decision"] is not None for v in part["verdicts"]) == round(0.25 * len(boxes))
    assert part == simulate_verdicts(boxes, truth, 0.25, pad_px=pad, seed=3)  # seeded
    full = simulate_verdicts(boxes, truth, 1.0, pad_px=pad)
    decision = np.array([v["decision"] for v in full["verdicts"]], dtype=object)
    assert set(decision) <= {"accept", "fix", "reject"} and None not in set(decision)
    # the decisions follow the truth: accept = fits a true lesion, reject = on no true lesion
    m = match_truth(boxes, truth_slices(truth, pad), iou_threshold=0.0)
    assert (m["iou"].to_numpy()[decision == "accept"] >= 0.5).all()
    assert (m["iou"].to_numpy()[decision == "reject"] < 0.1).all()
    assert (decision == "accept").any() and (decision == "reject").any()  # the tiny run mines both kinds
    # its file goes through the same import as a person's
    out = tmp_path / "sim.json"
    assert main(["review-simulate", "--boxes", str(mining / "review_boxes.parquet"), "--prep-dir", str(dl_prep),
                 "--fraction", "1", "--out", str(out)]) == 0
    assert main(["review-import", str(out), "--boxes", str(mining / "review_boxes.parquet"),
                 "--out", str(tmp_path / "review.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "review.parquet")) == len(boxes)


def test_review_value_table(tmp_path):
    def summary(name, avg, lo=np.nan, hi=np.nan):
        pd.DataFrame({"stratum_by": ["all", "size_bin"], "stratum": ["all", "small"], "average": [avg, 0.1],
                      "average_low": [lo, np.nan], "average_high": [hi, np.nan]}).to_parquet(tmp_path / name)
        return str(tmp_path / name)

    pd.DataFrame({"decision": ["accept", "reject", "fix", "accept"]}).to_parquet(tmp_path / "r.parquet")
    table = value_table([["100", str(tmp_path / "r.parquet"), summary("v1", 0.6, 0.5, 0.7), summary("t1", 0.55)],
                         ["0", "-", summary("v0", 0.5), summary("t0", 0.45, 0.4, 0.5)]])
    assert list(table["reviewed_pct"]) == [0.0, 100.0]
    assert table.loc[1, ["accepted", "fixed", "rejected"]].tolist() == [2, 1, 1]
    write_value_table(table, tmp_path / "table.md")
    md = (tmp_path / "table.md").read_text()
    assert "| 0 % | 0 | 0 | 0 | 50.0 | 45.0 (40.0–50.0) |" in md
    assert "| 100 % | 2 | 1 | 1 | 60.0 (50.0–70.0) | 55.0 |" in md
