"""The ``rag:`` config section: its defaults, the pinned encoder and LLM presets, and the one
reader that fills them in. Torch-free, so the workflow plans the RAG rules from it.

The bridges that generate a report with a model (and so ask for a GPU) are named in
:data:`GENERATIVE_BRIDGES`; a test checks that it matches the bridge registry
(``extractors.rag.bridge``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from medmix.devices import resolve_device

MEDCPT_QUERY = {
    "type": "hf-cls",
    "model_id": "ncbi/MedCPT-Query-Encoder",
    "revision": "d83a36cc6b8e3a5c5e9d9d6ba156808c1643dcbc",
    "model_class": "BertModel",
    "max_length": 64,
}
MEDCPT_ARTICLE = {
    "type": "hf-cls",
    "model_id": "ncbi/MedCPT-Article-Encoder",
    "revision": "d05a736da4bb84ee4057b7f7999485be6ed85465",
    "model_class": "BertModel",
    "max_length": 512,
}
QWEN2_05B = {
    "model_id": "Qwen/Qwen2-0.5B",
    "revision": "91d2aff3f957f99e4c74c962f2f408dcc88a18d8",
    "model_class": "Qwen2Model",
    "max_length": 512,
}
GENERATIVE_BRIDGES = ("maira2", "merlin", "histgen")

DEFAULTS: dict[str, Any] = {
    "knowledge": {
        "name": "medlineplus-demo",
        "source": "resources/knowledge/medlineplus-demo/docs.parquet",
        "max_words": 150,
        "language": "English",
    },
    "index": {"type": "flat"},
    "k": 5,
    "query_encoder": {},
    "article_encoder": {},
    "llm": {},
    "projection": {"ridge": 1.0e-3},
    "bridges": {
        "text": {"type": "passthrough"},
        "timeseries": {"type": "ehr-serialize", "aggregation": "last"},
        "image": {"type": "nearest-report"},
        "volume": {"type": "nearest-report"},
        "slide": {"type": "nearest-report"},
    },
    "device": "cpu",
    "batch_size": 16,
    "shard_size": 256,
}


def rag_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``rag:`` section of a config with defaults filled in (unknown keys are an error)."""
    user = dict(section or {})
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"rag: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    out = copy.deepcopy(DEFAULTS)
    for key, value in user.items():
        if key == "bridges":
            out["bridges"] = {**out["bridges"], **{k: dict(v) for k, v in (value or {}).items()}}
        elif isinstance(out.get(key), dict):
            out[key] = {**out[key], **dict(value or {})}
        else:
            out[key] = value
    for role, base in (("query_encoder", MEDCPT_QUERY), ("article_encoder", MEDCPT_ARTICLE)):
        if out[role].get("type", "hf-cls") == "hf-cls":
            out[role] = {**base, **out[role]}
    out["llm"] = {**QWEN2_05B, **out["llm"]}
    out["device"] = resolve_device(str(out.get("device", "cpu")))
    if int(out["k"]) < 1:
        raise ValueError(f"rag.k must be >= 1, got {out['k']}")
    return out
