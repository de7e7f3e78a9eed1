"""`lens evaluate` (one variant under one protocol) and `lens froc-plot` (variants side by side). The paper's
tables over seeds are lens_core.paper_tables'."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from lens_core.arguments import non_negative_int, positive_float, positive_int, probability
from lens_core.evaluation import inputs
from lens_core.evaluation.api import evaluate_matching, match, write_outputs
from lens_core.evaluation.bootstrap import unit_patients
from lens_core.evaluation.deeplesion2d import key_slice_sections, unit_images
from lens_core.evaluation.luna import points_from_boxes
from lens_core.evaluation.plots import plot_froc
from lens_core.evaluation.tables import summarize, to_markdown
from lens_core.io import InputError, read_meta

log = logging.getLogger("lens")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FROC of one variant: LENS 3D IoBB, DeepLesion 2D or LUNA16 protocol",
        description="Match a detection table to the ground truth under one protocol (paper Sec. VI-C, "
                    "VI-E) and write froc.parquet, summary.parquet, summary.md and froc.png to --out.",
    )
    p.add_argument("--pred", required=True, type=Path, help="detections (Parquet or CSV)")
    p.add_argument("--truth", required=True, type=Path, help="ground truth (test3d.parquet, truth.parquet, ...)")
    p.add_argument("--protocol", required=True, choices=["lens3d", "deeplesion2d", "luna"])
    p.add_argument("--score-column", default="score",
                   help="rank detections by this column (e.g. score_fpr: the FPR score alone)")
    p.add_argument("--name", default="model", help="variant name in tables and plots")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--units", type=Path,
                   help="table listing every evaluated unit (e.g. volumes.parquet); default: the truth's "
                        "'subvolumes' metadata, else every unit seen in either table")
    p.add_argument("--unit-column",
                   help="unit column (lens3d: subvolume, else volume_id; luna: scan, else volume_id)")
    p.add_argument("--split", help="keep only --units / --truth rows of this split (e.g. test)")
    p.add_argument("--volumes", type=Path, help="volumes.parquet: voxel spacing for luna on box tables")
    p.add_argument("--threshold", type=probability,
                   help="IoBB (lens3d, 0.3) or IoU (deeplesion2d, 0.5) threshold, in [0, 1]")
    p.add_argument("--fp-rates", type=positive_float, nargs="+",
                   help="FP rates to report, each > 0 (protocol default)")
    p.add_argument("--max-marks", type=positive_int, default=100, help="luna: marks kept per scan")
    p.add_argument("--bootstrap", type=non_negative_int, default=2000,
                   help="bootstrap draws (test patients resampled) for the 95%% interval of the average; 0: none")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (the same seed draws the same patients)")
    p.add_argument("--patient-column", default="patient_id",
                   help="--units column naming each unit's patient, the bootstrap's unit of resampling "
                        "(without it, or without --units, each unit is resampled alone)")
    p.add_argument("--strata", nargs="*", default=["lesion_type", "size_bin", "dataset"])
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("froc-plot", help="several variants' froc.parquet on one FROC plot + table",
                       description="Combine froc.parquet files of several variants into one PNG and a table. "
                                   "The table takes each average's bootstrap interval from the summary.parquet "
                                   "that `lens evaluate` wrote beside the froc.parquet.")
    p.add_argument("--curves", required=True, type=Path, nargs="+", help="froc.parquet files")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--table", type=Path, help="Markdown summary to write (a .parquet twin is written too)")
    p.add_argument("--stratum", default="all", help="stratum to plot (default all)")
    p.add_argument("--title", default="FROC")
    p.add_argument("--val-summaries", type=Path, nargs="+",
                   help="summary.parquet of each curve's variant on the validation split, in --curves order: "
                        "its average, interval and lesion count beside the test columns in --table")
    p.add_argument("--paper", nargs="+", metavar="AVG",
                   help="the paper's average sensitivity (%%) of each curve, in --curves order ('-' = none): "
                        "a column beside ours in --table")
    p.set_defaults(func=run_froc_plot)


def _unit_column(args, protocol: str, truth) -> str:
    if args.unit_column:
        return args.unit_column
    preferred = {"lens3d": "subvolume", "luna": "scan", "deeplesion2d": "image"}[protocol]
    return preferred if preferred in truth.columns or protocol == "deeplesion2d" else "volume_id"


def run_evaluate(args: argparse.Namespace) -> int:
    pred = inputs.read_table(args.pred)
    if args.score_column != "score":
        inputs.require_columns(pred, [args.score_column], "predictions")
        pred = pred.assign(score=pred[args.score_column])
    truth = inputs.read_table(args.truth)
    by_split = truth.attrs.pop("units_by_split", None)
    if args.split and by_split is not None:
        truth.attrs["units"] = by_split.get(args.split, [])
    if args.split and "split" in truth.columns:
        truth = truth.loc[truth["split"] == args.split]
    if truth.empty:  # a sensitivity of no lesion is undefined (the bootstrap failed with an IndexError)
        raise InputError(f"{args.truth}: no ground-truth lesions{f' in split {args.split}' if args.split else ''}"
                         f" to score against (DeepLesion without its manual 3D test set writes an empty "
                         f"test3d.parquet: `lens import-manual-3d` makes the set from the authors' pickle)")
    unit = _unit_column(args, args.protocol, truth)

    # the list travels in attrs only as far as here: pandas deep-copies attrs on every operation
    units, unit_info = truth.attrs.pop("units", None), None
    if args.units:
        table = inputs.read_table(args.units)
        if args.split:
            inputs.require_columns(table, ["split"], "units")
            table = table.loc[table["split"] == args.split]
        if args.protocol == "deeplesion2d":  # units are key-slice images
            table, truth = unit_images(table, truth)
            if truth.empty:
                raise InputError(f"{args.truth}: no key-slice lesions in the volumes of {args.units}"
                                 f"{f' (split {args.split})' if args.split else ''}")
        col = unit if unit in table.columns else ("volume_id" if "volume_id" in table.columns else unit)
        inputs.require_columns(table, [col], "units")
        units = pd.unique(table[col]).tolist()
        unit_info = table.drop_duplicates(col).set_index(col)

    if args.protocol == "deeplesion2d" and {"z1", "z2"} <= set(pred.columns):
        n3d = len(pred)
        pred = key_slice_sections(pred, truth)
        log.info("deeplesion2d: %d 3D boxes scored by their %d cross-sections on the key slices", n3d, len(pred))

    if args.protocol == "luna":
        if not {"x", "y", "z"} <= set(pred.columns):
            if args.volumes is None:
                raise ValueError(f"{args.pred}: luna on box tables needs --volumes for the voxel spacing")
            vols = inputs.read_table(args.volumes)
            pred = points_from_boxes(pred, vols, "predictions")
            truth = points_from_boxes(truth, vols, "ground truth")
        for df in (pred, truth):
            if "scan" not in df.columns:
                df["scan"] = df[unit]

    m = match(pred, truth, args.protocol, units=units, unit_info=unit_info, threshold=args.threshold,
              fp_rates=args.fp_rates, max_marks=args.max_marks,
              **({"unit": unit} if args.protocol == "lens3d" else {}))
    patients = unit_patients(m, args.patient_column)  # checked before anything is written
    froc, summary = evaluate_matching(m, args.name, strata=tuple(args.strata), bootstrap=args.bootstrap,
                                      seed=args.seed, patients=patients)
    fp_rates = froc.attrs["fp_rates"]
    write_outputs(args.out, froc, summary, fp_rates, title=f"{args.name} ({args.protocol})", matching=m,
                  patients=patients)
    overall = summary.loc[summary["stratum_by"] == "all"].iloc[0]
    ci = (f" (95% CI {100 * overall['average_low']:.1f}-{100 * overall['average_high']:.1f}, "
          f"{len(set(patients))} patients)" if args.bootstrap else "")
    log.info("%s: average sensitivity %.1f%%%s over %d lesions, %d units -> %s", args.name,
             100 * overall["average"], ci, overall["n_gt"], overall["n_units"], args.out)
    return 0


def run_froc_plot(args: argparse.Namespace) -> int:
    if args.paper is not None and len(args.paper) != len(args.curves):
        raise ValueError(f"--paper has {len(args.paper)} values for {len(args.curves)} --curves")
    if args.val_summaries is not None and len(args.val_summaries) != len(args.curves):
        raise ValueError(f"--val-summaries has {len(args.val_summaries)} files for {len(args.curves)} --curves")
    frocs, rates, paper = [], None, {}
    for i, path in enumerate(args.curves):
        df = inputs.read_table(path)
        inputs.require_columns(df, ["variant", "protocol", "stratum_by", "stratum", "fp_rate", "sensitivity", "n_gt"], "froc")
        meta = pq_fp_rates(path)
        if rates is not None and meta != rates:
            raise ValueError(f"{path}: FP rates {meta} differ from the other curves' {rates}")
        rates = meta
        frocs.append(df)
        if args.paper is not None and args.paper[i] != "-":
            try:
                paper.update({v: float(args.paper[i]) for v in df["variant"].unique()})
            except ValueError:
                raise ValueError(f"--paper value {i + 1} ({args.paper[i]!r}) is not a number or '-'") from None
    froc = pd.concat(frocs, ignore_index=True)
    if froc["protocol"].nunique() > 1:
        raise ValueError(f"curves of different protocols cannot share a plot: {sorted(froc['protocol'].unique())}")
    plot_froc(froc, rates, args.out, title=args.title, stratum=args.stratum)
    if args.table:
        summary = summarize(froc, rates)
        summary = summary.loc[summary["stratum"] == args.stratum]
        summary = with_intervals(summary, args.curves, args.stratum)
        if args.val_summaries is not None:
            summary = with_validation(summary, args.curves, args.val_summaries, rates, args.stratum)
        # the paper's figures ride in the metadata: `lens report` renders this table, not the Markdown
        meta = {"fp_rates": list(rates), **({"paper": paper} if args.paper is not None else {})}
        inputs.write_parquet(summary, args.table.with_suffix(".parquet"), meta)
        inputs.write_text(to_markdown(summary, args.title, paper if args.paper is not None else None), args.table)
    log.info("plotted %d variant(s) -> %s", froc["variant"].nunique(), args.out)
    return 0


def _stratum_row(path, stratum: str, what: str):
    """The ``stratum`` row of a summary.parquet written by `lens evaluate` (None when it has none)."""
    s = pd.read_parquet(path)
    if "stratum" not in s.columns or "average" not in s.columns:
        raise ValueError(f"{path}: not a summary.parquet of `lens evaluate` ({what})")
    rows = s.loc[s["stratum"] == stratum]
    return None if rows.empty else rows.iloc[0]


def with_intervals(summary, curves, stratum: str):
    """``average_low``/``average_high`` of each variant from the summary.parquet beside its froc.parquet
    (NaN where `lens evaluate` ran without a bootstrap)."""
    low, high = {}, {}
    for path in curves:
        twin = Path(path).with_name("summary.parquet")
        row = _stratum_row(twin, stratum, "beside a --curves file") if twin.exists() else None
        if row is not None and "average_low" in row.index:
            low[row["variant"]], high[row["variant"]] = row["average_low"], row["average_high"]
    if not low:
        return summary
    return summary.assign(average_low=summary["variant"].map(low).astype(float),
                          average_high=summary["variant"].map(high).astype(float))


def with_validation(summary, curves, val_summaries, rates, stratum: str):
    """The validation split's average, interval and lesion count of each curve's variant."""
    rows = {}
    for curve, path in zip(curves, val_summaries):
        if pq_fp_rates(path) != rates:
            raise ValueError(f"{path}: FP rates {pq_fp_rates(path)} differ from the test curves' {rates}")
        variants = pd.read_parquet(curve, columns=["variant"])["variant"].unique()
        row = _stratum_row(path, stratum, "--val-summaries")
        if row is None:
            raise ValueError(f"{path}: no {stratum!r} row (--val-summaries)")
        nan = float("nan")
        for v in variants:
            rows[v] = {"val_average": row["average"], "val_average_low": row.get("average_low", nan),
                       "val_average_high": row.get("average_high", nan), "val_n_gt": int(row["n_gt"])}
    val = pd.DataFrame.from_dict(rows, orient="index")
    return summary.join(val, on="variant")


def pq_fp_rates(path) -> list[float]:
    """The FP rates a froc.parquet was summarised at (its metadata)."""
    meta = read_meta(path)
    if "fp_rates" not in meta:
        raise ValueError(f"{path}: no fp_rates metadata; was it written by `lens evaluate`?")
    return [float(r) for r in meta["fp_rates"]]
