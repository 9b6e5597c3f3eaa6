"""The Snakemake workflow end to end on the smoke config (tiny demo cohorts).

Checks the user-facing promises of the demo: the DAG runs to tables and figures, a rerun
does nothing, and deleting one cache rebuilds only it and what depends on it.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# end-to-end Snakemake runs: the slow tier (`pytest -m "not slow"` leaves them out)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _smk(results: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # targets and flags first: --config takes every following word as a key=value pair
    cmd = [
        *SNAKEMAKE,
        *args,
        "--cores",
        "2",
        "--configfile",
        "config/smoke.yaml",
        "--config",
        f"results={results}",
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _job_counts(dry_run_output: str) -> dict[str, int]:
    counts = {}
    block = dry_run_output.split("Job stats:")[-1]
    for line in block.splitlines():
        m = re.match(r"^([a-z_]+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_lint_is_clean() -> None:
    proc = subprocess.run(
        [*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Lints for" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("smoke") / "results"
    proc = _smk(results)
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-1500:] for p in results.glob("logs/**/*.log"))
        pytest.fail(f"snakemake failed:\n{proc.stderr[-4000:]}\n--- logs ---\n{logs[-6000:]}")
    return results


def test_demo_produces_tables_and_figures(smoke_run: Path) -> None:
    md = (smoke_run / "tables" / "main.md").read_text()
    for ds in ("demo-openi", "demo-mimic", "demo-ccrcc"):
        assert ds in md
    assert "MedMIX" in md and "MeanAvg" in md and "Concat" in md
    assert "AdaCoMed" in md and "EHR-Large" in md  # teacher-reading rows (demo-mimic only)
    assert md.count("**") >= 2 * 4  # the best value per column is bold
    csv = pd.read_csv(smoke_run / "tables" / "main.csv")
    assert {"dataset", "method", "auroc_mean", "auroc_std"} <= set(csv.columns)
    ran = csv["unavailable"].isna()  # AdaCoMed / *-Large without a teacher: marked, no values
    assert set(csv.loc[~ran, "method"]) == {"adacomed"}, csv.loc[~ran]
    assert csv.loc[ran, "auroc_mean"].between(0, 1).all()
    assert (csv.loc[ran, "seeds"] == 2).all() and csv.loc[~ran, "auroc_mean"].isna().all()
    assert "AdaCoMed (no teacher)" in md
    assert "\\begin{tabular}" in (smoke_run / "tables" / "main.tex").read_text()
    for fig in ("main_auroc", "fusion_weights"):
        assert (smoke_run / "figures" / f"{fig}.png").stat().st_size > 5000
        assert (smoke_run / "figures" / f"{fig}.svg").exists()
        assert (smoke_run / "figures" / f"{fig}.pdf").read_bytes().startswith(b"%PDF")
    assert "<table>" in (smoke_run / "tables" / "main.html").read_text()
    # the paper grid: teacher cache, a train-time and a test-time protocol, their tables
    assert (smoke_run / "demo-mimic" / "teachers" / "ehr.parquet").exists()
    for ds in ("demo-openi", "demo-mimic", "demo-ccrcc"):
        assert (smoke_run / ds / "runs" / "train_random-0.5" / "medmix" / "summary.json").exists()
        assert (smoke_run / ds / "runs" / "test_random-0.5" / "medmix" / "summary.json").exists()
    for table in ("train_random", "test_random", "experts", "per_task"):
        assert "| " in (smoke_run / "tables" / f"{table}.md").read_text()
    assert "| No modality left |" in (smoke_run / "tables" / "test_random.md").read_text()
    # one ablation variant, its table and figure
    ablation = pd.read_csv(smoke_run / "tables" / "ablation.csv")
    assert set(ablation["Setting"]) >= {"MedMIX", "w/o intra-modality fusion (uniform mean)"}
    assert ablation["auroc_mean"].between(0, 1).all()
    assert (smoke_run / "figures" / "ablation.png").stat().st_size > 5000


def _caption_file(output: str) -> str:
    """The caption (workflow/report/*.rst) the rules attach to a report output."""
    stem = Path(output).stem
    if output.startswith("figures/"):
        for prefix in ("random_drop_", "drop_one_", "weights_"):
            if stem.startswith(prefix):
                return prefix.rstrip("_")
        return {"ablation": "ablation_figure"}.get(stem, stem)
    return {"main": "main_table", "ablation": "ablation_table"}.get(stem, stem)


def _report_captions(html_text: str, results: Path) -> dict[str, str]:
    """output (relative to results) -> its caption as text, from a Snakemake HTML report."""
    out = {}
    key = re.compile('"' + re.escape(str(results)) + r'/([^"]+)": \{')
    for m in key.finditer(html_text):
        cap = re.search(r'"caption": ("(?:[^"\\]|\\.)*")', html_text[m.end() : m.end() + 3000])
        if cap:
            text = html.unescape(re.sub(r"<[^>]+>", "", json.loads(cap.group(1))))
            out[m.group(1)] = " ".join(text.split())
    return out


def test_report_gathers_every_table_and_figure_with_its_caption(smoke_run: Path) -> None:
    report = smoke_run.parent / "report.html"
    proc = _smk(smoke_run, "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    captions = _report_captions(report.read_text(), smoke_run)
    # tables go into the report as HTML (shown inline), figures as PNG
    produced = [str(p.relative_to(smoke_run)) for p in (*sorted(smoke_run.glob("tables/*.html")),
                                                        *sorted(smoke_run.glob("figures/*.png")))]  # fmt: skip
    expected = {"tables/main.html", "tables/test_random.html", "tables/ablation.html",
                "tables/experts.html", "figures/main_auroc.png", "figures/ablation.png",
                "figures/weights_demo-mimic.png", "figures/random_drop_demo-openi.png"}  # fmt: skip
    assert expected <= set(produced), produced
    for output in produced:
        rst = REPO / "workflow" / "report" / f"{_caption_file(output)}.rst"
        want = " ".join(rst.read_text().replace("``", "").split())
        assert captions.get(output) == want, (output, captions.get(output))


def test_rerun_does_nothing(smoke_run: Path) -> None:
    proc = _smk(smoke_run, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_deleting_one_cache_rebuilds_only_its_dependents(smoke_run: Path) -> None:
    """Snakemake does not regenerate a missing intermediate whose consumers are up to date,
    so the cache is requested by name (README: "Rerun one extractor"); then the next run
    retrains only what read it."""
    cache = smoke_run / "demo-mimic" / "embeddings" / "ehr" / "catch22.parquet"
    cache.unlink()
    rebuilt = _smk(smoke_run, str(cache), "-n")
    assert _job_counts(rebuilt.stdout + rebuilt.stderr) == {"extract": 1}
    proc = _smk(smoke_run, str(cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cache.exists()
    counts = _job_counts(_smk(smoke_run, "-n").stdout)
    # training of every method that reads the ehr expert caches (medmix, meanavg, concat, linear-probe,
    # adacomed, medmix-only-ehr, and medmix under train_random-0.5; not Ehr-Large, which reads
    # the teacher cache only), MedMIX's test-time protocols, one evaluate, the tables and
    # figures; no cohort, no other extraction
    assert counts.get("train") == 7, counts
    assert counts.get("test_protocols") == 1, counts
    assert counts.get("evaluate") == 1, counts
    # the demo-mimic ablation reads every cache of the dataset
    assert counts.get("ablation") == 1, counts
    assert "extract" not in counts and "demo_cohort" not in counts, counts
    assert _smk(smoke_run).returncode == 0
    again = _smk(smoke_run, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
