"""The bridge file ``results/{dataset}/bridge/{modality}.parquet``: one string column each for
``sample_id``, ``text``, ``source``, ``status`` and ``reason``, and the run's metadata as JSON
under the schema metadata key ``medmix.bridge``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from extractors.rag.bridge.base import BridgeError
from medmix.io import atomic_path

BRIDGE_COLUMNS = ("sample_id", "text", "source", "status", "reason")
META_KEY = b"medmix.bridge"

_SCHEMA = pa.schema([(c, pa.string()) for c in BRIDGE_COLUMNS])


class BridgeResult(NamedTuple):
    """One bridged modality: its rows and their metadata."""

    frame: pd.DataFrame
    meta: dict[str, Any]


def write_bridge(frame: pd.DataFrame, path: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    bad = set(frame["status"]) - {"ok", "missing", "failed"}
    if bad:
        raise BridgeError(f"bridge rows: unknown status {sorted(bad)}")
    table = pa.Table.from_pandas(frame[list(BRIDGE_COLUMNS)], schema=_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(
        {META_KEY: json.dumps(dict(meta), sort_keys=True, default=str).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_bridge(path: str | os.PathLike) -> BridgeResult:
    path = Path(path)
    if not path.exists():
        raise BridgeError(f"bridge file {path} not found")
    table = pq.read_table(path)
    missing = [c for c in BRIDGE_COLUMNS if c not in table.column_names]
    if missing:
        raise BridgeError(f"{path}: missing column(s) {missing}")
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return BridgeResult(table.to_pandas(), meta)
