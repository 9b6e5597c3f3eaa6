"""Write a demo cohort: raw files into a temp folder, swap it in, then the manifest last."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.demo.base import CohortKind
from cohorts.demo.ccrcc import KIND as CCRCC
from cohorts.demo.mimic import KIND as MIMIC
from cohorts.demo.openi import KIND as OPENI
from cohorts.demo.signal import DEFAULT_EVIDENCE, EVIDENCE, check_evidence
from cohorts.manifest import ManifestMeta, write_manifest
from medmix.io import creation_mode
from medmix.progress import progress as progress_bar

KINDS: dict[str, CohortKind] = {k.name: k for k in (OPENI, MIMIC, CCRCC)}
__all__ = ["DEFAULT_EVIDENCE", "EVIDENCE", "KINDS", "generate_cohort"]
ADAPTER = "demo"
ADAPTER_VERSION = "1"


def generate_cohort(
    kind: str,
    out_dir: str | os.PathLike,
    n_patients: int,
    seed: int,
    dataset: str,
    shift: float = 0.0,
    progress: bool = True,
    evidence: str = DEFAULT_EVIDENCE,
) -> Path:
    """Generate cohort ``kind`` under ``out_dir``: ``raw/`` files and ``manifest.parquet``.

    Deterministic per (kind, n_patients, seed, shift, evidence); ``evidence`` is one of
    ``EVIDENCE`` (package docstring), the default writing what it always wrote. Crash-safe: any old manifest is removed
    first, raw files are written to a temp folder that replaces ``raw/`` only when complete,
    and the manifest (``meta.root = str(out_dir / "raw")``) is written atomically last.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown demo cohort kind {kind!r}; choose from {sorted(KINDS)}")
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    check_evidence(evidence)
    spec = KINDS[kind]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.parquet"
    raw = out_dir / "raw"
    manifest_path.unlink(missing_ok=True)

    plan = spec.plan(n_patients, seed, shift, evidence)
    df = plan.samples.copy()
    tmp = Path(tempfile.mkdtemp(prefix=".raw.tmp-", dir=out_dir))
    os.chmod(tmp, creation_mode(directory=True))  # mkdtemp makes it 0700; honour the umask
    try:
        for mod, mkind in spec.modalities.items():
            if mkind != "text":
                (tmp / mod).mkdir()
        values: dict[str, list[str | None]] = {m: [] for m in spec.modalities}
        bar = progress_bar(
            range(len(df)),
            desc=f"{dataset} ({kind})",
            unit="sample",
            enabled=progress,
            mininterval=1.0,
        )
        for i in bar:
            row = spec.render(plan, i, tmp)
            for mod in spec.modalities:
                values[mod].append(row[mod])
        for mod in spec.modalities:
            df[mod] = pd.Series(values[mod], dtype=object)
        _swap_in(tmp, raw)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    meta = ManifestMeta(
        dataset=dataset,
        task_type=spec.task_type,
        modalities=dict(spec.modalities),
        labels=list(spec.labels),
        adapter=ADAPTER,
        adapter_version=ADAPTER_VERSION,
        root=str(out_dir / "raw"),
        extra={
            "generator": f"cohorts.demo.{kind}",
            "description": spec.description,
            "kind": kind,
            "n_patients": int(n_patients),
            "seed": int(seed),
            "shift": float(shift),
            # only when not the default: the default manifest stays byte-identical to before
            **({} if evidence == DEFAULT_EVIDENCE else {"evidence": evidence}),
            "fractions": spec.fractions,
            "missing_fraction": {
                m: round(float(1 - plan.present[m].mean()), 4) for m in spec.modalities
            },
            "low_quality_fraction": {
                m: round(float(np.mean(plan.signal.quality[m] < 0.5)), 4) for m in spec.modalities
            },
        },
    )
    return write_manifest(df, manifest_path, meta)


def _swap_in(tmp: Path, raw: Path) -> None:
    """Replace ``raw`` by the finished ``tmp`` folder (two renames; old copy removed after)."""
    old = None
    if raw.exists():
        old = raw.with_name(f".raw.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        raw.rename(old)
    tmp.rename(raw)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
