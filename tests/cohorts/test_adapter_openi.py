"""OpenI adapter: Kaggle tables and NLM XML, the MeSH -> finding map, real IU reports."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cohorts.adapters import AdapterError, openi
from cohorts.adapters.openi_labels import FINDINGS, LABELS, findings, parse_terms
from cohorts.manifest import read_manifest

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _assert_patient_level(df: pd.DataFrame) -> None:
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def _kaggle_copy(tmp_path: Path, images: list[str]) -> Path:
    root = tmp_path / "iu"
    shutil.copytree(FIX / "openi_kaggle", root)
    (root / "images" / "images_normalized").mkdir(parents=True)
    for name in images:
        (root / "images" / "images_normalized" / name).write_bytes(b"png")
    return root


def test_finding_map() -> None:
    assert len(LABELS) == 15 and LABELS[0] == "normal"
    assert parse_terms("Opacity/lung/base;  Lung /hypoinflation") == [
        ("opacity", frozenset({"lung", "base"})),
        ("lung", frozenset({"hypoinflation"})),
    ]
    y = findings("Lung/hypoinflation/mild;Aorta/tortuous;Spine/degenerative;Calcified Granuloma")
    assert {k for k, v in y.items() if v} == {
        "hypoinflation",
        "tortuous_aorta",
        "degenerative_spine",
        "granuloma",
    }
    # an anatomy heading without the qualifier that makes it a finding counts for nothing
    assert not any(findings("Lung/hilum;Aorta/mild").values())
    assert findings("normal")["normal"] == 1
    assert findings("No Indexing") is None and findings("") is None
    doc = (FIX.parent.parent / "docs" / "adapters.md").read_text()
    for name, rules in FINDINGS.items():
        assert f"| `{name}` | {'; '.join(rules)} |" in doc  # the documented map is the code's map


def test_kaggle_layout(tmp_path: Path) -> None:
    root = _kaggle_copy(
        tmp_path, ["1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png", "2_IM-0652-2001.dcm.png"]
    )
    path = openi.run(tmp_path / "out", reports=root / "indiana_reports.csv", seed=3)
    df, meta = read_manifest(path)
    df = df.set_index("sample_id")
    assert (
        meta.task_type == "multilabel"
        and meta.labels == LABELS
        and Path(meta.root) == root.resolve()
    )
    assert meta.modalities == {"frontal": "image", "lateral": "image", "report": "text"}
    assert list(df.index) == ["CXR1", "CXR2", "CXR4"]  # CXR3: 'No Indexing' -> dropped
    assert df.loc["CXR1", "frontal"] == "images/images_normalized/1_IM-0001-4001.dcm.png"
    assert df.loc["CXR1", "lateral"] == "images/images_normalized/1_IM-0001-3001.dcm.png"
    assert pd.isna(df.loc["CXR2", "frontal"]) and df.loc["CXR2", "lateral"].endswith(
        "2_IM-0652-2001.dcm.png"
    )
    assert (
        df.loc["CXR4", ["frontal", "lateral", "report"]].isna().all()
    )  # no image on disk, empty report
    assert df.loc["CXR2", "report"] == (
        "Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries. Low lung volumes.\n"
        "No acute pulmonary findings."
    )
    pos = {sid: {k for k in LABELS if df.loc[sid, f"label_{k}"] == 1} for sid in df.index}
    assert pos == {
        "CXR1": {"normal"},
        "CXR2": {"cardiomegaly", "hypoinflation"},
        "CXR4": {"opacity", "degenerative_spine"},
    }
    _assert_patient_level(df)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    dropped = summary[summary["section"] == "dropped"]
    assert dropped["item"].tolist() == ["MeSH 'No Indexing' (labels unknown)"] and dropped[
        "count"
    ].tolist() == [1]
    assert "## Modality availability" in (tmp_path / "out" / "summary.md").read_text()


def test_nlm_xml_layout_matches_kaggle(tmp_path: Path) -> None:
    root = tmp_path / "nlm"
    shutil.copytree(FIX / "openi_xml", root)
    (root / "NLMCXR_png").mkdir()
    for name in [
        "CXR1_1_IM-0001-3001.png",
        "CXR1_1_IM-0001-4001.png",
        "CXR2_IM-0652-1001.png",
        "CXR2_IM-0652-2001.png",
    ]:
        (root / "NLMCXR_png" / name).write_bytes(b"png")
    # views from the image names alone: the lowest series number is frontal (a documented heuristic)
    df, _, drops = openi.build(
        openi.load_xml(root / "ecgen-radiology"),
        openi.views_from_names(openi.load_xml(root / "ecgen-radiology")),
        root,
    )
    df = df.set_index("sample_id")
    assert df.loc["CXR1", "frontal"] == "NLMCXR_png/CXR1_1_IM-0001-3001.png"
    assert df.loc["CXR2", "frontal"] == "NLMCXR_png/CXR2_IM-0652-1001.png"
    assert drops.counts == {"MeSH 'No Indexing' (labels unknown)": 1}
    # with the projections table the views are exact, and everything equals the Kaggle layout
    path = openi.run(
        tmp_path / "out",
        xml=root / "ecgen-radiology",
        projections=FIX / "openi_kaggle" / "indiana_projections.csv",
    )
    xml_df, _ = read_manifest(path)
    assert (
        xml_df.set_index("sample_id").loc["CXR1", "frontal"] == "NLMCXR_png/CXR1_1_IM-0001-4001.png"
    )
    kag = openi.build(
        openi.load_kaggle(FIX / "openi_kaggle" / "indiana_reports.csv"),
        openi.load_projections(FIX / "openi_kaggle" / "indiana_projections.csv"),
        root,
    )[0]
    cols = ["sample_id", "report", *(f"label_{k}" for k in LABELS)]
    pd.testing.assert_frame_equal(
        xml_df[cols].reset_index(drop=True), kag[cols].reset_index(drop=True), check_dtype=False
    )
    # <automatic> MeSH terms are not labels: study 2 has an automatic 'Pleural Effusion'
    assert xml_df.set_index("sample_id").loc["CXR2", "label_pleural_effusion"] == 0


@pytest.mark.parametrize(
    ("file", "old", "new", "pattern"),
    [
        (
            "indiana_reports.csv",
            "findings",
            "finding",
            r"indiana_reports\.csv: missing column\(s\) \['findings'\]",
        ),
        (
            "indiana_projections.csv",
            "projection",
            "view",
            r"indiana_projections\.csv: missing column\(s\) \['projection'\]",
        ),
        (
            "indiana_projections.csv",
            "Lateral",
            "Oblique",
            r"indiana_projections\.csv: column 'projection' has values",
        ),
    ],
)
def test_bad_tables_name_file_and_column(
    tmp_path: Path, file: str, old: str, new: str, pattern: str
) -> None:
    root = _kaggle_copy(tmp_path, [])
    p = root / file
    p.write_text(p.read_text().replace(old, new))
    with pytest.raises(AdapterError, match=pattern):
        openi.run(tmp_path / "out", reports=root / "indiana_reports.csv")


def test_views_from_names_warn_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """XML without a projections table: the 85 %-right guess is a warning, a remark, metadata."""
    root = tmp_path / "nlm"
    shutil.copytree(FIX / "openi_xml", root)
    with caplog.at_level("WARNING", logger="medmix.cohorts.openi"):
        _, meta = read_manifest(openi.run(tmp_path / "a", xml=root / "ecgen-radiology"))
    assert "views inferred from image names" in caplog.text and "--projections" in caplog.text
    assert meta.extra["views"] == "inferred from image names"
    assert meta.extra["remarks"][0] == openi.INFERRED_VIEWS
    assert "only 85 %" in (tmp_path / "a" / "summary.md").read_text()
    caplog.clear()
    with caplog.at_level("WARNING", logger="medmix.cohorts.openi"):
        _, meta = read_manifest(
            openi.run(
                tmp_path / "b",
                xml=root / "ecgen-radiology",
                projections=FIX / "openi_kaggle" / "indiana_projections.csv",
            )
        )
    assert meta.extra["views"] == "projections table"
    assert openi.INFERRED_VIEWS not in meta.extra["remarks"]
    assert "views inferred" not in caplog.text


def test_reports_not_utf8_are_read(tmp_path: Path) -> None:
    """A latin-1 byte in indiana_reports.csv is decoded as cp1252 and counted; no row is lost."""
    root = _kaggle_copy(tmp_path, [])
    reports = root / "indiana_reports.csv"
    raw = reports.read_bytes()
    assert b"No acute pulmonary findings." in raw
    reports.write_bytes(
        raw.replace(b"No acute pulmonary findings.", b"No acute findings \x96 stable.")
    )
    df, meta = read_manifest(openi.run(tmp_path / "out", reports=reports))
    assert len(df) == 3
    assert df.set_index("sample_id").loc["CXR2", "report"].endswith("No acute findings – stable.")
    assert meta.extra["redecoded"] == {"indiana_reports.csv": 1}
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.loc[summary["section"] == "redecoded", "count"].tolist() == [1]


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"nowhere\.csv: file not found"):
        openi.run(tmp_path / "out", reports=tmp_path / "nowhere.csv")
    root = _kaggle_copy(tmp_path, [])
    (root / "indiana_projections.csv").unlink()
    with pytest.raises(AdapterError, match=r"indiana_projections\.csv: file not found"):
        openi.run(tmp_path / "out", reports=root / "indiana_reports.csv")
    bad = tmp_path / "xml"
    bad.mkdir()
    (bad / "9.xml").write_text("<eCitation><IUXRId id='9'/>")
    with pytest.raises(AdapterError, match=r"9\.xml: not well-formed XML"):
        openi.load_xml(bad)


def test_cli_registers_subcommand() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="adapter")
    openi.add_cli(sub)
    args = parser.parse_args(["openi", "--reports", "r.csv", "--out", "o"])
    assert (
        args.reports == "r.csv"
        and args.seed == 0
        and args.dataset == "openi"
        and callable(args.func)
    )


def test_real_iu_reports(realdata: Path, tmp_path: Path) -> None:
    iu = realdata / "iu_xray"
    path = openi.run(tmp_path / "out", reports=iu / "indiana_reports.csv", seed=0)
    df, meta = read_manifest(path)
    raw = pd.read_csv(iu / "indiana_reports.csv")
    unindexed = int((raw["Problems"] == "No Indexing").sum())
    assert len(raw) == 3851 and len(df) == 3851 - unindexed
    _assert_patient_level(df)
    frac = df["split"].value_counts(normalize=True)
    assert (
        abs(frac["train"] - 0.65) < 0.01
        and abs(frac["val"] - 0.15) < 0.01
        and abs(frac["test"] - 0.20) < 0.01
    )
    # the only real images at hand: studies 7 and 1900, frontal -1001 and lateral -2001
    with_img = df[df["frontal"].notna()].set_index("sample_id")
    assert sorted(with_img.index) == ["CXR1900", "CXR7"]
    assert with_img.loc["CXR7", "frontal"] == "images/CXR7_IM-2263-1001.png"
    assert with_img.loc["CXR7", "lateral"] == "images/CXR7_IM-2263-2001.png"
    empty = raw["findings"].isna() & raw["impression"].isna() & (raw["Problems"] != "No Indexing")
    assert int(df["report"].isna().sum()) == int(empty.sum())
    assert not (df["report"].dropna().str.strip() == "").any()
    assert int(df["label_normal"].sum()) == int((raw["Problems"] == "normal").sum())
    prevalence = df[[f"label_{k}" for k in LABELS]].mean()
    assert (prevalence > 0.02).all()  # every finding is common enough to evaluate


@pytest.mark.parametrize(
    "option",
    ["--reports", "--xml", "--projections", "--root", "--images", "--split-file"],
)
def test_every_named_path_must_exist(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path named on the command line that does not exist: one line naming the option and
    the path, exit code 2 (AdapterError from the Python API); nothing is written."""
    from cohorts.__main__ import main

    root = _kaggle_copy(tmp_path, [])
    wrong = tmp_path / "no-such-place"
    source = "--xml" if option == "--xml" else "--reports"
    given = {source: str(root / "indiana_reports.csv"), option: str(wrong)}
    argv = ["openi", *[x for kv in given.items() for x in kv], "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("python -m cohorts openi: error: ") and f"{option} {wrong}" in err
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    kw = {
        "--reports": "reports",
        "--xml": "xml",
        "--projections": "projections",
        "--root": "root",
        "--images": "images",
        "--split-file": "split_file",
    }
    api = {kw[k]: v for k, v in given.items()}
    with pytest.raises(AdapterError, match=rf"{option} .*no-such-place: (file|folder) not found"):
        openi.run(tmp_path / "out", **api)
