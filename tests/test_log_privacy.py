"""Logs, progress output and the cache never carry note text: a canary string in a note must
not show up anywhere but the manifest (DEBUG logging captured, stdout/stderr at the fd level)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import read_cache
from extractors.extract import TooManyFailures, extract
from extractors.registry import create_expert
from tests.test_bad_inputs import minilm_expert

CANARY = "CANARY-7f3a"
NOTE = f"{CANARY} patient text: chest pain, fever and cough for three days"


def _manifest(tmp_path: Path, kind: str, values: list[str | None]) -> Path:
    rows = [
        {
            "sample_id": f"s{i}",
            "patient_id": f"p{i}",
            "split": "train",
            "m": v,
            "label_y": i % 2,
        }
        for i, v in enumerate(values)
    ]
    (tmp_path / "data").mkdir(exist_ok=True)
    meta = ManifestMeta(
        dataset="canary",
        task_type="binary",
        modalities={"m": kind},
        labels=["y"],
        adapter="test",
        root=str(tmp_path / "data"),
    )
    return write_manifest(pd.DataFrame(rows), tmp_path / f"manifest_{kind}.parquet", meta)


NOTES = [
    NOTE,
    f"{NOTE} {NOTE}",
    "unrelated note about a fracture",
    "   ",  # empty: failed
    f"\x00\x01{CANARY}\x02",
    None,  # missing
    " ".join([NOTE] * 40),  # longer than the MiniLM window: chunked
]


@pytest.mark.parametrize(
    ("expert_name", "params", "kind", "values", "max_failed"),
    [
        ("minilm", {}, "text", NOTES, 0.5),
        ("tfidf-svd", {"n_components": 4}, "text", NOTES, 0.5),
        # every sample fails (the note-as-path is not a file): the run stops with TooManyFailures
        ("image-radiomics", {}, "image", [f"{CANARY} patient text.png", f"{CANARY}/x.png"], 0.5),
        ("tfidf-svd", {"n_components": 4}, "text", ["  ", "\t", NOTE], 0.0),
    ],
    ids=["minilm", "tfidf-svd", "failing-paths", "mostly-empty"],
)
def test_canary_never_logged(
    expert_name: str,
    params: dict,
    kind: str,
    values: list,
    max_failed: float,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # root and every medmix.* logger
    mpath = _manifest(tmp_path, kind, values)
    expert = minilm_expert() if expert_name == "minilm" else create_expert(expert_name, **params)
    out = tmp_path / "cache.parquet"
    try:
        extract(
            mpath, "m", expert, out, shard_size=64, max_failed_fraction=max_failed, progress=True
        )
    except TooManyFailures as exc:
        assert CANARY not in str(exc)
    captured = capfd.readouterr()
    assert caplog.records, "expected DEBUG/INFO records from the extraction"
    texts = [caplog.text, captured.out, captured.err]
    for rec in caplog.records:
        texts.append(rec.getMessage())
        texts.append(repr(rec.args))
        if rec.exc_info:
            texts.append(logging.Formatter().formatException(rec.exc_info))
    for t in texts:
        assert CANARY not in t and "patient text" not in t
    data = read_cache(out)
    assert (data.status == "failed").any()
    for r in data.reason:
        assert CANARY not in str(r)
    if data.extra is not None:
        for x in data.extra:
            assert CANARY not in str(x)
    assert CANARY.encode() not in out.read_bytes()  # not in any column or metadata
