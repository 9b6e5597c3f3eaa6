"""Logs, progress output and the cache never carry note text: a canary string in a note must
not show up anywhere but the manifest (DEBUG logging captured, stdout/stderr at the fd level)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import CacheData, read_cache
from extractors.extract import TooManyFailures, extract
from extractors.registry import create_expert
from tests.extractors.test_bad_inputs import minilm_expert
from tests.helpers import CharCountExpert

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
        assert not out.exists()
        out = exc.rejected  # the rows are kept there for inspection: check them too
    data = _assert_no_canary(caplog, capfd, out)
    assert (data.status == "failed").any()


def _assert_no_canary(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], out: Path
) -> CacheData:
    """No note text in the captured logs (records, their args and tracebacks), stdout/stderr
    or the cache file (any column, the metadata); returns the cache."""
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
    for r in data.reason:
        assert CANARY not in str(r)
    if data.extra is not None:
        for x in data.extra:
            assert CANARY not in str(x)
    assert CANARY.encode() not in out.read_bytes()  # not in any column or metadata
    return data


LOAD_MARK = "BADBYTES"  # a note the quoting expert's load fails on


class QuotingExpert(CharCountExpert):
    """An expert whose encoder fails with a message quoting the notes it was given, as a
    tokenizer's or a model's error can: at load for notes holding LOAD_MARK, at embed for
    batches holding FAIL_MARK (then again for that note alone)."""

    registry_name = "quoting"

    def load(self, value: str, root: Path) -> str:
        if LOAD_MARK in value:
            raise UnicodeError(f"cannot tokenise {value!r}")
        return super().load(value, root)

    def embed(self, batch: list[str]) -> np.ndarray:
        if any(FAIL_MARK in t for t in batch):
            raise ValueError(f"cannot encode batch {batch!r}")
        return super().embed(batch)


@pytest.mark.parametrize(
    ("workers", "max_failed"), [(0, 0.9), (1, 0.1)], ids=["in-process", "workers-too-many"]
)
def test_exception_messages_quoting_the_note_stay_out_of_cache_and_logs(
    workers: int,
    max_failed: float,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    load_bad, embed_bad = f"{NOTE} {LOAD_MARK}", f"{NOTE} {FAIL_MARK}"
    notes = [NOTE, load_bad, "unrelated note", embed_bad, None, f"{NOTE} again"] * 2
    mpath = _manifest(tmp_path, "text", notes)
    expert = QuotingExpert(batch_size=4)
    expert.num_workers = workers  # a run setting: with 1 the loads run in a forked worker
    out = tmp_path / "cache.parquet"
    try:
        extract(mpath, "m", expert, out, shard_size=6, max_failed_fraction=max_failed)
        assert max_failed > 4 / 10
    except TooManyFailures as exc:
        assert max_failed < 4 / 10 and CANARY not in str(exc) and LOAD_MARK not in str(exc)
        out = exc.rejected
    data = _assert_no_canary(caplog, capfd, out)
    reasons = dict(zip(data.sample_ids, data.reason, strict=True))
    assert list(data.status) == ["ok", "failed", "ok", "failed", "missing", "ok"] * 2
    for i in (1, 7):  # the type and a size are kept, the quoting message is not
        assert reasons[f"s{i}"] == (
            f"UnicodeError in load (input of {len(load_bad)} characters; message withheld)"
        )
    for i in (3, 9):
        assert reasons[f"s{i}"] == (
            f"ValueError in embed (input of {len(embed_bad)} characters; message withheld)"
        )


# -- the RAG embed CLI and training, as command-line runs at DEBUG -----------------------------

DEBUG_ENV = {"MEDMIX_LOG_LEVEL": "DEBUG", "HF_HUB_OFFLINE": "1"}
FAIL_MARK = "FAILME"  # a note the (patched) RAG chain fails on, quoting its input


def _assert_clean(text: str, what: str) -> None:
    assert CANARY not in text and "patient text" not in text, f"note text in {what}"


def _assert_clean_files(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def rag_kb(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny knowledge index + projection (random-init MedCPT / Qwen2 on the demo base)."""
    from extractors.rag.expert import knowledge_paths, run_index, run_projection
    from medmix.rag_settings import rag_config
    from tests.extractors.test_rag_pipeline import rag_cfg

    root = tmp_path_factory.mktemp("privacy-kb")
    section = {**rag_cfg(root)["rag"], "shard_size": 4, "batch_size": 4}
    docs = root / "docs.parquet"  # 24 real topics of the demo base: enough to retrieve k=3
    pq.write_table(pq.read_table(section["knowledge"]["source"]).slice(0, 24), docs)
    section["knowledge"] = {**section["knowledge"], "source": str(docs)}
    rag = rag_config(section)
    kp = knowledge_paths(root / "results", rag)
    run_index(rag, kp.root, threads=1)
    run_projection(rag, kp.root, kp.projection)
    return {"section": section, "kp": kp}


def test_rag_embed_cli_never_logs_note_text(
    rag_kb: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bridge + embed of a note modality; the chain fails on one note with an error message
    that quotes the batch's texts (as a tokenizer's can): neither the log nor the cache's
    reason may carry it."""
    from extractors.rag.__main__ import main
    from extractors.rag.expert import RagEncoder
    from tests.proc_helpers import timed_run

    results = tmp_path / "results"
    notes = [*NOTES, f"{CANARY} {FAIL_MARK} patient text"]
    mpath = _manifest(tmp_path, "text", notes)
    manifest = results / "canary" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(mpath.read_bytes())
    real_call = RagEncoder.__call__

    def quoting_call(self: RagEncoder, texts: list[str]):
        if any(FAIL_MARK in t for t in texts):
            raise ValueError(f"cannot encode batch {texts!r}")
        return real_call(self, texts)

    monkeypatch.setattr(RagEncoder, "__call__", quoting_call)  # inherited by the forked child
    cfg = json.dumps({"results": str(results), "rag": rag_kb["section"],
                      "datasets": {"canary": {"modalities": {"m": ["rag"]}}}})  # fmt: skip
    bridge, out = results / "canary" / "bridge" / "m.parquet", tmp_path / "emb" / "rag.parquet"
    kp = rag_kb["kp"]
    log = tmp_path / "rag.log"
    argv = [
        ["bridge", "--config", cfg, "--dataset", "canary", "--modality", "m", "--out", str(bridge)],
        ["embed", "--config", cfg, "--dataset", "canary", "--modality", "m", "--bridge",
         str(bridge), "--index-dir", str(kp.root), "--projection", str(kp.projection),
         "--out", str(out)],
    ]  # fmt: skip
    for args in argv:
        rc, _ = timed_run(lambda args=args: main(args), log, DEBUG_ENV)
        assert rc == 0, log.read_text()[-3000:]
    text = log.read_text(errors="replace")
    assert "canary/m/rag" in text and "failed (ValueError)" in text
    _assert_clean(text, "the RAG log")
    data = read_cache(out)
    failed = data.status == "failed"
    assert failed.sum() == 2  # the empty note (bridge) and the one the chain failed on
    assert "ValueError in the RAG chain (text of" in " ".join(map(str, data.reason[failed]))
    assert data.ok.sum() == len(notes) - 3  # one missing
    _assert_clean_files(out.parent)  # cache and provenance


def test_training_logs_never_print_note_text(tmp_path: Path) -> None:
    """Train MedMIX (with distillation) and AdaCoMed on a cohort whose manifest holds canary
    notes: the training log at DEBUG and every file of the run folders stay clean."""
    from cohorts.manifest import read_manifest
    from fusion.__main__ import main
    from medmix.config import dataset_paths
    from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic
    from tests.proc_helpers import timed_run

    fusion = FUSION | {"max_epochs": 3, "patience": 2, "d": 8, "adapter_bottleneck": 4,
                       "lambda_kd": 0.5}  # fmt: skip
    cfg = make_config(tmp_path / "results", fusion)
    write_synthetic(cfg, n=120, teacher_dim=4)
    paths = dataset_paths(cfg, DATASET)
    df, meta = read_manifest(paths.manifest)
    for mod in meta.modalities:  # the notes the embeddings were made from
        df[mod] = [None if v is None else f"{NOTE} #{i}" for i, v in enumerate(df[mod])]
    write_manifest(df, paths.manifest, meta)
    assert CANARY.encode() in paths.manifest.read_bytes()
    log = tmp_path / "train.log"
    for method in ("medmix", "adacomed"):
        argv = ["train", "--config", json.dumps(cfg), "--dataset", DATASET, "--method", method,
                "--seeds", "0"]  # fmt: skip
        rc, _ = timed_run(lambda argv=argv: main(argv), log, DEBUG_ENV)
        assert rc == 0, log.read_text()[-3000:]
    text = log.read_text(errors="replace")
    assert "INFO medmix.fusion" in text  # the log is there (written at level DEBUG)
    _assert_clean(text, "the training log")
    _assert_clean_files(paths.root / "runs")
