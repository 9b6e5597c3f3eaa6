"""The synthetic demo cohorts: determinism, manifest contract, real file formats, signal, missingness."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from cohorts.__main__ import main as cli_main
from cohorts.demo import KINDS, cxr, ehr, generate_cohort, notes
from cohorts.demo.signal import solve_bias
from cohorts.manifest import read_manifest, validate_manifest

TINY = {"openi": 6, "mimic": 6, "ccrcc": 4}
SEEDS = {"openi": 11, "mimic": 12, "ccrcc": 13}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kind generated once, small; the determinism test regenerates in place."""
    out = {}
    for kind, n in TINY.items():
        folder = tmp_path_factory.mktemp(kind) / f"demo-{kind}"
        out[kind] = generate_cohort(kind, folder, n, SEEDS[kind], f"demo-{kind}", progress=False)
    return out


@pytest.fixture(scope="module")
def plans() -> dict:
    """Moderate-size plans (labels, splits, missingness) without rendering any file."""
    return {kind: spec.plan(1500, SEEDS[kind], 0.0) for kind, spec in KINDS.items()}


@pytest.mark.parametrize("kind", list(TINY))
def test_regenerating_gives_identical_bytes(kind: str, tiny: dict[str, Path]) -> None:
    folder = tiny[kind].parent
    before = _snapshot(folder)
    generate_cohort(kind, folder, TINY[kind], SEEDS[kind], f"demo-{kind}", progress=False)
    after = _snapshot(folder)
    assert before.keys() == after.keys()
    assert [k for k in before if before[k] != after[k]] == []
    assert "manifest.parquet" in before and any(k.startswith("raw/") for k in before)


def test_other_seed_differs(tiny: dict[str, Path], tmp_path: Path) -> None:
    path = generate_cohort("openi", tmp_path / "x", TINY["openi"], 99, "demo-openi", progress=False)
    a, _ = read_manifest(tiny["openi"])
    b, _ = read_manifest(path)
    assert not a.equals(b)


@pytest.mark.parametrize("kind", list(TINY))
def test_manifest_contract(kind: str, tiny: dict[str, Path]) -> None:
    df, meta = read_manifest(tiny[kind])
    validate_manifest(df, meta, path=tiny[kind], check_files=True)
    assert meta.root == str(tiny[kind].parent / "raw")
    assert meta.dataset == f"demo-{kind}" and meta.adapter == "demo"
    assert meta.modalities == KINDS[kind].modalities
    assert all(df[c].dtype == np.int8 for c in meta.label_columns())
    assert set(df["split"]) <= {"train", "val", "test"}
    for mod, mkind in meta.modalities.items():
        present = df[mod].dropna()
        if mkind == "text":
            assert all(isinstance(t, str) and len(t.split()) >= 3 for t in present)
        else:
            assert all(not Path(p).is_absolute() and p.startswith(f"{mod}/") for p in present)
    # nothing half-written is left behind
    assert not [p for p in tiny[kind].parent.iterdir() if p.name.startswith(".raw.")]


def test_task_types_and_labels(plans: dict) -> None:
    assert KINDS["openi"].task_type == "multilabel" and len(KINDS["openi"].labels) == 15
    assert "normal" in KINDS["openi"].labels
    assert KINDS["mimic"].labels == ("mortality", "long_stay", "readmission")
    assert KINDS["ccrcc"].labels == ("vital_status_12m",)


@pytest.mark.parametrize("kind", list(KINDS))
def test_splits_by_patient_with_stated_fractions(kind: str, plans: dict) -> None:
    df = plans[kind].samples
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    frac = df.groupby("patient_id")["split"].first().value_counts(normalize=True)
    for name, target in KINDS[kind].fractions.items():
        assert abs(frac[name] - target) < 0.02, (name, frac[name], target)
    if kind == "openi":
        assert df["patient_id"].value_counts().max() == 2  # some patients have two studies


def test_label_prevalence_ranges(plans: dict) -> None:
    openi = plans["openi"].samples
    prev = {c[6:]: openi[c].mean() for c in openi if c.startswith("label_")}
    findings = {k: v for k, v in prev.items() if k != "normal"}
    assert min(findings.values()) >= 0.02 and max(findings.values()) <= 0.3
    assert max(findings.values()) > 3 * min(findings.values())  # long-tailed
    assert 0.2 <= prev["normal"] <= 0.5
    mimic = plans["mimic"].samples
    for name in ("mortality", "long_stay", "readmission"):
        assert 0.16 - 0.02 <= mimic[f"label_{name}"].mean() <= 0.35 + 0.02
    assert 0.84 <= plans["ccrcc"].samples["label_vital_status_12m"].mean() <= 0.92


@pytest.mark.parametrize("kind", list(KINDS))
def test_missingness_structured_and_bounded(kind: str, plans: dict) -> None:
    plan = plans[kind]
    present = np.stack([plan.present[m] for m in KINDS[kind].modalities], axis=1)
    any_missing = (~present).any(axis=1).mean()
    assert 0.30 <= any_missing <= 0.70, any_missing
    assert (~present).all(axis=1).sum() == 0
    sick = plan.signal.sickness
    if kind in ("openi", "mimic"):  # lateral views are missing more often in sicker patients
        lat = plan.present["lateral"]
        assert sick[~lat].mean() > sick[lat].mean() + 0.2
    if kind == "mimic":  # no EHR extract for short stays
        assert (
            plan.extra["stay_hours"][~plan.present["ehr"]].mean() < plan.extra["stay_hours"].mean()
        )
    if kind == "ccrcc":  # no slide for non-surgical patients
        assert not plan.present["wsi"][~plan.extra["surgical"]].any()


@pytest.mark.parametrize("kind", list(KINDS))
def test_signal_is_additive_and_complementary(kind: str, plans: dict) -> None:
    """Each modality's (clean, latent) contribution predicts the labels; their sum clearly better.

    Rendering and quality noise lower these further; the crude-feature check is in the report.
    """
    sig = plans[kind].signal
    y = sig.labels
    single = {}
    for m, c in sig.contributions.items():
        single[m] = np.mean([roc_auc_score(y[:, t], c[:, t]) for t in range(y.shape[1])])
    total = sum(sig.contributions.values())
    combined = np.mean([roc_auc_score(y[:, t], total[:, t]) for t in range(y.shape[1])])
    assert all(0.7 < a < 0.95 for a in single.values()), single
    assert combined > max(single.values()) + 0.04
    low = sig.quality[next(iter(sig.quality))] < 0.5
    assert 0.05 < low.mean() < 0.25  # some poor-quality copies


def test_shift_moves_prevalence() -> None:
    base = KINDS["mimic"].plan(1500, 1, 0.0).samples["label_mortality"].mean()
    shifted = KINDS["mimic"].plan(1500, 1, 1.5).samples["label_mortality"].mean()
    assert shifted > base + 0.03


def test_bias_solver_hits_prevalence() -> None:
    rng = np.random.default_rng(0)
    b = solve_bias(0.12, 2.0)
    draws = 1 / (1 + np.exp(-(b + 2.0 * rng.standard_normal(200_000))))
    assert abs(draws.mean() - 0.12) < 0.003


def test_files_open_with_real_readers(tiny: dict[str, Path]) -> None:
    df, meta = read_manifest(tiny["openi"])
    root = Path(meta.root)
    img = Image.open(root / df["frontal"].dropna().iloc[0])
    assert img.format == "PNG" and img.mode == "L" and img.size == (256, 256)
    arr = np.asarray(img)
    assert arr.std() > 20  # anatomy, not a flat field

    df, meta = read_manifest(tiny["mimic"])
    root = Path(meta.root)
    ts = pd.read_parquet(root / df["ehr"].dropna().iloc[0])
    assert list(ts.columns) == ["hour", *ehr.VARIABLES] and len(ehr.VARIABLES) == 46
    assert ts["hour"].between(0, 47).all() and ts["hour"].is_monotonic_increasing
    assert all(ts[c].dtype.kind == "f" for c in ehr.VARIABLES)
    assert ts["heart_rate"].notna().mean() > 0.2 and ts["creatinine"].isna().mean() > 0.5

    df, meta = read_manifest(tiny["ccrcc"])
    root = Path(meta.root)
    vol = nib.load(root / df["ct"].dropna().iloc[0])
    assert vol.get_data_dtype() == np.int16 and vol.shape == (64, 64, 32)
    assert np.allclose(vol.header.get_zooms(), (4.7, 4.7, 5.0))
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    hu = np.asarray(vol.dataobj)
    assert hu.min() <= -900 and hu.max() >= 300  # air and bone in Hounsfield units

    slide = openslide.OpenSlide(root / df["wsi"].dropna().iloc[0])
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    assert slide.level_count >= 3 and slide.level_dimensions[0] == (2048, 1536)
    for level in range(slide.level_count):
        region = np.asarray(slide.read_region((0, 0), level, (64, 64)).convert("RGB"))
        assert region.shape == (64, 64, 3)
    thumb = np.asarray(
        slide.read_region((0, 0), slide.level_count - 1, slide.level_dimensions[-1]).convert("RGB")
    )
    tissue = thumb.mean(axis=2) < 220
    assert 0.2 < tissue.mean() < 0.9  # tissue on a white background
    assert thumb[tissue][:, 1].mean() < thumb[tissue][:, 0].mean()  # H&E: pink/purple, green lowest


def test_poor_quality_is_visible() -> None:
    good = cxr.render_cxr("frontal", {}, np.random.default_rng(0), quality=1.0).astype(float)
    poor = cxr.render_cxr("frontal", {}, np.random.default_rng(0), quality=0.1).astype(float)
    hf = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert hf(poor) > 2 * hf(good)
    short = notes.icu_note(
        {"resp": 2.0, "cardiac": 2.0, "renal": 2.0},
        dict.fromkeys(["resp", "cardiac", "renal"], 0.4),
        np.random.default_rng(0),
        0.1,
    )
    full = notes.icu_note(
        {"resp": 2.0, "cardiac": 2.0, "renal": 2.0},
        dict.fromkeys(["resp", "cardiac", "renal"], 0.4),
        np.random.default_rng(0),
        1.0,
    )
    assert len(short.split()) < len(full.split())


def test_findings_are_drawn() -> None:
    rng = np.random.default_rng
    normal = cxr.render_cxr("frontal", {}, rng(1)).astype(float)
    cardio = cxr.render_cxr("frontal", {"cardiomegaly": 2.0, "cardiac_size": 2.0}, rng(1)).astype(
        float
    )
    assert cardio.mean() > normal.mean() + 1.0  # a bigger, denser heart shadow
    granuloma = cxr.render_cxr("frontal", {"granuloma": 2.0}, rng(1)).astype(float)
    assert (granuloma > 200).sum() > (normal > 200).sum()  # calcified dots


def test_text_negation_keeps_the_word_and_flips_meaning() -> None:
    ph = notes.CXR_PHRASES["effusion"]
    rng = np.random.default_rng(0)
    positives = [notes.mention("effusion", ph, 2.5, 0.5, rng) for _ in range(20)]
    negatives = [m for _ in range(200) if (m := notes.mention("effusion", ph, -2.0, 0.5, rng))]
    assert all(m.kind == "positive" for m in positives)
    assert negatives and all(m.kind == "negative" for m in negatives)
    assert any("effusion" in m.text.lower() for m in negatives)  # misleads bag-of-words
    assert any(
        w in " ".join(m.text.lower() for m in negatives) for w in ("no ", "resolved", "not seen")
    )


def test_cli_demo_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo-openi"
    rc = cli_main(
        [
            "demo",
            "--kind",
            "openi",
            "--dataset",
            "demo-openi",
            "--n-patients",
            "4",
            "--seed",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta.root == str(out / "raw") and len(df) >= 4
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(
            [
                "demo",
                "--kind",
                "nope",
                "--dataset",
                "x",
                "--n-patients",
                "4",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )


def test_failed_run_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c"
    generate_cohort("openi", out, 3, 1, "demo-openi", progress=False)
    assert (out / "manifest.parquet").exists()
    spec = KINDS["openi"]

    def broken(plan, i, root):  # noqa: ANN001, ANN202
        if i == 2:
            raise RuntimeError("disk full")
        return spec.render(plan, i, root)

    monkeypatch.setitem(KINDS, "openi", type(spec)(**{**spec.__dict__, "render": broken}))
    with pytest.raises(RuntimeError, match="disk full"):
        generate_cohort("openi", out, 3, 2, "demo-openi", progress=False)
    assert not (out / "manifest.parquet").exists()  # stale manifest removed, new one never written
    assert not [p for p in out.iterdir() if p.name.startswith(".raw.")]
