"""The demo generator's evidence settings (cohorts/demo/__init__.py, "Evidence settings").

Each setting generates for every kind and is deterministic; the default is the generator as it
was before the setting existed; each setting does what it claims, measured on the generator's
latents, evidence and labels.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cohorts.__main__ import main as cohorts_main
from cohorts.demo import DEFAULT_EVIDENCE, EVIDENCE, KINDS, generate_cohort
from cohorts.demo.base import Plan
from cohorts.manifest import read_manifest
from medmix.config import ConfigError, validate_config

N_BIG = 1500  # plans only (no files): fast
OTHER = [e for e in EVIDENCE if e != DEFAULT_EVIDENCE]
# (kind, n_patients, seed) -> digest of split, labels and presence of the generator before the
# evidence setting existed (commit 2cde3ef); the default must keep drawing exactly these
GOLDEN = {
    ("openi", 40, 5): "0ae3e9fd2712b042",
    ("mimic", 40, 5): "500ba6918fc643e3",
    ("ccrcc", 30, 5): "bc91de42b0e31e81",
}


def _spec(kind: str):
    return importlib.import_module(f"cohorts.demo.{kind}").SPEC


def _digest(plan: Plan) -> str:
    t = plan.samples.copy()
    for m, present in plan.present.items():
        t[f"has_{m}"] = present.astype(int)
    return hashlib.sha256(t.to_csv(index=False).encode()).hexdigest()[:16]


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def plans() -> dict[tuple[str, str], Plan]:
    return {(k, e): KINDS[k].plan(N_BIG, 3, 0.0, e) for k in KINDS for e in EVIDENCE}


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    return float(np.mean([roc_auc_score(y[:, t], score[:, t]) for t in range(y.shape[1])]))


# -- the default is unchanged --------------------------------------------------------------


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: k[0])
def test_default_draws_what_the_generator_drew_before(key: tuple[str, int, int]) -> None:
    kind, n, seed = key
    assert _digest(KINDS[kind].plan(n, seed, 0.0)) == GOLDEN[key]
    assert _digest(KINDS[kind].plan(n, seed, 0.0, DEFAULT_EVIDENCE)) == GOLDEN[key]


def test_default_files_and_manifest_identical_with_and_without_the_key(tmp_path: Path) -> None:
    out = tmp_path / "c"
    generate_cohort("mimic", out, 8, 4, "d", progress=False)
    without = _tree_hash(out)
    generate_cohort("mimic", out, 8, 4, "d", progress=False, evidence=DEFAULT_EVIDENCE)
    assert _tree_hash(out) == without
    assert "evidence" not in read_manifest(out / "manifest.parquet")[1].extra


# -- every setting generates, for every kind, deterministically -----------------------------


@pytest.mark.parametrize("evidence", OTHER)
@pytest.mark.parametrize("kind", list(KINDS))
def test_setting_generates(kind: str, evidence: str, tmp_path: Path) -> None:
    generate_cohort(kind, tmp_path, 8, 7, f"d-{kind}", progress=False, evidence=evidence)
    df, meta = read_manifest(tmp_path / "manifest.parquet")
    assert meta.extra["evidence"] == evidence
    assert df[list(meta.modalities)].notna().any(axis=1).all()
    for m, kind_m in meta.modalities.items():
        if kind_m != "text":
            assert all((tmp_path / "raw" / p).is_file() for p in df[m].dropna())
    # deterministic plan (latents, labels, missingness); a different setting draws another
    a, b = (KINDS[kind].plan(60, 7, 0.0, evidence) for _ in range(2))
    assert _digest(a) == _digest(b)
    assert np.array_equal(a.signal.logits, b.signal.logits)
    default = KINDS[kind].plan(60, 7, 0.0)
    assert _digest(a) != _digest(default) or not np.array_equal(
        a.signal.logits, default.signal.logits
    )


@pytest.mark.parametrize("evidence", OTHER)
def test_setting_files_are_byte_identical_when_regenerated(evidence: str, tmp_path: Path) -> None:
    generate_cohort("mimic", tmp_path, 8, 7, "d", progress=False, evidence=evidence)
    first = _tree_hash(tmp_path)
    generate_cohort("mimic", tmp_path, 8, 7, "d", progress=False, evidence=evidence)
    assert _tree_hash(tmp_path) == first


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown evidence setting"):
        generate_cohort("mimic", tmp_path, 10, 0, "d", progress=False, evidence="late")


def test_cli_and_config_take_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["demo", "--kind", "ccrcc", "--dataset", "x", "--n-patients", "8", "--seed", "1"]
    argv += ["--evidence", "redundant", "--out", str(tmp_path), "--quiet"]
    assert cohorts_main(argv) == 0
    assert "evidence redundant" in capsys.readouterr().out
    assert read_manifest(tmp_path / "manifest.parquet")[1].extra["evidence"] == "redundant"

    def cfg(evidence: str) -> dict:
        demo = {"kind": "mimic", "evidence": evidence}
        ds = {"adapter": "demo", "demo": demo, "modalities": {"ehr": ["ts-stats"]}}
        return {"datasets": {"d": ds}, "experts": {"ts-stats": {"type": "ts-stats"}}}

    for e in EVIDENCE:
        assert validate_config(cfg(e))["datasets"]["d"]["demo"]["evidence"] == e
    with pytest.raises(ConfigError, match="evidence"):
        validate_config(cfg("late"))
    no_key = cfg("additive")
    del no_key["datasets"]["d"]["demo"]["evidence"]
    # no default is filled in: configs written before the setting keep their dataset slices
    assert "evidence" not in validate_config(no_key)["datasets"]["d"]["demo"]


# -- every setting does what it claims -------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_prevalence_and_difficulty_shared_by_all_settings(kind: str, plans: dict) -> None:
    base = plans[kind, DEFAULT_EVIDENCE].signal
    for e in OTHER:
        sig = plans[kind, e].signal
        assert np.array_equal(sig.labels.sum(0), base.labels.sum(0))  # exact prevalence
        # the logit spread (Bayes difficulty) is the additive one, within sampling error
        ratio = (sig.logits.std(0) / base.logits.std(0)).mean()
        assert 0.9 < ratio < 1.1, (e, ratio)


@pytest.mark.parametrize("kind", list(KINDS))
def test_redundant_modalities_are_views_of_one_latent(kind: str, plans: dict) -> None:
    """Evidence of two modalities correlates ~0.9 (additive ~0.3); one modality's share of
    the logits ranks the labels about as well as the whole logit (additive: clearly worse)."""

    def view_corr(sig) -> float:
        mods = list(sig.clean)
        corrs = []
        for i, m1 in enumerate(mods):
            for m2 in mods[i + 1 :]:
                for k in range(len(sig.concepts)):
                    a, b = sig.clean[m1][:, k], sig.clean[m2][:, k]
                    if a.std() > 0 and b.std() > 0:
                        corrs.append(np.corrcoef(a, b)[0, 1])
        return float(np.mean(corrs))

    def gap(sig) -> float:  # AUROC of all modalities minus that of the best single one
        y = sig.labels
        best = max(_auroc(y, c) for c in sig.contributions.values())
        return _auroc(y, sig.logits) - best

    red, add = plans[kind, "redundant"].signal, plans[kind, DEFAULT_EVIDENCE].signal
    assert view_corr(red) > 0.85 and view_corr(add) < 0.45
    assert gap(red) < 0.025 and gap(add) > 0.04, (gap(red), gap(add))


@pytest.mark.parametrize("kind", list(KINDS))
def test_dominant_one_modality_per_sample_carries_the_labels(kind: str, plans: dict) -> None:
    plan = plans[kind, "dominant"]
    sig, spec = plan.signal, _spec(kind)
    assert sig.dominant is not None
    shares = np.bincount(sig.dominant, minlength=len(spec.modalities)) / len(sig.dominant)
    assert np.all(np.abs(shares - 1 / len(spec.modalities)) < 0.05)  # drawn uniformly
    for j, m in enumerate(spec.modalities):
        on = sig.dominant == j
        # what the renderer sees of m, projected on the labels' weights, tracks the logit
        # where m dominates and hardly anywhere else
        proj = sig.evidence[m] @ (spec.weights * spec.view(m)[None, :]).T
        for t in range(min(3, len(spec.labels))):
            if spec.contribution_std(m)[t] == 0:
                continue
            c_on = np.corrcoef(proj[on, t], sig.logits[on, t])[0, 1]
            c_off = np.corrcoef(proj[~on, t], sig.logits[~on, t])[0, 1]
            assert c_on > 0.8 and abs(c_off) < 0.2, (m, t, c_on, c_off)
        # the others are visibly poor copies, and the dominant modality is always there
        assert sig.quality[m][on].min() >= 0.9 and sig.quality[m][~on].max() <= 0.35
        assert plan.present[m][on].all()
        assert not sig.contributions[m][~on].any()


@pytest.mark.parametrize("kind", list(KINDS))
def test_informative_missingness_pattern_predicts_the_labels(kind: str, plans: dict) -> None:
    mnar, add = plans[kind, "informative-missingness"], plans[kind, DEFAULT_EVIDENCE]
    # the same signal and labels as additive: only missingness differs
    assert np.array_equal(mnar.signal.labels, add.signal.labels)
    assert np.array_equal(mnar.signal.logits, add.signal.logits)
    spec = _spec(kind)
    adverse = mnar.signal.burden(spec.weights) > 0  # any adverse outcome (death, a finding...)

    def gap(plan: Plan, m: str) -> float:  # P(m missing | adverse) - P(m missing | not)
        miss = ~plan.present[m]
        return float(miss[adverse].mean() - miss[~adverse].mean())

    def count_auroc(plan: Plan) -> float:  # number of missing modalities vs adverse outcome
        n_missing = sum((~p).astype(int) for p in plan.present.values())
        return float(roc_auc_score(adverse, n_missing))

    for m in spec.modalities:
        assert gap(mnar, m) > gap(add, m) + 0.1, (m, gap(mnar, m), gap(add, m))
    assert count_auroc(mnar) > 0.65 and count_auroc(add) < 0.62, (
        count_auroc(mnar),
        count_auroc(add),
    )
    present = np.stack(list(mnar.present.values()), axis=1)
    assert present.any(axis=1).all()
