# Input functions of the review rules (review.smk) and of merge_labels' optional verdicts; included right
# after common.smk so that mining.smk can use them.

REVIEW = config["review"]
REVIEW_VALUE = REVIEW["value"]
REVIEW_PCTS = [row["percent"] for row in REVIEW_ROWS.values()]  # the experiments table's review-value rows


wildcard_constraints:
    pct=REVIEW_PCT_RE,


def verdicts_of(exp):
    path = f"results/{exp}/mining/review.parquet"
    return path if REVIEW["verdicts"] == "auto" and Path(path).exists() else []


def review_verdicts(wildcards):
    """merge_labels' optional input: the reviewer's verdicts, results/{exp}/mining/review.parquet, when
    config review.verdicts is auto and the file exists (lens review-import writes it). Its appearance,
    change or removal reruns merge_labels, and so round 2 and what follows it; nothing else does."""
    return verdicts_of(wildcards.exp)


def review_arg(wildcards, input):
    """`lens merge-labels --review` when the rule has verdicts."""
    path = input.review if "review" in input.keys() else []
    return f"--review {path}" if path else ""


def review_value_round(exp, pct):
    """The round-2 model of a review-value row: with 0 % reviewed and no real verdicts in use, round 2
    itself (the same labels), else round2rv<pct>, trained on that row's labels."""
    if float(pct) == 0 and not verdicts_of(exp):
        return "round2"
    return f"round2rv{pct}"


def review_fraction(wildcards):
    return float(wildcards.pct) / 100


def review_value_pred(wildcards):
    rnd = review_value_round(wildcards.exp, wildcards.pct)
    return f"results/{wildcards.exp}/{rnd}/proposals/fused/deeplesion/{wildcards.split}.3d.parquet"


def review_value_label(wildcards):
    return f"round 2, {wildcards.pct} % reviewed"


def split_of(wildcards):
    return wildcards.split


def review_value_rows(wildcards):
    """Every file of the review-value table of the main experiment: per percentage, its simulated review
    and its validation and test summaries."""
    if not config["corpus"]["builtin"]:
        raise ValueError("review_value needs the built-in corpus: the simulated reviewer answers from its hidden truth")
    return {f"{kind}_{p}": path for p in REVIEW_PCTS for kind, path in (
        ("review", f"results/{MAIN}/mining/review_value/p{p}/review.parquet"),
        ("val", f"results/eval/{MAIN}/review_value/p{p}/val/summary.parquet"),
        ("test", f"results/eval/{MAIN}/review_value/p{p}/test/summary.parquet"))}


def review_value_args(wildcards, input):
    return " ".join(f"--row {p} {input[f'review_{p}']} {input[f'val_{p}']} {input[f'test_{p}']}" for p in REVIEW_PCTS)
