"""The steps of bridging one modality of a manifest: pick the configured bridge, read the
inputs, build the bridge, fill the rows (``run_bridge`` in the package chains them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cohorts.manifest import read_manifest
from extractors.rag.bridge.base import Bridge, BridgeError, BridgeInputs, BridgeRows, is_missing
from extractors.rag.bridge.files import BridgeResult
from extractors.rag.bridge.registry import bridge_class, list_bridges

BridgeFactory = Callable[..., Bridge]  # (spec, device=...) -> a bridge


def bridge_config(rag_cfg: Mapping[str, Any], modality: str, kind: str) -> dict[str, Any]:
    """The ``rag.bridges`` entry for a modality: its own name's, else its kind's."""
    bridges = rag_cfg.get("bridges", {})
    spec = bridges.get(modality) or bridges.get(kind)
    if spec is None:
        raise BridgeError(
            f"no bridge configured for modality {modality!r} (kind {kind!r}) under rag.bridges"
        )
    spec = dict(spec)
    types = tuple(list_bridges())
    if spec.get("type") not in types:
        raise BridgeError(
            f"rag.bridges.{modality if modality in bridges else kind}: type {spec.get('type')!r} not in {types}"
        )
    return spec


def load_inputs(
    manifest_path: str | os.PathLike,
    modality: str,
    root: str | os.PathLike | None = None,
    image_cache: str | os.PathLike | None = None,
    fit_manifest: str | os.PathLike | None = None,
    fit_image_cache: str | os.PathLike | None = None,
) -> BridgeInputs:
    """One modality of a manifest (``root`` overrides the manifest's dataset root)."""
    df, mmeta = read_manifest(manifest_path)
    if modality not in mmeta.modalities:
        raise BridgeError(
            f"{manifest_path}: no modality {modality!r}; has {list(mmeta.modalities)}"
        )
    values = df[modality].tolist()
    return BridgeInputs(
        manifest=df,
        manifest_meta=mmeta,
        modality=modality,
        kind=mmeta.modalities[modality],
        root=Path(root if root is not None else mmeta.root),
        sample_ids=df["sample_id"].astype(str).tolist(),
        values=values,
        present=[not is_missing(v) for v in values],
        image_cache=image_cache,
        fit_manifest=fit_manifest,
        fit_image_cache=fit_image_cache,
    )


def build_bridge(
    spec: Mapping[str, Any],
    device: str = "cpu",
    generators: Mapping[str, BridgeFactory] | None = None,
) -> Bridge:
    """The bridge ``spec["type"]`` names, configured by ``spec``.

    Report generators are built through ``generators`` (default: the registered ones), so a
    caller can hand in a model it has already loaded; a type that is neither a registered
    bridge nor in ``generators`` is a KeyError naming the type.
    """
    btype = spec["type"]
    if btype in list_bridges(generative=False):
        return bridge_class(btype)(spec, device=device)
    if generators is None:
        generators = {name: bridge_class(name) for name in list_bridges(generative=True)}
    return generators[btype](spec, device=device)


def bridge_modality(bridge: Bridge, inputs: BridgeInputs, spec: Mapping[str, Any]) -> BridgeResult:
    """Every row of the manifest: ``missing`` where the modality is not recorded, else what
    the bridge made of it; the metadata names the dataset, modality and the bridge's config."""
    meta: dict[str, Any] = {
        "dataset": inputs.manifest_meta.dataset,
        "modality": inputs.modality,
        "kind": inputs.kind,
        "bridge": dict(spec),
    }
    rows = BridgeRows.missing(inputs.sample_ids)
    bridge.check_kind(inputs)
    meta.update(bridge.fill(inputs, rows))
    return BridgeResult(rows.frame(), meta)
