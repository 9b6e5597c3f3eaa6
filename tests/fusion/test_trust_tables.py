"""Tables never misreport a spread: a row over fewer seeds than configured, or with a NaN / inf
seed value, is marked ‡ in every format (md, tex, csv, html) with a note saying why and is
never bold; metrics given twice (the same file, the same dataset, a seed's row repeated) are
refused with one line. Metrics tables are written to ``tmp_path`` and rendered through the
real entry points (``python -m fusion.render``, ``write_tables``, ``render_paper``, the table
builders on :class:`~fusion.report.cells.Cells`); ``collect_metrics`` reads real run folders.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.evaluate import collect_metrics
from fusion.report.cells import Cells, ReportInputError
from fusion.report.cli import main as render_main
from fusion.report.paper import render_paper
from fusion.report.table_render import table_csv, table_latex, table_markdown
from fusion.report.tables.efficiency import build_efficiency_table
from fusion.report.tables.main import write_tables
from fusion.report.tables.protocols import build_protocol_table
from medmix.cli import run_cli
from tests.fusion.test_render import make_cfg, synthetic_metrics, write_costs

REPO = Path(__file__).resolve().parents[2]
METRICS = ("auroc", "auprc", "macro_f1", "accuracy")
FIVE = [0.40, 0.41, 0.40, 0.42, 0.41]  # concat: mean 0.408, std 0.008


def frame(ds: str, runs: dict[str, dict[int, float]], task: str = "macro") -> pd.DataFrame:
    """Metrics rows: method -> {seed: value} (every metric the same value)."""
    rows = [
        {"dataset": ds, "protocol": "full", "method": method, "seed": seed, "split": "test",
         "task": task, "metric": metric, "value": v}
        for method, seeds in runs.items() for seed, v in seeds.items() for metric in METRICS
    ]  # fmt: skip
    return pd.DataFrame(rows)


def five(values: list[float]) -> dict[int, float]:
    return dict(enumerate(values))


def dataset(root: Path, ds: str, df: pd.DataFrame, seeds: dict[str, list[int]] | None = None):
    """``root/ds/metrics.parquet`` and, per method of ``seeds``, its run's summary.json."""
    (root / ds).mkdir(parents=True, exist_ok=True)
    for method, listed in (seeds or {}).items():
        run = root / ds / "runs" / "full" / method
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "ok", "seeds": listed}))
    df.to_parquet(root / ds / "metrics.parquet")
    return root / ds / "metrics.parquet"


def rendered(out: Path) -> dict[str, str]:
    return {ext: (out / f"main.{ext}").read_text() for ext in ("md", "tex", "csv", "html")}


# -- a seed missing -----------------------------------------------------------------------------


def test_a_run_with_seed_folders_missing_is_marked_and_never_bold(tmp_path: Path) -> None:
    """The reported case: MedMIX's summary.json lists five seeds, one has metrics; it used to
    read 0.442 ± 0.000 in bold beside five-seed rows."""
    df = frame("demo-a", {"medmix": {0: 0.4417}, "concat": five(FIVE),
                          "meanavg": five([0.30] * 5)})  # fmt: skip
    path = dataset(tmp_path, "demo-a", df, {"medmix": [0, 1, 2, 3, 4]})
    write_tables([path], tmp_path / "tables", "header")
    got = rendered(tmp_path / "tables")
    why = "1 of 5 seeds (seeds 1, 2, 3, 4 missing)"
    assert (
        "| MedMIX | 0.442 ± 0.000‡ | 0.442 ± 0.000‡ | 0.442 ± 0.000‡ | 0.442 ± 0.000‡ |"
        in got["md"]
    )
    assert "| Concat | **0.408 ± 0.008** |" in got["md"]  # the best complete row is bold
    assert f"- ‡ demo-a, MedMIX: {why}; never bold." in got["md"]
    assert "MedMIX & 0.442 $\\pm$ 0.000$^{\\ddagger}$ &" in got["tex"]
    assert f"% ‡ demo-a, MedMIX: {why}; never bold." in got["tex"]
    assert "\\textbf{0.442" not in got["tex"] and "\\textbf{0.408 $\\pm$ 0.008}" in got["tex"]
    assert "0.442 ± 0.000‡" in got["html"] and "<strong>0.442" not in got["html"]
    assert f"‡ demo-a, MedMIX: {why}; never bold." in got["html"]
    csv = pd.read_csv(tmp_path / "tables" / "main.csv", keep_default_na=False).set_index("method")
    assert csv.columns[-1] == "incomplete"
    assert csv.loc["medmix", "incomplete"] == why and csv.loc["concat", "incomplete"] == ""
    assert csv.loc["medmix", "seeds"] == 1 and not csv.loc["medmix", "auroc_best"]
    assert csv.loc["concat", "auroc_best"]


def test_fewer_seeds_than_the_dataset_is_marked_without_a_summary(tmp_path: Path) -> None:
    """No run folder beside the metrics: the seeds expected are every seed of the dataset."""
    df = frame("demo-a", {"medmix": {0: 0.9, 1: 0.9, 2: 0.9}, "concat": five(FIVE)})
    write_tables([dataset(tmp_path, "demo-a", df)], tmp_path / "t", "header")
    md = rendered(tmp_path / "t")["md"]
    assert "| MedMIX | 0.900 ± 0.000‡ |" in md and "**0.408 ± 0.008**" in md
    assert "- ‡ demo-a, MedMIX: 3 of 5 seeds (seeds 3, 4 missing); never bold." in md


# -- NaN / inf seed values ------------------------------------------------------------------------


def test_a_nan_seed_value_is_marked_not_dropped(tmp_path: Path) -> None:
    """MedMIX's AUROC is NaN in seed 2: the cell is the mean ± std of the other four, marked;
    the row is never bold, even where another of its cells is the best."""
    df = frame("demo-a", {"medmix": five([0.80, 0.81, 0.82, 0.83, 0.84]), "concat": five(FIVE)})
    df.loc[(df["method"] == "medmix") & (df["seed"] == 2) & (df["metric"] == "auroc"), "value"] = (
        np.nan
    )
    write_tables([dataset(tmp_path, "demo-a", df)], tmp_path / "t", "header")
    got = rendered(tmp_path / "t")
    why = "AUROC is NaN in seed 2 (mean ± std over the other 4)"
    assert (
        "| MedMIX | 0.820 ± 0.018‡ | 0.820 ± 0.016 | 0.820 ± 0.016 | 0.820 ± 0.016 |" in got["md"]
    )
    assert f"- ‡ demo-a, MedMIX: {why}; never bold." in got["md"]
    assert "**" not in got["md"].split("| Concat |")[0].split("| MedMIX |")[-1]
    assert "| Concat | **0.408 ± 0.008** | **0.408 ± 0.008** |" in got["md"]
    assert "0.820 $\\pm$ 0.018$^{\\ddagger}$" in got["tex"] and why in got["tex"]
    assert "0.820 ± 0.018‡" in got["html"]
    csv = pd.read_csv(tmp_path / "t" / "main.csv", keep_default_na=False).set_index("method")
    assert csv.loc["medmix", "incomplete"] == why
    assert csv.loc["medmix", "auroc_mean"] == pytest.approx(0.82)
    assert not csv.loc["medmix", ["auroc_best", "auprc_best"]].any()


def test_every_seed_nan_is_na_with_the_mark(tmp_path: Path) -> None:
    df = frame("demo-a", {"medmix": five([0.8] * 5), "concat": five(FIVE)})
    df.loc[(df["method"] == "medmix") & (df["metric"] == "auroc"), "value"] = np.nan
    write_tables([dataset(tmp_path, "demo-a", df)], tmp_path / "t", "header")
    md = rendered(tmp_path / "t")["md"]
    assert "| MedMIX | n/a‡ | 0.800 ± 0.000 |" in md
    assert "- ‡ demo-a, MedMIX: AUROC is NaN in seeds 0, 1, 2, 3, 4; never bold." in md


def test_an_inf_seed_value_is_marked_as_inf(tmp_path: Path) -> None:
    df = frame("demo-a", {"medmix": five([0.8] * 5), "concat": five(FIVE)})
    df.loc[(df["method"] == "medmix") & (df["seed"] == 4) & (df["metric"] == "auprc"), "value"] = (
        np.inf
    )
    write_tables([dataset(tmp_path, "demo-a", df)], tmp_path / "t", "header")
    md = rendered(tmp_path / "t")["md"]
    assert "| MedMIX | 0.800 ± 0.000 | 0.800 ± 0.000‡ |" in md
    assert "AUPRC is inf in seed 4 (mean ± std over the other 4); never bold." in md


# -- metrics given twice --------------------------------------------------------------------------


def test_the_same_file_twice_is_refused_by_the_command_line(tmp_path: Path) -> None:
    """``python -m fusion.render tables --metrics X X``: one line, exit 2, nothing written."""
    path = dataset(tmp_path, "demo-a", frame("demo-a", {"medmix": five(FIVE)}))
    out = tmp_path / "tables"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion.render", "tables", "--metrics", str(path), str(path),
         "--out-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: metrics file given twice (as {path} too)"
    assert not out.exists()


@pytest.mark.parametrize("command", ["tables", "figures"])
def test_one_file_under_two_spellings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = dataset(tmp_path, "demo-a", frame("demo-a", {"medmix": five(FIVE)}))
    other = tmp_path / "demo-a" / ".." / "demo-a" / "metrics.parquet"
    argv = [command, "--metrics", str(path), str(other), "--out-dir", str(tmp_path / "out")]
    assert run_cli(render_main, argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {other}: metrics file given twice (as {path} too)"
    )
    assert not (tmp_path / "out").exists()


def test_one_dataset_in_two_files_is_refused(tmp_path: Path) -> None:
    first = dataset(tmp_path, "demo-a", frame("demo-a", {"medmix": five(FIVE)}))
    copy = tmp_path / "copy" / "metrics.parquet"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    with pytest.raises(ReportInputError) as err:
        write_tables([first, copy], tmp_path / "t", "header")
    assert str(err.value) == (
        f"{copy}: dataset demo-a is also in {first}: give each dataset's metrics once"
    )
    assert not (tmp_path / "t").exists()


def test_a_seed_repeated_inside_one_file_is_refused(tmp_path: Path) -> None:
    df = frame("demo-a", {"medmix": five(FIVE), "concat": five(FIVE)})
    df = pd.concat([df, df[(df["method"] == "concat") & (df["seed"] == 3)]], ignore_index=True)
    path = dataset(tmp_path, "demo-a", df)
    with pytest.raises(ReportInputError) as err:
        write_tables([path], tmp_path / "t", "header")
    assert str(err.value) == (
        f"{path}: 8 rows repeat a seed's metric, e.g. dataset=demo-a, protocol=full, "
        "method=concat, seed=3, split=test, task=macro, metric=auroc: each seed must appear "
        "once per metric"
    )


# -- the paper tables: the config's seeds ---------------------------------------------------------


def test_paper_tables_expect_the_configs_seeds(tmp_path: Path) -> None:
    """render_paper: cells over fewer than the config's seeds (per task too) are marked, a
    task whose AUROC is NaN in every seed (a label with one class in the test split) is n/a‡."""
    cfg = {"results": str(tmp_path / "results"), "seeds": [0, 1, 2],
           "datasets": make_cfg(tmp_path)["datasets"], "experts": make_cfg(tmp_path)["experts"]}  # fmt: skip
    runs = {"medmix": {0: 0.8, 1: 0.82}, "meanavg": {0: 0.7, 1: 0.71, 2: 0.72},
            "adacomed": {0: 0.6, 1: 0.6, 2: 0.6}}  # fmt: skip
    df = pd.concat([frame("demo-mimic", runs, task) for task in ("macro", "mortality",
                                                                   "long_stay")])  # fmt: skip
    df.loc[(df["method"] == "meanavg") & (df["task"] == "long_stay") & (df["metric"] == "auroc"),
           "value"] = np.nan  # fmt: skip
    seed_dir = tmp_path / "results" / "demo-mimic" / "runs" / "full" / "medmix" / "seed0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "metrics.json").write_text(json.dumps({"task_type": "binary"}))
    render_paper(cfg, tmp_path / "tables", tmp_path / "figures", metrics=df)
    md = (tmp_path / "tables" / "per_task.md").read_text()
    rows = [r for r in md.splitlines() if r.startswith("| ")][1:]
    assert rows == [
        "| long_stay | MeanAvg | n/a‡ | 0.710 ± 0.010 | 0.710 ± 0.010 | 0.710 ± 0.010 |",
        "|  | AdaCoMed | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.600 ± 0.000 |",
        "|  | MedMIX | 0.810 ± 0.014‡ | 0.810 ± 0.014‡ | 0.810 ± 0.014‡ | 0.810 ± 0.014‡ |",
        "| mortality | MeanAvg | **0.710 ± 0.010** | **0.710 ± 0.010** | **0.710 ± 0.010** | "
        "**0.710 ± 0.010** |",
        "|  | AdaCoMed | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.600 ± 0.000 |",
        "|  | MedMIX | 0.810 ± 0.014‡ | 0.810 ± 0.014‡ | 0.810 ± 0.014‡ | 0.810 ± 0.014‡ |",
    ]  # one complete row left in long_stay: nothing to rank it against, no bold
    assert md.endswith(
        "_‡ long_stay, MeanAvg: AUROC is NaN in seeds 0, 1, 2; never bold._\n"
        "_‡ long_stay, MedMIX: 2 of 3 seeds (seed 2 missing); never bold._\n"
        "_‡ mortality, MedMIX: 2 of 3 seeds (seed 2 missing); never bold._\n"
    )
    csv = pd.read_csv(tmp_path / "tables" / "per_task.csv", keep_default_na=False)
    lost = "2 of 3 seeds (seed 2 missing)"
    assert csv["incomplete"].tolist() == ["AUROC is NaN in seeds 0, 1, 2", "", lost, "", "", lost]
    assert "% ‡ long_stay, MedMIX" in (tmp_path / "tables" / "per_task.tex").read_text()


def test_protocol_table_marks_a_setting_with_a_seed_missing() -> None:
    cfg = make_cfg(Path("/nonexistent"))
    df = synthetic_metrics(cfg)
    lost = (df["protocol"] == "train_random-0.3") & (df["method"] == "medmix") & (df["seed"] == 1)
    table = build_protocol_table(cfg, Cells(df[~lost], seeds=cfg["seeds"]), "train_random")
    flagged = [i for i in range(len(table.rows)) if table.row_flags(i)]
    assert [(table.rows[i]["dataset"], table.rows[i]["rate"]) for i in flagged] == [
        ("demo-openi", "0.3"), ("demo-mimic", "0.3")]  # fmt: skip
    assert all(table.row_flags(i) == ["2 of 3 seeds (seed 1 missing)"] for i in flagged)
    bold = {i for i, _ in table.best()}
    assert not bold & set(flagged)
    partner = [i for i, r in enumerate(table.rows) if r["rate"] == "0.3" and i not in flagged]
    assert len(partner) == 2 and not bold & set(partner)  # nothing complete to rank against
    assert {i for i, r in enumerate(table.rows) if r["rate"] == "0.5"} <= bold | {
        i for i, r in enumerate(table.rows) if r["method"] != "MedMIX"}  # fmt: skip
    assert "‡ demo-openi, MedMIX, 0.3: 2 of 3 seeds (seed 1 missing); never bold." in (
        table_markdown(table)
    )
    assert "$^{\\ddagger}$" in table_latex(table)
    assert "incomplete" in table_csv(table).splitlines()[0]


def test_efficiency_perf_over_incomplete_cells_is_marked(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    df = synthetic_metrics(cfg)
    lost = (df["dataset"] == "demo-openi") & (df["protocol"] == "full") & (
        df["method"] == "medmix") & (df["seed"] == 2)  # fmt: skip
    table = build_efficiency_table(cfg, Cells(df[~lost], seeds=cfg["seeds"]), write_costs(cfg))
    marked = {(r["dataset"], r["method"]): table.row_flags(i) for i, r in enumerate(table.rows)
              if table.row_flags(i)}  # fmt: skip
    why = "Perf over 2 of 3 seeds (seed 2 missing)"
    assert marked[("demo-openi", "MedMIX")] == [why, f"EffScore from {why}"]
    assert marked[("demo-openi", "MeanAvg")] == [f"EffScore from MedMIX {why}"]
    assert marked[("Average", "MedMIX")] == [
        f"demo-openi: {why}",
        f"EffScore from demo-openi: {why}",
    ]
    assert ("demo-mimic", "MedMIX") not in marked
    md = table_markdown(table)
    assert md.count("‡ demo-openi, ") == 3 and "‡ Average, MedMIX" in md


# -- the metrics table ----------------------------------------------------------------------------


def test_collect_metrics_names_missing_seeds_and_keeps_nulls_as_nan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose summary.json lists seeds 0-2 with seed1's folder gone, and a seed whose
    macro AUPRC is null (undefined): a warning, and a NaN row, never a crash or a gap."""
    run = tmp_path / "runs" / "full" / "medmix"
    for seed in (0, 2):
        (run / f"seed{seed}").mkdir(parents=True)
        macro = {"auroc": 0.8, "auprc": None if seed == 2 else 0.5}
        (run / f"seed{seed}" / "metrics.json").write_text(json.dumps(
            {"seed": seed, "splits": {"test": {"macro": macro, "per_label": {}}}}))  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"status": "ok", "seeds": [0, 1, 2]}))
    with caplog.at_level(logging.WARNING, logger="medmix.fusion.evaluate"):
        df = collect_metrics(tmp_path / "runs", "demo-a")
    assert [r.getMessage() for r in caplog.records] == [
        "full/medmix: seed(s) [1] of summary.json have no seed*/metrics.json: the run's rows "
        "cover 2 of 3 seeds"
    ]
    auprc = df[df["metric"] == "auprc"].set_index("seed")["value"]
    assert auprc.loc[0] == 0.5 and np.isnan(auprc.loc[2])
    table = Cells(df.assign(protocol="full"), seeds=[0, 1, 2])
    assert table.flag("demo-a", "full", "medmix", "auprc") == (
        "2 of 3 seeds (seed 1 missing); AUPRC is NaN in seed 2 (mean ± std over the other 1)"
    )


def test_complete_runs_carry_no_mark_and_no_extra_column(tmp_path: Path) -> None:
    df = frame("demo-a", {"medmix": five([0.8, 0.82, 0.81, 0.8, 0.83]), "concat": five(FIVE)})
    path = dataset(tmp_path, "demo-a", df, {"medmix": [0, 1, 2, 3, 4], "concat": [0, 1, 2, 3, 4]})
    write_tables([path], tmp_path / "t", "header")
    got = rendered(tmp_path / "t")
    assert not any("‡" in text or "ddagger" in text for text in got.values())
    assert "incomplete" not in got["csv"].splitlines()[0]
    assert "| MedMIX | **0.812 ± 0.013** |" in got["md"]
