"""Table 1 (results/tables/main.*): values, bold best, and runs that could not happen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fusion.report.tables.main import write_tables


def _metrics(dataset: str, values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, aurocs in values.items():
        for seed, v in enumerate(aurocs):
            for metric in ("auroc", "auprc", "macro_f1", "accuracy"):
                rows.append({"dataset": dataset, "method": method, "protocol": "full",
                             "seed": seed, "split": "test", "task": "macro",
                             "metric": metric, "value": v})  # fmt: skip
    return pd.DataFrame(rows)


def _unavailable(root: Path, method: str, reason: str, kind: str | None) -> None:
    """A run marked unavailable as the trainer writes it (``kind``: its short form)."""
    run = root / "runs" / "full" / method
    run.mkdir(parents=True)
    summary = {"status": "unavailable", "reason": reason}
    if kind is not None:
        summary["unavailable_kind"] = kind
    (run / "summary.json").write_text(json.dumps(summary))


def test_main_table_marks_runs_that_could_not_happen(tmp_path: Path) -> None:
    paths = []
    for ds, vals in {"demo-a": {"medmix": [0.8, 0.9], "concat": [0.7, 0.7]},
                     "demo-b": {"medmix": [0.6, 0.6], "concat": [0.65, 0.75]}}.items():  # fmt: skip
        root = tmp_path / ds
        root.mkdir()
        _metrics(ds, vals).to_parquet(root / "metrics.parquet")
        paths.append(root / "metrics.parquet")
    onellm = "no OneLLM weights configured. OneLLM needs ..."
    _unavailable(tmp_path / "demo-a", "onellm", onellm, "weights absent")
    _unavailable(tmp_path / "demo-b", "adacomed", "adacomed reads the large (teacher) branch ...",
                 "no teacher")  # fmt: skip
    _unavailable(tmp_path / "demo-b", "onellm", onellm, "weights absent")
    _unavailable(tmp_path / "demo-b", "max", "a summary from before the short form existed", None)
    out = tmp_path / "tables"
    write_tables(paths, out, "header line")
    md = (out / "main.md").read_text()
    assert "| OneLLM (weights absent) | n/a | n/a | n/a | n/a |" in md
    assert "| AdaCoMed (no teacher) | n/a |" in md
    assert "| Max (not run) | n/a |" in md  # the cell reads the kind, never the reason text
    # one note per reason, naming every dataset it applies to
    assert md.count("- Not run: OneLLM on demo-a, demo-b: no OneLLM weights configured") == 1
    assert "**0.850 ± 0.071**" in md  # demo-a MedMIX AUROC is the best, in bold, 3 decimals
    assert "**0.700 ± 0.071**" in md  # demo-b Concat
    csv = pd.read_csv(out / "main.csv", keep_default_na=False)
    row = csv[(csv["dataset"] == "demo-a") & (csv["method"] == "onellm")].iloc[0]
    assert row["seeds"] == 0 and row["auroc_mean"] == "" and "OneLLM" in row["unavailable"]
    assert csv[csv["method"] == "medmix"]["unavailable"].eq("").all()
    # a method's rows stay with their dataset, in the paper's order (MedMIX last)
    assert csv["dataset"].tolist() == ["demo-a"] * 3 + ["demo-b"] * 5
    tex = (out / "main.tex").read_text()
    assert "OneLLM (weights absent)" in tex
    page = (out / "main.html").read_text()
    assert "<strong>0.850 ± 0.071</strong>" in page and "OneLLM (weights absent)" in page


def test_teacher_references_are_set_apart_and_never_bold(tmp_path: Path) -> None:
    """An ``*-Large`` row beating every fusion method is shown in its own block, not bold."""
    root = tmp_path / "demo-a"
    root.mkdir()
    vals = {"medmix": [0.8, 0.82], "concat": [0.7, 0.72], "ehr-large": [0.9, 0.92],
            "medmix-only-ehr": [0.6, 0.62]}  # fmt: skip
    _metrics("demo-a", vals).to_parquet(root / "metrics.parquet")
    out = tmp_path / "tables"
    written = write_tables([root / "metrics.parquet"], out, "header line")
    assert {p.suffix for p in written} == {".md", ".tex", ".csv", ".html"}
    md = (out / "main.md").read_text()
    rows = [r for r in md.splitlines() if r.startswith("| ")][1:]
    labels = [r.split("|")[2].strip() for r in rows]
    # compared methods first (MedMIX last of them), then a labelled reference block
    assert labels == ["MedMIX (EHR only)", "Concat", "MedMIX",
                      "_Teacher references (not ranked)_", "EHR-Large"]  # fmt: skip
    assert "| EHR-Large | 0.910 ± 0.014 |" in md  # never bold, though the highest
    assert "**0.810 ± 0.014**" in md  # MedMIX is the best compared method
    tex = (out / "main.tex").read_text()
    assert "\\textit{Teacher references (not ranked)}" in tex and "\\cmidrule" in tex
    assert "\\textbf{0.910" not in tex and "\\textbf{0.810 $\\pm$ 0.014}" in tex
    csv = pd.read_csv(out / "main.csv", keep_default_na=False)
    ref = csv.set_index("method")
    assert bool(ref.loc["ehr-large", "reference"]) and not bool(ref.loc["medmix", "reference"])
    assert bool(ref.loc["medmix", "auroc_best"]) and not bool(ref.loc["ehr-large", "auroc_best"])
    page = (out / "main.html").read_text()
    assert '<tbody class="reference">' in page
    assert "<strong>0.810 ± 0.014</strong>" in page and "<strong>0.910" not in page


def _paired_dataset(root: Path, runs: dict, seed: int) -> Path:
    """A dataset with a manifest, run folders with predictions, and the metrics table the
    trainer would collect from them (macro test AUROC per seed, as Table 1 reads it)."""
    from fusion.metrics import evaluate_split
    from tests.fusion.test_fusion_paired import synthetic, write_runs

    y, good, bad = synthetic(n=70, strength=(3.0, 0.0), seeds=(3, 3), rng_seed=seed)
    probs = {m: {"good": good, "bad": bad}.get(v) for m, v in runs.items()}
    write_runs(root, y, probs)
    rows = []
    for method, p in probs.items():
        for s, ps in enumerate(p if p is not None else []):
            sm = evaluate_split(y, ps.astype(np.float32), "multilabel", ["y0", "y1", "y2"])
            for metric in ("auroc", "auprc", "macro_f1", "accuracy"):
                rows.append({"dataset": root.name, "method": method, "protocol": "full",
                             "seed": s, "split": "test", "task": "macro", "metric": metric,
                             "value": sm.macro.get(metric, sm.macro["auroc"])})  # fmt: skip
    pd.DataFrame(rows).to_parquet(root / "metrics.parquet")
    return root / "metrics.parquet"


def test_main_table_shows_paired_bootstrap_differences(tmp_path: Path) -> None:
    paths = [
        _paired_dataset(tmp_path / "demo-a", {"medmix": "good", "concat": "bad",
                                              "linear-probe": "good", "onellm": None}, 0),
        _paired_dataset(tmp_path / "demo-b", {"medmix": "good", "concat": "bad"}, 1),
    ]  # fmt: skip
    out = tmp_path / "tables"
    write_tables(paths, out, "header line")
    md = (out / "main.md").read_text()
    head = next(r for r in md.splitlines() if r.startswith("| Dataset"))
    assert head.endswith("| Acc | Δ AUROC vs MedMIX [95 % CI] | Δ AUROC vs probe [95 % CI] |")
    cells = {}
    ds = None
    for r in md.splitlines()[md.splitlines().index(head) + 2 :]:
        if not r.startswith("| "):
            continue
        parts = [c.strip() for c in r.split("|")[1:-1]]
        ds = parts[0] or ds
        cells[(ds, parts[1])] = parts[-2:]
    # MedMIX is the reference of its own column; Concat is clearly worse, marked significant
    assert cells[("demo-a", "MedMIX")][0] == "—"
    vs_medmix, vs_probe = cells[("demo-a", "Concat")]
    assert vs_medmix.startswith("-0.") and vs_medmix.endswith("†")
    assert vs_probe.startswith("-0.") and vs_probe.endswith("†")
    # the probe predicts exactly what MedMIX does: 0 difference, not significant
    assert cells[("demo-a", "Linear probe (LR)")] == ["+0.000 [+0.000, +0.000]", "—"]
    assert cells[("demo-a", "MedMIX")][1] == "+0.000 [+0.000, +0.000]"
    assert cells[("demo-a", "OneLLM (weights absent)")][-2:] == ["n/a (weights absent)"] * 2
    assert cells[("demo-b", "Concat")][1] == "n/a (no probe run)"  # no probe on demo-b
    assert "paired bootstrap resamples" in md and "2,000" in md
    csv = pd.read_csv(out / "main.csv")
    row = csv[(csv["dataset"] == "demo-a") & (csv["method"] == "concat")].iloc[0]
    ref = csv[(csv["dataset"] == "demo-a") & (csv["method"] == "medmix")].iloc[0]
    # the point difference is the difference of Table 1's AUROC means
    assert abs(row["delta_auroc_vs_medmix"] - (row["auroc_mean"] - ref["auroc_mean"])) < 1e-6
    assert row["delta_auroc_vs_medmix_lo"] <= row["delta_auroc_vs_medmix"]
    assert row["delta_auroc_vs_medmix_hi"] < 0 and bool(row["delta_auroc_vs_medmix_significant"])
    assert ref["delta_auroc_vs_medmix_note"] == "reference"
    onellm = csv[csv["method"] == "onellm"].iloc[0]
    assert np.isnan(onellm["delta_auroc_vs_medmix"]) and onellm["delta_auroc_vs_medmix_note"] == (
        "weights absent")  # fmt: skip
    tex = (out / "main.tex").read_text()
    assert "$\\Delta$ AUROC vs MedMIX [95\\,\\% CI]" in tex and "$^{\\dagger}$" in tex
    assert "\\begin{tabular}{ll" + "c" * 6 + "}" in tex
    page = (out / "main.html").read_text()
    assert "Δ AUROC vs MedMIX [95 % CI]</th>" in page and "]†</td>" in page
    # with Δ columns, only teacher references are drawn as reference blocks (none here)
    assert '<tbody class="reference">' not in page and page.count("<tbody") >= 2


def test_main_table_without_a_probe_has_no_probe_column(tmp_path: Path) -> None:
    path = _paired_dataset(tmp_path / "demo-a", {"medmix": "good", "concat": "bad"}, 2)
    write_tables([path], tmp_path / "tables", "header line", n_boot=200, boot_seed=3)
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "Δ AUROC vs MedMIX [95 % CI]" in md and "vs probe" not in md
    assert "200 paired bootstrap resamples of the test samples (seed 3" in md
