"""`lens report`: the page is rendered from the Parquet tables the steps wrote, with the captions of
workflow/report/*.rst (the ones `snakemake --report` shows), and per-rule times from the benchmark files."""
import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lens_core.cli import main  # noqa: E402
from lens_core.io import read_meta, write_parquet  # noqa: E402
from lens_core.mining.audit import write_audit  # noqa: E402
from lens_core.report.page import CAPTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RST = ROOT / "workflow" / "report"
RATES = [0.125, 0.25, 0.5, 1, 2, 4, 8]


def _froc(path: Path, variant: str, sens: list[float]) -> Path:
    rows = [{"variant": variant, "protocol": "lens3d", "stratum_by": "all", "stratum": "all", "fp_rate": r,
             "sensitivity": s, "n_gt": 20, "n_units": 10, "n_fp": int(r * 10)} for r, s in zip(RATES, sens)]
    write_parquet(pd.DataFrame(rows), path, {"fp_rates": RATES})
    return path


def _png(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def _text(rst: str) -> str:
    """A caption as the page shows it (whitespace folded, HTML-escaped)."""
    return html.escape(" ".join((RST / rst).read_text().split()))


@pytest.fixture()
def run(tmp_path):
    """A run's report inputs, written by the steps' own writers."""
    r1 = _froc(tmp_path / "r1.parquet", "round 1", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    r2 = _froc(tmp_path / "r2.parquet", "round 2", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert main(["froc-plot", "--curves", str(r1), str(r2), "--out", str(tmp_path / "froc.png"),
                 "--table", str(tmp_path / "table.md"), "--paper", "61.5", "-"]) == 0
    audit = pd.DataFrame({"strategy": ["cross_slice", "intra_patient"], "n_mined": [10, 4],
                          "precision": [0.5, 0.25], "duplicate_rate": [0.1, 0.0],
                          "recall_missing": [0.2, 0.05], "recall_missing_cum": [0.2, 0.25]})
    audit.attrs = {"split": "train", "truth_lesions": 40, "missing_lesion_slices": 50}
    write_audit(audit, tmp_path / "audit.md", tmp_path / "audit.parquet")
    bench = tmp_path / "benchmarks" / "train_lens_round1"
    bench.mkdir(parents=True)
    (bench / "lens.tsv").write_text("s\th:m:s\tmax_rss\n123.4\t0:02:03\t456.7\n")
    return tmp_path


def _report(run: Path, *extra: str) -> int:
    return main(["report", "--table", str(run / "table.parquet"), "--froc", str(_png(run / "froc.png")),
                 "--audit", str(run / "audit.parquet"), "--montage", str(_png(run / "montage.png")),
                 "--losses", str(_png(run / "l1.png")), str(_png(run / "l2.png")),
                 "--benchmarks", str(run / "benchmarks"), "--out", str(run / "report.html"), *extra])


def test_page_from_parquet_tables_with_rst_captions(run):
    assert _report(run) == 0
    page = (run / "report.html").read_text()
    # main table: our sensitivities in percent from table.parquet, the paper's figure beside round 1 only
    table = pd.read_parquet(run / "table.parquet")
    for _, row in table.iterrows():
        assert f"<td>{100 * row['average']:.1f}</td>" in page
        assert f"<td>{100 * row['FP@0.125']:.1f}</td>" in page
    assert "<th>paper (average)</th>" in page and "<td>61.5</td>" in page
    # audit from audit.parquet, its settings from the file's metadata
    assert "<td>50.0%</td>" in page and "<td>25.0%</td>" in page
    assert "truth lesions 40" in page
    # every caption is the .rst file's text
    for item in ("table", "froc", "audit", "montage", "losses"):
        assert _text(CAPTIONS[item]) in page, item
    assert _text(CAPTIONS["delta"]) not in page  # no delta plot given, no delta section
    assert page.count("data:image/png;base64,") == 4  # froc, montage, two loss curves
    # per-rule times from the benchmark files
    assert re.search(r"<td>train_lens_round1</td>\s*<td>1</td>\s*<td>123.4</td>", page)


def test_extra_columns_of_the_main_table_are_shown(run):
    """A column a later step adds to table.parquet (a bootstrap interval) appears without a change to the
    report; sensitivity-like columns (average...) in percent."""
    table = pd.read_parquet(run / "table.parquet")
    table["average_ci_low"] = table["average"] - 0.05
    table["val_average"] = [0.375, 0.5]  # the validation split beside test: in percent too (was 0.375)
    from lens_core.io import read_meta

    write_parquet(table, run / "table.parquet", read_meta(run / "table.parquet"))
    assert _report(run) == 0
    page = (run / "report.html").read_text()
    assert "<th>average_ci_low</th>" in page
    assert f"<td>{100 * table['average_ci_low'].iloc[0]:.1f}</td>" in page
    assert "<td>37.5</td>" in page and "<td>0.375</td>" not in page


def test_a_missing_caption_is_an_error_naming_it(run, tmp_path, caplog):
    captions = tmp_path / "captions"
    captions.mkdir()
    assert _report(run, "--captions", str(captions)) == 1
    assert "table.rst" in caplog.text
    assert not (run / "report.html").exists()


def test_captions_live_only_in_the_rst_files():
    """No caption is copied into the code: each .rst sentence appears in no Python file of lens_core."""
    sources = "\n".join(" ".join(p.read_text().split()) for p in (ROOT / "lens_core").rglob("*.py"))
    for rst in RST.glob("*.rst"):
        first = " ".join(rst.read_text().split())[:60]
        assert first not in sources, f"{rst.name}'s caption is copied into lens_core"


def test_the_report_names_the_protocol_its_numbers_were_scored_with(run, tmp_path):
    """Issue 23: a real run without DeepLesion's manual 3D set is scored by the key-slice protocol; the
    report says so above the main table, and says which protocol scored the built-in corpus's run."""
    from lens_core.report.page import PROTOCOLS

    assert _report(run) == 0
    page = (run / "report.html").read_text()
    assert html.escape(PROTOCOLS["lens3d"]) in page and html.escape(PROTOCOLS["deeplesion2d"]) not in page
    table = pd.read_parquet(run / "table.parquet").assign(protocol="deeplesion2d")
    write_parquet(table, run / "table.parquet", read_meta(run / "table.parquet"))
    assert _report(run) == 0
    page = (run / "report.html").read_text()
    assert html.escape(PROTOCOLS["deeplesion2d"]) in page and html.escape(PROTOCOLS["lens3d"]) not in page
