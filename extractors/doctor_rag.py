"""The doctor's entries for the RAG expert, which is a chain of components, not one model.

The knowledge source, the MedCPT query and article encoders, the LLM of the soft prompt, and
each report-generation bridge get their own entry (``rag/...``) with the same checks as an
expert (:mod:`extractors.doctor_checks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extractors.doctor_checks import (
    FAIL,
    OK,
    Check,
    ExpertReport,
    check_pin,
    cuda_devices,
    error_check,
    hub_model,
    imports_check,
    installed,
    packages_check,
    paths_exist,
    spec_weights,
)
from extractors.rag import bridge, encoders, softprompt
from extractors.rag.expert import PACKAGES
from medmix.rag_settings import rag_config

# (module, pip name) each report-generation bridge imports beyond the core dependencies; HistGen
# imports its own checkout (repo_dir), which its weights check finds or not.
BRIDGE_IMPORTS: dict[str, tuple[tuple[str, str], ...]] = {
    "maira2": (("transformers", "transformers"), ("PIL", "pillow")),
    "merlin": (
        ("merlin", "merlin-vlm"),
        ("torchvision", "torchvision"),
        ("peft", "peft"),
        ("accelerate", "accelerate"),
        ("monai", "monai"),
    ),
    "histgen": (("torch", "torch"),),
}


def rag_reports(cfg: dict[str, Any]) -> list[ExpertReport]:
    """The RAG expert is a chain, not one model: the knowledge source, the MedCPT query and
    article encoders, the LLM of the soft prompt, and each report-generation bridge."""
    try:
        rag = rag_config({k: v for k, v in (cfg.get("rag") or {}).items() if k != "device"})
    except Exception as exc:
        rep = ExpertReport("rag", "rag", checks={"config": Check(FAIL, f"{exc}"[:400])})
        return [rep]
    device = str((cfg.get("rag") or {}).get("device", "cpu"))
    n_gpu = cuda_devices()[0]
    dev = (
        Check(FAIL, f"rag.device {device} but no CUDA device visible")
        if device.startswith("cuda") and not n_gpu
        else Check(OK, "cuda" if n_gpu and device != "cpu" else "cpu")
    )
    pkgs = packages_check([d for d in PACKAGES if not installed(d)])
    source = str(rag["knowledge"]["source"])
    reports = [ExpertReport("rag/knowledge", "rag", "text", source, {
        "source": Check(OK, "found") if Path(source).exists() else Check(
            FAIL, f"{source} not found: the MedlinePlus bulk XML (mplus_topics_<date>.xml) or a docs.parquet")})]  # fmt: skip
    components = [
        (
            "rag/query_encoder",
            lambda: encoders.build_encoder("rag/query_encoder", rag["query_encoder"]),
        ),
        (
            "rag/article_encoder",
            lambda: encoders.build_encoder("rag/article_encoder", rag["article_encoder"]),
        ),
        ("rag/llm", lambda: softprompt.SoftPromptEncoder(rag["llm"])),
    ]
    for name, build in components:
        rep = ExpertReport(name, "rag", "text")
        try:
            spec = build().spec
            rep.model = str(spec.model_id)
            rep.checks.update(packages=pkgs, weights=spec_weights(spec), device=dev)
            if hub_model(spec) is not None:
                rep.checks["pin"] = check_pin(spec)
        except Exception as exc:
            rep.checks["config"] = error_check(exc)
        reports.append(rep)
    for key, bcfg in rag["bridges"].items():
        btype = str(bcfg.get("type"))
        if btype not in bridge.GENERATORS:
            continue  # pass-through, EHR serialisation, nearest-report: no weights
        rep = ExpertReport(f"rag/bridge/{key}", btype, key)
        rep.checks["packages"] = imports_check(BRIDGE_IMPORTS.get(btype, ()))
        try:
            gen = bridge.GENERATORS[btype](bcfg)
            if btype == "histgen":
                rep.checks["weights"] = paths_exist(
                    gen.cfg, ("repo_dir", "checkpoint", "ann_path", "features_dir")
                )
            else:
                rep.model = str(gen.spec.model_id)
                rep.checks["weights"] = spec_weights(gen.spec)
                if hub_model(gen.spec) is not None:
                    rep.checks["pin"] = check_pin(gen.spec)
            rep.checks["device"] = dev
        except Exception as exc:
            rep.checks["config"] = error_check(exc)
        reports.append(rep)
    return reports
