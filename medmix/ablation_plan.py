"""The structural ablations a config asks for (the rows of the ablation table), torch-free.

Variants (run folders under ``results/{dataset}/runs/``)::

    full/medmix                   MedMIX (the reference row)
    ablation/no_distill           w/o distillation: MedMIX with λ_KD = 0 (when the config's
                                  λ_KD is already 0, this row IS full/medmix: not retrained)
    ablation/best_expert          w/o intra-modality fusion: each modality keeps its best
                                  single expert, picked on the validation split
    ablation/uniform_mean         w/o intra-modality fusion (uniform mean): α uniform over the
                                  available experts (method ``medmix-uniform``)
    ablation/no_{family}          w/o one expert family (biomedical, general, RAG) in every
                                  modality; a modality left without experts is dropped
    full/medmix-only-{modality}   w/o inter-modality fusion (keep one modality) — the
                                  single-modality runs of the main grid, reused

How each variant is trained is in :mod:`fusion.ablations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medmix.config import RAG_TYPE, is_rag_expert
from medmix.hparams import FusionHParams
from medmix.protocol_names import modality_label

FAMILY_ORDER = ("biomedical", "general", "rag")
FAMILY_LABELS = {"biomedical": "biomedical", "general": "general", "rag": "RAG"}
VARIANT_KINDS = ("no_distill", "best_expert", "uniform_mean", "no_family", "single_modality")
UNIFORM_METHOD = "medmix-uniform"


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table."""

    name: str  # ablation folder name (or the reused method)
    label: str  # the paper's row label
    protocol: str  # run folder's protocol: "full" (reused runs) or "ablation"
    method: str  # run folder's method: medmix, medmix-only-<m>, or the variant name
    kind: str  # reference | no_distill | best_expert | uniform_mean | no_family | single_modality

    @property
    def trained_here(self) -> bool:
        return self.protocol == "ablation"


def expert_families(cfg: dict[str, Any], dataset: str) -> dict[str, str]:
    """expert name -> family for the dataset's experts."""
    mods = cfg["datasets"][dataset]["modalities"]
    given = (cfg.get("ablations") or {}).get("families") or {}
    for fam, names in given.items():  # a misspelt name would silently fall back to the order
        unknown = [e for e in names if e not in cfg.get("experts", {})]
        if unknown:
            raise ValueError(
                f"ablations.families.{fam}: {unknown} are not defined under 'experts:'"
            )
    by_name = {e: fam for fam, names in given.items() for e in names}
    out: dict[str, str] = {}
    for experts in mods.values():
        pos = 0
        for e in experts:
            if e in by_name:
                out[e] = by_name[e]
                continue
            if is_rag_expert(cfg, e) or e == RAG_TYPE:
                out.setdefault(e, "rag")
                continue
            fam = FAMILY_ORDER[pos] if pos < 2 else f"other{pos}"
            out.setdefault(e, fam)
            pos += 1
    return out


def ablation_variants(cfg: dict[str, Any], dataset: str) -> list[Variant]:
    """The rows of the ablation table for ``dataset`` (reference first, paper order)."""
    section = cfg.get("ablations") or {}
    kinds = section.get("variants") or list(VARIANT_KINDS)
    mods = list(cfg["datasets"][dataset]["modalities"])
    out = [Variant("medmix", "MedMIX", "full", "medmix", "reference")]
    if "no_distill" in kinds:
        if float(FusionHParams.of(cfg).lambda_kd) == 0.0:
            # distillation is off: MedMIX itself is the model without it (no second training)
            out.append(Variant("medmix", "w/o distillation", "full", "medmix", "no_distill"))
        else:
            out.append(
                Variant("no_distill", "w/o distillation", "ablation", "no_distill", "no_distill")
            )
    if "best_expert" in kinds:
        out.append(
            Variant(
                "best_expert", "w/o intra-modality fusion", "ablation", "best_expert", "best_expert"
            )
        )
    if "uniform_mean" in kinds:
        out.append(
            Variant(
                "uniform_mean",
                "w/o intra-modality fusion (uniform mean)",
                "ablation",
                "uniform_mean",
                "uniform_mean",
            )
        )
    if "no_family" in kinds:
        fams = expert_families(cfg, dataset)
        present = [f for f in FAMILY_ORDER if f in fams.values()]
        present += sorted({f for f in fams.values() if f not in FAMILY_ORDER})
        for fam in present:
            remaining = {
                m: [e for e in cfg["datasets"][dataset]["modalities"][m] if fams[e] != fam]
                for m in mods
            }
            if not any(remaining.values()):
                continue
            name = f"no_{fam}"
            out.append(
                Variant(
                    name,
                    f"w/o {FAMILY_LABELS.get(fam, fam)} experts",
                    "ablation",
                    name,
                    "no_family",
                )
            )
    if "single_modality" in kinds and len(mods) > 1:
        for m in mods:
            out.append(
                Variant(
                    f"medmix-only-{m}",
                    f"w/o inter-modality fusion (keep {modality_label(m)})",
                    "full",
                    f"medmix-only-{m}",
                    "single_modality",
                )
            )
    return out


def variant_by_name(cfg: dict[str, Any], dataset: str, name: str) -> Variant:
    for v in ablation_variants(cfg, dataset):
        if v.name == name and v.trained_here:
            return v
    if name == "no_distill":  # asked for explicitly although distillation is off
        return Variant("no_distill", "w/o distillation", "ablation", "no_distill", "no_distill")
    raise ValueError(f"{dataset}: no ablation variant {name!r}")
