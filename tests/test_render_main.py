"""Table 1 (results/tables/main.*): values, bold best, and runs that could not happen."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fusion.render import write_tables


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
