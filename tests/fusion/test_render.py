"""Paper tables and figures from a synthetic metrics table: the paper's rows and columns, bold
bests, the header line; every configured figure is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.report.cells import Cells
from fusion.report.paper import render_paper
from fusion.report.table_render import table_csv, table_latex, table_markdown
from fusion.report.tables.ablation import build_ablation_table
from fusion.report.tables.efficiency import build_efficiency_table
from fusion.report.tables.experts import build_experts_table
from fusion.report.tables.external import build_external_table
from fusion.report.tables.per_task import build_per_task_table
from fusion.report.tables.protocols import build_protocol_table, build_structured_table
from medmix.plan import paper_outputs
from medmix.protocol_names import expand_settings

METRICS = ("auroc", "auprc", "macro_f1", "accuracy")
TASKS = ("mortality", "long_stay")


def make_cfg(root: Path) -> dict:
    return {
        "results": str(root),
        "seeds": [0, 1, 2],
        "datasets": {
            "demo-openi": {
                "adapter": "demo",
                "modalities": {
                    "frontal": ["radiomics", "dinov2-tiny", "rag"],
                    "report": ["minilm", "rag"],
                },
            },
            "demo-mimic": {
                "adapter": "demo",
                "modalities": {
                    "frontal": ["radiomics", "rag"],
                    "note": ["minilm", "tfidf-svd", "rag"],
                    "ehr": ["catch22", "ts-stats"],
                },
                "teachers": {"note": "qwen2-7b"},
            },
            "demo-mimic-shift": {
                "adapter": "demo",
                "demo": {"kind": "mimic", "shift": 0.5},
                "modalities": {
                    "frontal": ["radiomics", "rag"],
                    "note": ["minilm", "tfidf-svd", "rag"],
                    "ehr": ["catch22", "ts-stats"],
                },
            },
        },  # fmt: skip
        "experts": {
            e: {"type": "rag" if e == "rag" else e}
            for e in [
                "radiomics",
                "dinov2-tiny",
                "rag",
                "minilm",
                "tfidf-svd",
                "catch22",
                "ts-stats",
                "qwen2-7b",
            ]
        },  # fmt: skip
        "methods": ["medmix", "meanavg", "adacomed"],
        "protocols": {
            "methods": ["medmix", "adacomed"],
            "train_drop_one": [0.3, 0.5, 0.7],
            "test_drop_one": [0.3, 0.5, 0.7],
            "train_random": [0.3, 0.5, 0.7],
            "test_random": [0.1, 0.3, 0.5, 0.7],
            "extra": ["mnar-label-0.5", "test_replay-1.0"],
        },
        "ablations": {"enabled": True},
        "efficiency": {"enabled": True},
        "external": [{"source": "demo-mimic", "target": "demo-mimic-shift"}],
        "fusion": {"lambda_kd": 0.0},
    }


def synthetic_metrics(cfg: dict) -> pd.DataFrame:
    """MedMIX best everywhere except AdaCoMed's Acc; missingness lowers every metric."""
    from medmix.ablation_plan import ablation_variants
    from medmix.protocol_names import parse_protocol

    rng = np.random.default_rng(0)
    rows = []

    def add(ds, protocol, method, split="test", tasks=("macro",), base=0.8):
        for seed in cfg["seeds"]:
            for task in tasks:
                for metric in METRICS:
                    v = base + (0.1 if metric == "accuracy" and method == "adacomed" else 0.0)
                    rows.append((ds, protocol, method, seed, split, task, metric,
                                 float(v + rng.normal(0, 0.003))))  # fmt: skip

    quality = {"medmix": 0.8, "meanavg": 0.72, "adacomed": 0.75}
    for ds in ("demo-openi", "demo-mimic"):
        mods = list(cfg["datasets"][ds]["modalities"])
        main = cfg["methods"] + [f"medmix-only-{m}" for m in mods]
        for method in main:
            add(ds, "full", method, tasks=("macro", *TASKS), base=quality.get(method, 0.6))
        for s in expand_settings(cfg["protocols"], mods):
            rate = parse_protocol(s).rate
            for method in cfg["protocols"]["methods"]:
                add(ds, s, method, base=quality[method] - 0.1 * rate)
        for k, v in enumerate(ablation_variants(cfg, ds)):
            if v.trained_here:
                add(ds, v.protocol, v.method, base=0.78 - 0.01 * k)
    for method in cfg["methods"]:
        add("demo-mimic", "external-demo-mimic-shift", method, split="external",
            base=quality[method] - 0.2)  # fmt: skip
    return pd.DataFrame(
        rows, columns=["dataset", "protocol", "method", "seed", "split", "task", "metric", "value"]
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Cells, pd.DataFrame]:
    cfg = make_cfg(tmp_path_factory.mktemp("results"))
    metrics = synthetic_metrics(cfg)
    return cfg, Cells(metrics), metrics


def bold_rows(table, key: str) -> list[int]:
    return sorted(i for i, k in table.best() if k == key)


def test_train_drop_one_table_has_the_paper_layout(setup) -> None:
    cfg, cells, _ = setup
    t = build_protocol_table(cfg, cells, "train_drop_one")
    assert [lab for _, lab in t.id_columns] == ["Dataset", "Method", "Missing Rate", "Modality"]
    assert [c.label for c in t.value_columns] == ["AUROC", "AUPRC", "mF1", "Acc"]
    # datasets × methods (MedMIX first) × rates × modalities, in the paper's order
    assert len(t.rows) == (2 + 3) * 2 * 3
    assert [r["method"] for r in t.rows[:6]] == ["MedMIX"] * 6
    assert [(r["rate"], r["modality"]) for r in t.rows[:3]] == [
        ("0.3", "Front CXR"), ("0.3", "Note"), ("0.5", "Front CXR")]  # fmt: skip
    assert all(isinstance(r["auroc"], tuple) for r in t.rows)  # (mean, std)
    # bold: the better method within (dataset, rate, modality) — MedMIX, but AdaCoMed on Acc
    medmix = [i for i, r in enumerate(t.rows) if r["method"] == "MedMIX"]
    assert bold_rows(t, "auroc") == medmix
    assert set(bold_rows(t, "accuracy")).isdisjoint(medmix)
    md = table_markdown(t)
    assert "| Dataset | Method | Missing Rate | Modality | AUROC | AUPRC | mF1 | Acc |" in md
    assert "**0.8" in md and " ± " in md
    assert "Table E2" in md and "mean ± std over 3 seeds" in md and "synthetic demo" in md
    # repeated ids blanked: the second row shows only what changed
    second = md.splitlines()[7]
    assert second.startswith("|  |  |  | Note |")
    tex = table_latex(t)
    assert "\\begin{tabular}{llllcccc}" in tex and "\\textbf{" in tex and "$\\pm$" in tex
    csv = pd.read_csv(pd.io.common.StringIO(table_csv(t)))
    assert {"Dataset", "Missing Rate", "auroc_mean", "auroc_std", "auroc_best"} <= set(csv.columns)
    assert csv["Dataset"].notna().all()  # no blanking in the CSV


@pytest.mark.parametrize("family,n_rates", [("test_random", 4), ("train_random", 3)])
def test_random_tables(setup, family: str, n_rates: int) -> None:
    cfg, cells, _ = setup
    t = build_protocol_table(cfg, cells, family)
    assert [lab for _, lab in t.id_columns] == ["Dataset", "Method", "Missing Rate"]
    assert len(t.rows) == 2 * 2 * n_rates
    assert t.rows[0]["rate"] == ("0.1" if family == "test_random" else "0.3")
    assert bold_rows(t, "auroc") == [i for i, r in enumerate(t.rows) if r["method"] == "MedMIX"]


def test_ablation_external_per_task_experts_structured(setup) -> None:
    cfg, cells, _ = setup
    t = build_ablation_table(cfg, cells, Path(cfg["results"]))
    assert [lab for _, lab in t.id_columns] == ["Dataset", "Setting"]
    mimic = [r["setting"] for r in t.rows if r["dataset"] == "demo-mimic"]
    assert mimic == [
        "MedMIX", "w/o distillation", "w/o intra-modality fusion",
        "w/o intra-modality fusion (uniform mean)", "w/o biomedical experts",
        "w/o general experts", "w/o RAG experts",
        "w/o inter-modality fusion (keep Front CXR)", "w/o inter-modality fusion (keep Note)",
        "w/o inter-modality fusion (keep EHR)",
    ]  # fmt: skip
    # lambda_kd = 0: the w/o-distillation row is MedMIX itself, and the table says so
    assert t.rows[0]["auroc"] == t.rows[1]["auroc"]
    assert any("lambda_kd = 0" in n for n in t.notes)
    ext = build_external_table(cfg, cells, Path(cfg["results"]))
    assert [lab for _, lab in ext.id_columns] == ["Method"]
    assert [r["method"] for r in ext.rows] == ["MeanAvg", "AdaCoMed", "MedMIX"]
    assert bold_rows(ext, "auroc") == [2]
    assert "Table 2" in table_markdown(ext)
    assert not any("has no" in n for n in ext.notes)
    run = Path(cfg["results"]) / "demo-mimic" / "runs" / "external-demo-mimic-shift" / "medmix"
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({"absent_modalities": ["lateral", "frontal"]}))
    ext = build_external_table(cfg, cells, Path(cfg["results"]))
    assert any("has no frontal, lateral; evaluated as missing" in n for n in ext.notes)
    pt = build_per_task_table(cfg, cells, Path(cfg["results"]), {"demo-mimic": "binary",
                                                                  "demo-openi": "multilabel"})  # fmt: skip
    assert [lab for _, lab in pt.id_columns] == ["Task", "Method"]
    assert {r["task"] for r in pt.rows} == set(TASKS)
    assert pt.rows[-1]["method"] == "MedMIX"
    e1 = build_experts_table(cfg)
    assert [lab for _, lab in e1.id_columns] == ["Dataset", "Modality", "Biomed", "General",
                                                  "RAG", "Teacher FM"]  # fmt: skip
    note = next(r for r in e1.rows if r["dataset"] == "demo-mimic" and r["modality"] == "Note")
    assert (note["biomedical"], note["general"], note["rag"], note["teacher"]) == (
        "minilm", "tfidf-svd", "rag", "qwen2-7b")  # fmt: skip
    st = build_structured_table(cfg, cells)
    assert {r["_protocol"] for r in st.rows} == {"full", "mnar-label-0.5", "test_replay-1.0"}


def write_costs(cfg: dict) -> dict:
    costs = {}
    for k, ds in enumerate(("demo-openi", "demo-mimic")):
        methods = {
            "medmix": {"params": 3e6, "flops": 2e8 * (k + 1), "memory_bytes": 5e7},
            "meanavg": {"params": 2.9e6, "flops": 2e8 * (k + 1), "memory_bytes": 5e7},
            "adacomed": {
                "params": 9e6,
                "flops": 5e8,
                "memory_bytes": 2e8,
                "teachers": ["note/qwen2-7b"] if ds == "demo-mimic" else [],
            },
        }
        costs[ds] = {"dataset": ds, "device": "cpu", "methods": methods,
                     "experts": [{"name": "frontal/radiomics", "torch": False}]}  # fmt: skip
        p = Path(cfg["results"]) / ds / "efficiency.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(costs[ds]))
    return costs


def test_efficiency_table(setup) -> None:
    cfg, cells, _ = setup
    t = build_efficiency_table(cfg, cells, write_costs(cfg))
    assert [lab for _, lab in t.id_columns] == ["Dataset", "Method"]
    assert [c.label for c in t.value_columns] == [
        "Params (M)", "FLOPs (M)", "Peak Mem. (MB)", "Perf", "EffScore"]  # fmt: skip
    assert [r["dataset"] for r in t.rows][-3:] == ["Average"] * 3
    med = [r for r in t.rows if r["method"] == "MedMIX"]
    assert all(r["eff"] == pytest.approx(1.0) for r in med)
    assert bold_rows(t, "eff") == [i for i, r in enumerate(t.rows) if r["method"] == "MedMIX"]
    meanavg = [i for i, r in enumerate(t.rows) if r["method"] == "MeanAvg"]
    assert bold_rows(t, "params") == meanavg  # cost columns: the smallest is best
    assert "radiomics" in " ".join(t.notes)
    # what the cost columns count: AdaCoMed's teacher runs at inference, MedMIX's do not
    assert "plus the teachers a method runs at inference (AdaCoMed: qwen2-7b)" in t.header
    assert "distillation-only teachers and the retrieval index are not counted" in t.header
    assert "excluded" not in t.header


def test_render_paper_writes_every_declared_output(setup, tmp_path: Path) -> None:
    cfg, _, metrics = setup
    write_costs(cfg)
    plan = paper_outputs(cfg)
    assert plan["tables"] == ["experts", "per_task", "train_drop_one", "test_drop_one",
                              "train_random", "test_random", "structured", "efficiency",
                              "ablation", "external"]  # fmt: skip
    assert plan["figures"] == [
        "drop_one_demo-openi", "drop_one_demo-mimic", "random_drop_demo-openi",
        "random_drop_demo-mimic", "weights_demo-openi", "weights_demo-mimic", "pareto",
        "ablation"]  # fmt: skip
    written = render_paper(cfg, tmp_path / "tables", tmp_path / "figures", metrics=metrics)
    want = {tmp_path / "tables" / f"{t}.{e}" for t in plan["tables"]
            for e in ("md", "csv", "tex", "html")}  # fmt: skip
    want |= {tmp_path / "figures" / f"{f}.{e}" for f in plan["figures"]
             for e in ("png", "svg", "pdf", "txt")}  # fmt: skip
    assert set(written) == want
    for f in want:
        assert f.stat().st_size > (5000 if f.suffix in (".png", ".pdf") else 50), f
    assert (tmp_path / "figures" / "ablation.pdf").read_bytes().startswith(b"%PDF")
    # the provenance is in the sidecar, not drawn on the figure
    assert "synthetic demo cohort" in (tmp_path / "figures" / "ablation.txt").read_text()
    none = paper_outputs({"datasets": cfg["datasets"], "experts": cfg["experts"]})
    assert none == {"tables": ["experts", "per_task"], "figures": []}


def _masks_file(path: Path, n_test: int, n_all: int) -> None:
    """A masks.parquet as fusion.protocols.write_masks saves it (report in the metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"splits": {"test": {"n": n_test, "n_all_dropped": n_all, "modalities": {}}}}
    table = pa.table({"sample_id": ["s0"], "all_dropped": [True]})
    pq.write_table(table.replace_schema_metadata({b"medmix_masks": json.dumps(report)}), path)


def test_test_time_tables_count_the_samples_left_with_nothing(setup) -> None:
    cfg, cells, _ = setup
    runs = Path(cfg["results"]) / "demo-openi" / "runs"
    _masks_file(runs / "test_random-0.5" / "medmix" / "seed0" / "masks.parquet", 80, 9)
    _masks_file(runs / "test_random-0.5" / "medmix" / "seed1" / "masks.parquet", 80, 12)
    t = build_protocol_table(cfg, cells, "test_random")
    assert [c.label for c in t.value_columns][-1] == "No modality left"
    got = {(r["dataset"], r["method"], r["rate"]): r["all_dropped"] for r in t.rows}
    assert got[("demo-openi", "MedMIX", "0.5")] == pytest.approx(10.5)
    assert got[("demo-openi", "AdaCoMed", "0.5")] == pytest.approx(10.5)  # the shared masks
    assert got[("demo-openi", "MedMIX", "0.1")] is None  # no masks saved: n/a
    md = table_markdown(t)
    assert "| No modality left |" in md and "| 10.5 |" in md
    assert any("Test samples: demo-openi: 80" in n for n in t.notes)
    assert not {k for _, k in t.best()} & {"all_dropped"}  # a count, never bold
    # train-time tables corrupt the training data: no such column
    assert "No modality left" not in table_markdown(
        build_protocol_table(cfg, cells, "train_random")
    )


def test_external_table_marks_methods_that_could_not_run(setup) -> None:
    cfg, cells, _ = setup
    cfg = {**cfg, "methods": [*cfg["methods"], "onellm"]}
    run = Path(cfg["results"]) / "demo-mimic" / "runs" / "full" / "onellm"
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({
        "status": "unavailable", "reason": "no OneLLM weights configured",
        "unavailable_kind": "weights absent"}))  # fmt: skip
    ext = build_external_table(cfg, cells, Path(cfg["results"]))
    assert [r["method"] for r in ext.rows] == [
        "MeanAvg", "AdaCoMed", "OneLLM (weights absent)", "MedMIX"]  # fmt: skip
    md = table_markdown(ext)
    assert "| OneLLM (weights absent) | n/a | n/a | n/a | n/a |" in md
    assert any(n.startswith("Not run: OneLLM on demo-mimic → demo-mimic-shift: no OneLLM")
               for n in ext.notes)  # fmt: skip
    assert bold_rows(ext, "auroc") == [3]
    csv = pd.read_csv(pd.io.common.StringIO(table_csv(ext)), keep_default_na=False)
    assert csv.loc[2, "unavailable"] == "no OneLLM weights configured"


def test_pareto_palette_keeps_medmix_red_unique() -> None:
    from fusion.report.style import MEDMIX_RED, method_colors, method_markers

    methods = ["medmix", *[f"m{i}" for i in range(40)]]
    colors, markers = method_colors(methods), method_markers(methods)
    assert colors["medmix"] == MEDMIX_RED
    assert MEDMIX_RED not in [colors[m] for m in methods[1:]]
    assert "#d62728" not in colors.values()  # tab10's red is not used either
    assert len({(colors[m], markers[m]) for m in methods}) == len(methods)
    # the first others have distinct colours
    assert len({colors[m] for m in methods[1:10]}) == 9


def test_run_header_names_only_the_experts_of_its_datasets(setup) -> None:
    from medmix.plan import run_header

    cfg, _, _ = setup
    cfg = {**cfg, "datasets": {**cfg["datasets"],
                               "plain": {"adapter": "demo", "modalities": {"ehr": ["catch22"]}}}}  # fmt: skip
    one = run_header(cfg, ["plain"])
    assert "plain (synthetic demo cohort; experts: catch22)" in one
    assert one.endswith("Experts: offline experts (established features).")
    assert "RAG branch" in run_header(cfg)


def _md_cells(md: str) -> list[str]:
    cells = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| Dataset |"):
            cells += [c.strip().strip("*") for c in line.strip("|").split("|")]
    return [c for c in cells if "±" in c]


def test_html_tables_print_the_markdown_numbers(setup) -> None:
    """The HTML page (what the report shows) holds the same cells as the Markdown, bold alike."""
    from fusion.report.table_render import table_html

    cfg, cells, _ = setup
    for t in (build_protocol_table(cfg, cells, "train_drop_one"), build_ablation_table(
            cfg, cells, Path(cfg["results"]))):  # fmt: skip
        md, page = table_markdown(t), table_html(t)
        nums = _md_cells(md)
        assert nums and all(f"{n}<" in page for n in nums)
        assert all(len(n.split(" ± ")[0].split(".")[1]) == 3 for n in nums)  # three decimals
        assert page.count("<strong>") == md.count("**") // 2 - 1  # the Markdown title is bold
        assert f'<caption><span class="title">{t.title}</span>' in page
        assert "<thead><tr><th" in page and page.count("<tbody") >= 2  # a rule per dataset


def test_per_task_teacher_rows_are_references(setup) -> None:
    cfg, cells, metrics = setup
    extra = metrics[(metrics["method"] == "medmix") & (metrics["protocol"] == "full")
                    & (metrics["dataset"] == "demo-mimic")].copy()  # fmt: skip
    extra["method"], extra["value"] = "note-large", extra["value"] + 0.1
    both = Cells(pd.concat([metrics, extra], ignore_index=True))
    pt = build_per_task_table(cfg, both, Path(cfg["results"]), {"demo-mimic": "binary",
                                                                 "demo-openi": "multilabel"})  # fmt: skip
    refs = [i for i, r in enumerate(pt.rows) if r.get("_reference")]
    assert refs and all(pt.rows[i]["method"] == "Note-Large (teacher reference)" for i in refs)
    assert not {i for i, _ in pt.best()} & set(refs)
    assert bold_rows(pt, "auroc") == [i for i, r in enumerate(pt.rows) if r["method"] == "MedMIX"]


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every figure as it is saved: (stem, figure, texts under 8 pt, legend labels)."""
    from fusion.report import style as figure_style

    got = []
    save = figure_style.save_figure

    def spy(fig, out_dir, stem, about=None):
        fig.canvas.draw()
        labels = [t.get_text() for leg in fig.legends + [a.get_legend() for a in fig.axes]
                  if leg is not None for t in leg.get_texts()]  # fmt: skip
        got.append((stem, tuple(fig.get_size_inches()), figure_style.small_texts(fig), labels,
                    [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))],
                    [(ax.get_ylim(), [ln.get_ydata() for ln in ax.get_lines()])
                     for ax in fig.axes], about))  # fmt: skip
        return save(fig, out_dir, stem, about)

    monkeypatch.setattr(figure_style, "save_figure", spy)
    return got


def test_figures_fit_a_journal_column(setup, drawn, tmp_path: Path) -> None:
    """Every figure is drawn at most a double column (7 in) wide with no text under 8 pt, and
    carries no provenance paragraph (that is in the sidecar)."""
    cfg, _, metrics = setup
    write_costs(cfg)
    render_paper(cfg, tmp_path / "t", tmp_path / "f", metrics=metrics)
    assert {d[0] for d in drawn} == set(paper_outputs(cfg)["figures"])
    for stem, size, small, _, texts, _, about in drawn:
        assert size[0] <= 7.0 + 1e-6, (stem, size)
        assert not small, (stem, small)
        assert not any("Experts:" in t or "synthetic demo" in t for t in texts), stem
        assert about and "synthetic demo cohort" in about


def test_main_auroc_has_a_chance_line_and_teacher_references(setup, drawn, tmp_path: Path) -> None:
    from fusion.report.figures.main import plot_main_auroc

    _, _, metrics = setup
    full = metrics[metrics["protocol"] == "full"]
    extra = full[(full["method"] == "medmix") & (full["dataset"] == "demo-mimic")].copy()
    extra["method"], extra["value"] = "ehr-large", extra["value"] + 0.05
    written = plot_main_auroc(pd.concat([full, extra]), tmp_path, "Data: header line.")
    assert {p.suffix for p in written} == {".png", ".svg", ".pdf", ".txt"}
    stem, size, small, labels, texts, axes, about = drawn[-1]
    assert stem == "main_auroc" and size[0] <= 7.0 and not small
    assert "teacher reference" in labels and "chance (AUROC 0.5)" in labels
    for ylim, lines in axes:
        assert ylim[0] < 0.5 < ylim[1]  # the axis shows the chance level, with room below
        assert any(len(y) == 2 and np.allclose(y, 0.5) for y in lines)  # the chance line
    assert "Data: header line." in about and not any("header line" in t for t in texts)
    assert "Data: header line." in (tmp_path / "main_auroc.txt").read_text()


def test_main_auroc_marks_a_bar_over_fewer_seeds(setup, drawn, tmp_path: Path) -> None:
    """A run missing a seed (or with a NaN seed) gets ‡ on its bar label and a note in the
    caption naming why; complete runs are unmarked."""
    from fusion.report.figures.main import plot_main_auroc

    _, _, metrics = setup
    full = metrics[metrics["protocol"] == "full"]
    lost = (full["method"] == "meanavg") & (full["dataset"] == "demo-mimic") & (full["seed"] == 1)
    plot_main_auroc(full[~lost], tmp_path, "Data: header line.")
    _, _, _, _, texts, _, about = drawn[-1]
    assert {t for t in texts if "‡" in t} == {"MeanAvg ‡"}
    assert "‡ Not over every seed: demo-mimic, MeanAvg:" in about and "seed 1 missing" in about
    plot_main_auroc(full, tmp_path, "Data: header line.")
    assert not any("‡" in t for t in drawn[-1][4]) and "‡" not in drawn[-1][6]
