# Input functions of evaluation and the report: which detections a stage scores, with which truth and protocol.


def stage_pred(wildcards, split="test"):
    """The 3D detections of an evaluated stage on the DeepLesion-like test split."""
    e, s = wildcards.exp, wildcards.stage
    if s in ("r2_fpr", "fpr_only"):  # one scored table: score = Eq. 4, score_fpr = the FPR alone
        return f"results/{e}/fpr/{split}.3d.parquet"
    rnd, experts = s.split("_")
    return f"results/{e}/{ROUND_OF[rnd]}/proposals/{experts}/deeplesion/{split}.3d.parquet"


def stage_pred_val(wildcards):
    """The same stage's detections on the DeepLesion-like validation split."""
    return stage_pred(wildcards, "val")


def eval_protocol():
    """evaluation.protocol, with auto resolved: lens3d on the built-in corpus's full 3D truth or on DeepLesion's
    manual 3D set (its CSVs in the release folder, `lens import-manual-3d`); without that set, DeepLesion's
    official key-slice protocol (deeplesion2d), the only complete truth a real run then has."""
    chosen = config["evaluation"].get("protocol", "auto")
    if chosen != "auto":
        return chosen
    dl = config["datasets"].get("deeplesion")
    if config["corpus"]["builtin"] or dl is None:  # without DeepLesion no rule evaluates on it
        return "lens3d"
    manual = Path(dl["root"]) / "manual_3d" / "boxes.csv"
    return "lens3d" if manual.is_file() else "deeplesion2d"


def eval_truth(wildcards):
    """The built-in corpus's full 3D truth carries lesion type and size (stratified FROC); real data uses
    the manual 3D test set, or without it the key-slice boxes (deeplesion2d)."""
    if eval_protocol() == "deeplesion2d":
        return "results/prep/deeplesion/lesions.parquet"
    if config["corpus"]["builtin"]:
        return "results/truth/deeplesion.parquet"
    return "results/prep/deeplesion/test3d.parquet"


def eval_protocol_args(wildcards):
    """`lens evaluate`'s protocol flags: lens3d with the config's IoBB and FP rates per sub-volume;
    deeplesion2d with its own (IoU 0.5; 0.5..16 FPs per key-slice image), its units the split's key slices."""
    e = config["evaluation"]
    if eval_protocol() == "deeplesion2d":
        return "--protocol deeplesion2d"
    return (f"--protocol lens3d --unit-column volume_id --threshold {e['iobb']} "
            f"--fp-rates {' '.join(str(r) for r in e['fp_rates'])}")


def eval_protocol_title():
    return {"lens3d": "LENS 3D protocol",
            "deeplesion2d": "DeepLesion's key-slice protocol (no manual 3D set)"}[eval_protocol()]


def validation_precision(wildcards):
    """Mining precision on the validation split needs its full 3D annotations: the built-in corpus's, or
    real DeepLesion's manual 3D set; without them it is left out of the default target."""
    return [f"results/{MAIN}/mining/val_precision.md"] if eval_protocol() == "lens3d" else []


def main_curves(wildcards):
    return [f"results/eval/{MAIN}/{s}/froc.parquet" for s in MAIN_STAGES]


def main_val_summaries(wildcards):
    return [f"results/eval/{MAIN}/{s}/val/summary.parquet" for s in MAIN_STAGES]


def main_paper_arg(wildcards):
    """The paper's Table II average of each main stage, from the ablation rows of the "full" experiment
    (the main pipeline's recipe), '-' where the paper gives none."""
    paper = {r["stage"]: r["paper"] for r in ABLATION["rows"].values()
             if r["experiment"] == "full" and r.get("paper") is not None}
    return " ".join(str(paper.get(s, "-")) for s in MAIN_STAGES)


def mining_audit(wildcards):
    """The mining audit's table and montage for the report: they read the built-in corpus's hidden truth, so
    with real data (which has none) they are left out of the DAG, not run to a crash."""
    if not config["corpus"]["builtin"]:
        return {}
    return {"audit": f"results/{MAIN}/mining/audit.parquet", "montage": f"results/{MAIN}/mining/montage.png"}


def audit_flags(wildcards, input):
    return " ".join(f"--{k} {input[k]}" for k in ("audit", "montage") if k in input.keys())


def delta_plot(wildcards):
    """The delta audit plot of the main experiment (built-in corpus: it reads the hidden truth)."""
    return [f"results/{MAIN}/mining/delta_audit.png"] if config["corpus"]["builtin"] else []


def ablation_summaries(wildcards):
    """Every ablation run's test and validation summary and matches (the bootstrap's input)."""
    return sorted({f"results/eval/{exp_name(r['experiment'], s)}/{r['stage']}/{split}{name}.parquet"
                   for r in ABLATION["rows"].values() for s in ABLATION["seeds"]
                   for split in ("", "val/") for name in ("summary", "matches")})


def exp_seed(wildcards):
    return exp_spec(wildcards.exp)[1]


def eval_dir(wildcards, output):
    """results/eval, the folder of every evaluated stage (results/eval/<exp>/<stage>/): ablation/table.md's grandparent."""
    return str(Path(output.table).parent.parent)


def ablation_spec_arg(wildcards):
    """The ablation rows as JSON for `lens ablation-table`: row -> list of (experiment name, stage) per seed."""
    rows = {label: {"stage": r["stage"], "paper": r.get("paper"), "vs": r.get("vs"),
                    "exps": [exp_name(r["experiment"], s) for s in ABLATION["seeds"]]}
            for label, r in ABLATION["rows"].items()}
    return json.dumps(rows)


def extent_arg(wildcards):
    r = exp_mining(wildcards.exp).get("extent_ratio")
    return f"--extent-ratio {r}" if r else ""


def stage_label(wildcards):
    return STAGE_LABEL[wildcards.stage]


def stage_score_column(wildcards):
    return "score_fpr" if wildcards.stage == "fpr_only" else "score"
