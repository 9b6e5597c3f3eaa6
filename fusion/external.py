"""External validation (paper §4.5, Table 2) and evaluation of saved runs on (other) data.

Train on one configured dataset, evaluate on another with the same tasks and modalities, or a
subset of them: a modality the target lacks is missing for every sample (MIMIC-IV-MM →
MIMIC-III, which has no chest X-rays; demo: two demo cohorts drawn with shifted generator
parameters, ``python -m cohorts demo … --shift 0.5``). Config::

    external:
      - {source: demo-mimic, target: demo-mimic-shift}

For every method the source's ``full`` run (all seeds) is loaded from its checkpoints, the
target's caches are read with the SOURCE's standardisation statistics, and each seed is
evaluated on the target's ``external`` rows (all of its rows when it has none: the whole
cohort is unseen) with the decision thresholds chosen on the SOURCE's validation split. The
result is written in the run layout under the source, so ``python -m fusion evaluate``
collects it with everything else::

    results/{source}/runs/external-{target}/{method}/seed{k}/{metrics.json,predictions.parquet}
    results/{source}/runs/external-{target}/{method}/summary.json

Expert caches must describe the same embedding space in both cohorts. Experts with a fixed
model (FMs, MiniLM, radiomics features) do. Experts fitted on a cohort's training split
(TF-IDF+SVD, a time-series variable list learnt from the files) do when the target was
extracted with the source's fit — the workflow passes ``--fit-manifest`` (the source's
manifest) to every extraction of an external target — which their cache metadata shows (the
preprocess hash covers the fit). The RAG branch (projection and image bridge fitted per
cohort) and any expert whose metadata differs are listed as ``unaligned_experts`` in
``summary.json`` (and in the table's header) with a warning. A different embedding dim is
an error.

:func:`evaluate_saved_runs` is also what the test-time protocols use (``fusion.protocols``):
a test-only corruption does not change the trained model, so it is evaluated on the ``full``
checkpoints instead of being retrained.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from medmix.io import fresh_tmp_dir, replace_dir
from medmix.methods import TEACHER_EXPERT
from medmix.plan import external_protocol

log = logging.getLogger("medmix.fusion.external")


def cohort_fitted_experts(cfg: dict[str, Any], experts: list[str]) -> list[str]:
    """The experts (config names) whose embedding space is fitted on a cohort's own data."""
    out = []
    specs = cfg.get("experts", {})
    for name in experts:
        spec = specs.get(name, {})
        typ = spec.get("type", name)
        fitted = typ == "rag"
        if not fitted:
            try:
                from extractors.registry import expert_class

                cls = expert_class(typ)
                fitted = bool(getattr(cls, "requires_fit", False))
                if typ in ("catch22", "ts-stats") and spec.get("variables") is None:
                    fitted = True
            except Exception:  # noqa: BLE001 - unknown type: cannot tell, assume fixed
                fitted = False
        if fitted:
            out.append(name)
    return out


def _seed_dirs(run: Path) -> list[tuple[int, Path]]:
    found = []
    for d in run.glob("seed*"):
        if d.is_dir() and (d / "model.safetensors").exists():
            found.append((int(d.name.removeprefix("seed")), d))
    if not found:
        raise FileNotFoundError(f"{run}: no seed*/model.safetensors (train it first)")
    return sorted(found)


def _json(obj: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=1, sort_keys=True)


def _load_target(cfg: dict[str, Any], target: str, spec: Any, standardization: Any):
    from fusion.data import load_fusion_data
    from medmix.config import cache_paths, dataset_paths

    paths = dataset_paths(cfg, target)
    caches = cache_paths(cfg, target)
    have = set(cfg["datasets"][target]["modalities"])
    for m in spec.modalities:  # a teacher cache read as an input expert (AdaCoMed, *-large)
        if m in have:
            caches.setdefault(m, {})[TEACHER_EXPERT] = paths.teacher(m)
    missing = [(m, e) for m, e in spec.flat_experts if m in have and e not in caches.get(m, {})]
    if missing:
        raise ValueError(f"{target}: no cache configured for {missing}")
    # a modality the target cohort lacks: no cache, missing for every sample
    wanted = {
        m: {e: caches[m][e] if m in have else None for e in spec.experts[m]}
        for m in spec.modalities
    }
    return load_fusion_data(paths.manifest, wanted, standardization)


def _rag_bridges_aligned(cfg: dict[str, Any], source: str, target: str, modality: str) -> bool:
    """The RAG branch (shared knowledge base, projection and encoders) gives one embedding
    space across cohorts when the text its bridge hands it does: text, EHR and report-generation
    bridges are fixed functions of the input; the nearest-report bridge is, when the target's
    reports come from the source's training split (``--fit-manifest``, as the workflow does)."""
    from extractors.rag.bridge import read_bridge
    from medmix.config import dataset_paths

    try:
        metas = [
            read_bridge(dataset_paths(cfg, ds).root / "bridge" / f"{modality}.parquet")[1]
            for ds in (source, target)
        ]
    except Exception:  # noqa: BLE001 - no bridge to judge by: cannot vouch for it
        return False
    kinds = {str((m.get("bridge") or {}).get("type")) for m in metas}
    if len(kinds) != 1:
        return False
    if kinds == {"nearest-report"}:
        return all(m.get("library_dataset") == source for m in metas)
    return True


def _check_alignment(cfg: dict[str, Any], source: str, target: str, spec: Any) -> list[str]:
    """Experts whose caches may not share one embedding space across the two cohorts."""
    from extractors.cache import read_meta
    from medmix.config import cache_paths

    if source == target:
        return []
    sc, tc = cache_paths(cfg, source), cache_paths(cfg, target)
    fitted = set(cohort_fitted_experts(cfg, [e for _, e in spec.flat_experts]))
    specs = cfg.get("experts", {})
    flagged = set()
    have = set(cfg["datasets"][target]["modalities"])
    for m, e in spec.flat_experts:
        if e == TEACHER_EXPERT or m not in have:
            continue
        if specs.get(e, {}).get("type", e) == "rag" and not _rag_bridges_aligned(
            cfg, source, target, m
        ):
            flagged.add(e)
            continue
        try:
            a, b = read_meta(sc[m][e]), read_meta(tc[m][e])
        except Exception:  # noqa: BLE001 - a cache is gone: judge by the expert's type
            if e in fitted:
                flagged.add(e)
            continue
        if a.dim != b.dim:
            raise ValueError(f"{m}/{e}: dim {a.dim} in {source} but {b.dim} in {target}")
        # A fitted expert's preprocess hash covers its fit (TF-IDF vocabulary and SVD, the
        # learnt variable list): equal hashes = one embedding space (the target was extracted
        # with --fit-manifest on the source, as the workflow does for external targets).
        if (a.model_id, a.preprocess_hash) != (b.model_id, b.preprocess_hash):
            flagged.add(e)
    out = sorted(f"{m}/{e}" for m, e in spec.flat_experts if e in flagged)
    if out:
        log.warning(
            "%s -> %s: experts %s are fitted per cohort (or configured differently): their "
            "embedding spaces may not match across cohorts",
            source, target, out,
        )  # fmt: skip
    return out


def _predict(lm: Any, data: Any) -> Any:
    """The loaded model's predictions (``LoadedModel.predict``; the trainer's as a fallback)."""
    try:
        return lm.predict(data)
    except ModuleNotFoundError:
        from fusion.train import predict

        return predict(lm.model, data)


def _external_view(data: Any) -> tuple[Any, np.ndarray]:
    """``data`` with its evaluation rows labelled ``external`` (all rows if it has none)."""
    from dataclasses import replace

    split = np.asarray(data.split).astype(object)
    rows = split == "external"
    if not rows.any():
        rows = np.ones(len(split), dtype=bool)
    new = np.where(rows, "external", "unused").astype(object)
    return replace(data, split=new), rows


def evaluate_saved_runs(
    cfg: dict[str, Any],
    source_run: str | os.PathLike,
    target: str,
    outputs: dict[str, str | os.PathLike],
    threads: int | None = 1,
) -> list[Path]:
    """Evaluate every seed of a saved run on ``target`` under each protocol of ``outputs``.

    ``outputs`` maps a protocol setting to the run folder to write. When ``target`` is the
    run's own dataset, the setting's masks are applied and metrics computed as the trainer
    does (thresholds on the validation split); otherwise (external validation) the target's
    evaluation rows are scored with the source's validation thresholds.
    """
    import torch

    from fusion.ablations import register_variants
    from fusion.metrics import evaluate_split
    from fusion.protocols import apply_protocol, protocol_severity, write_masks
    from fusion.registry import load_model
    from fusion.train import compute_metrics, predictions_frame
    from medmix.protocol_names import is_test_only

    register_variants()
    if threads:
        torch.set_num_threads(int(threads))
    source_run = Path(source_run)
    seeds = _seed_dirs(source_run)
    first = load_model(seeds[0][1])
    source = first.info.get("dataset") or source_run.parents[2].name
    method = first.info.get("method") or source_run.name
    spec = first.spec
    data = _load_target(cfg, target, spec, first.standardization)
    external = target != source
    unaligned = _check_alignment(cfg, source, target, spec)
    absent = [m for m in spec.modalities if m not in cfg["datasets"][target]["modalities"]]
    if absent:
        log.info("%s lacks %s: evaluated as missing for every sample", target, absent)
    if external:
        data, rows = _external_view(data)
        log.info("%s -> %s (%s): %d external samples", source, target, method, int(rows.sum()))
    written = []
    models: dict[Path, Any] = {}
    for setting, out in outputs.items():
        t0 = time.perf_counter()
        if setting != "full" and not is_test_only(setting):
            raise ValueError(f"{setting}: corrupts training data, cannot reuse a trained model")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        severity = protocol_severity(cfg, target, data, setting)
        tmp = fresh_tmp_dir(out)
        per_seed: dict[str, dict[str, float]] = {}
        try:
            for seed, seed_dir in seeds:
                if seed_dir not in models:
                    models[seed_dir] = first if seed_dir == seeds[0][1] else load_model(seed_dir)
                lm = models[seed_dir]
                masked = apply_protocol(data, setting, seed, severity=severity)
                pred = _predict(lm, masked)
                if external:
                    src_metrics = json.loads((seed_dir / "metrics.json").read_text())
                    thresholds = src_metrics.get("thresholds") or {}
                    ev = masked.split == "external"
                    y = masked.y.cpu().numpy()[ev]
                    no_mod = ~masked.modality_mask.any(dim=1).cpu().numpy()[ev]
                    metrics = {
                        "task_type": masked.task_type,
                        "labels": spec.output_names,
                        "thresholds": thresholds,
                        "splits": {
                            "external": evaluate_split(
                                y,
                                pred.probs[ev],
                                masked.task_type,
                                spec.output_names,
                                thresholds,
                                int(no_mod.sum()),
                            ).to_dict()  # fmt: skip
                        },
                    }
                    split = "external"
                else:
                    metrics = compute_metrics(masked, spec, pred)
                    split = "test"
                d = tmp / f"seed{seed}"
                d.mkdir()
                predictions_frame(masked, spec, pred).to_parquet(
                    d / "predictions.parquet", index=False
                )
                info = {
                    "dataset": source,
                    "target": target,
                    "method": method,
                    "protocol": setting if not external else external_protocol(target),
                    "seed": seed,
                    "source_run": str(seed_dir),
                    "unaligned_experts": unaligned,
                    "absent_modalities": absent,
                }
                (d / "metrics.json").write_text(_json({**info, **metrics}))
                if setting != "full":
                    write_masks(data, setting, seed, d, severity=severity)
                per_seed[str(seed)] = dict(metrics["splits"].get(split, {}).get("macro", {}))
            keys = sorted(set.intersection(*(set(v) for v in per_seed.values())))
            vals = {k: [v[k] for v in per_seed.values()] for k in keys}
            summary = {
                "dataset": source,
                "target": target,
                "method": method,
                "protocol": setting if not external else external_protocol(target),
                "split": "external" if external else "test",
                "seeds": [s for s, _ in seeds],
                "per_seed": per_seed,
                "mean": {k: float(np.mean(v)) for k, v in vals.items()},
                "std": {
                    k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()
                },
                "std_ddof": 1,
                "source_run": str(source_run),
                "unaligned_experts": unaligned,
                "absent_modalities": absent,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            (tmp / "summary.json").write_text(_json(summary))
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(out)
        auroc = summary["mean"].get("auroc")
        log.info(
            "%s %s %s on %s: AUROC %s (%d seeds) -> %s",
            source, method, setting, target,
            f"{auroc:.3f}" if auroc is not None else "n/a", len(seeds), out,
        )  # fmt: skip
    return written


def run_external(
    cfg: dict[str, Any],
    source: str,
    target: str,
    method: str,
    out: str | os.PathLike | None = None,
    threads: int | None = 1,
) -> Path:
    """Evaluate the source's ``full`` run of ``method`` on ``target`` (external validation)."""
    from medmix.config import dataset_paths

    src = dataset_paths(cfg, source)
    out = Path(out) if out else src.run_dir(external_protocol(target), method)
    return evaluate_saved_runs(
        cfg, src.run_dir("full", method), target, {"full": out}, threads=threads
    )[0]


def main(argv: list[str] | None = None) -> int:
    from medmix.config import load_config_arg
    from medmix.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m fusion.external", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", help="default results/{source}/runs/external-{target}/{method}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config_arg(args.config)
    run_external(cfg, args.source, args.target, args.method, args.out, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
