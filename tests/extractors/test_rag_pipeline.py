"""The RAG chain on a tiny cohort: EHR serialisation, bridging, no leakage, soft prompt, CLI.

Models are tiny randomly initialised MedCPT (BertModel) and Qwen2 instances; the knowledge base
is the shipped demo base (real MedlinePlus topics).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import CacheMeta, CacheRecords, read_cache, write_cache
from extractors.rag.bridge import (
    BridgeError,
    ehr_fields,
    format_value,
    nearest_report,
    run_bridge,
    serialize_ehr,
    write_bridge,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_KB = REPO / "resources" / "knowledge" / "medlineplus-demo" / "docs.parquet"
TINY_BERT = {
    "random_init": True,
    "model_class": "BertModel",
    "config": {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    },
    "batch_size": 64,
}
TINY_QWEN = {
    "random_init": True,
    "model_class": "Qwen2Model",
    "config": {
        "hidden_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 48,
    },
    "max_length": 128,
}
REPORTS = [
    "Cardiomegaly with small bilateral pleural effusions.",
    "Right lower lobe pneumonia. No pneumothorax.",
    "Normal heart size. Lungs are clear.",
    "Hyperinflated lungs consistent with emphysema.",
    "Pulmonary edema and cardiomegaly, likely heart failure.",
]


# -- builders ---------------------------------------------------------------------------------


def make_cohort(root: Path, n: int = 24, seed: int = 0, dataset: str = "tinyrag") -> dict:
    """A manifest (frontal image, report text, EHR time series) + a fake image-expert cache."""
    rng = np.random.default_rng(seed)
    (root / "ts").mkdir(parents=True, exist_ok=True)
    rows, emb = [], []
    for i in range(n):
        sid = f"s{i:02d}"
        ts = None
        if i % 7 != 5:
            ts = f"ts/{sid}.parquet"
            pd.DataFrame(
                {
                    "hour": [0.0, 1.0, 2.0],
                    "heart_rate": [80.0 + i, 90.0, np.nan],
                    "sbp": [120.0, np.nan, 110.5],
                    "lactate": [np.nan] * 3,
                }
            ).to_parquet(root / ts)
        rows.append(
            {
                "sample_id": sid,
                "patient_id": f"p{i // 2:02d}"
                if i < 8
                else f"p{i:02d}",  # two train patients with two studies each
                "split": "train" if i < 12 else ("val", "test")[i % 2],
                "frontal": None if i % 5 == 4 else f"img/{sid}.png",
                "report": None if i % 6 == 1 else REPORTS[i % 5] + f" Study {i}.",
                "ehr": ts,
                "label_y": int(rng.integers(0, 2)),
            }
        )
        emb.append(rng.normal(size=8))
    meta = ManifestMeta(
        dataset=dataset,
        task_type="binary",
        modalities={"frontal": "image", "report": "text", "ehr": "timeseries"},
        labels=["y"],
        adapter="test",
        root=str(root),
    )
    manifest = write_manifest(
        pd.DataFrame(rows), root / "results" / dataset / "manifest.parquet", meta
    )
    status = ["ok" if r["frontal"] else "missing" for r in rows]
    cache = write_cache(
        root / "results" / dataset / "embeddings" / "frontal" / "radiomics.parquet",
        CacheRecords(
            [r["sample_id"] for r in rows],
            np.asarray(emb, np.float32),
            status,
            [None if s == "ok" else "modality not recorded" for s in status],
        ),
        CacheMeta(
            expert="radiomics",
            model_id="offline:radiomics",
            dim=8,
            pooling="none",
            preprocess_hash="test",
        ),
    )
    return {
        "manifest": manifest,
        "cache": cache,
        "rows": rows,
        "meta": meta,
        "emb": np.asarray(emb, np.float32),
    }


def rewrite_cohort(c: dict, rows: list[dict], emb: np.ndarray) -> None:
    write_manifest(pd.DataFrame(rows), c["manifest"], c["meta"])
    status = ["ok" if r["frontal"] else "missing" for r in rows]
    write_cache(
        c["cache"],
        CacheRecords(
            [r["sample_id"] for r in rows],
            emb,
            status,
            [None if s == "ok" else "modality not recorded" for s in status],
        ),
        CacheMeta(
            expert="radiomics",
            model_id="offline:radiomics",
            dim=8,
            pooling="none",
            preprocess_hash="test",
        ),
    )


def rag_cfg(root: Path, k: int = 3) -> dict:
    return {
        "results": str(root / "results"),
        "datasets": {
            "tinyrag": {
                "modalities": {"frontal": ["radiomics", "rag"], "report": ["rag"], "ehr": ["rag"]}
            }
        },
        "rag": {
            "knowledge": {"name": "demo-test", "source": str(DEMO_KB)},
            "k": k,
            "query_encoder": TINY_BERT,
            "article_encoder": {**TINY_BERT, "max_length": 64},
            "llm": TINY_QWEN,
            "shard_size": 8,
            "batch_size": 8,
        },
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Index + projection over the demo knowledge base, built once for the module."""
    from extractors.rag.expert import knowledge_paths, run_index, run_projection
    from medmix.rag_settings import rag_config

    root = tmp_path_factory.mktemp("ragkb")
    cfg = rag_cfg(root)
    rag = rag_config(cfg["rag"])
    kp = knowledge_paths(cfg["results"], rag)
    run_index(rag, kp.root, threads=1)
    run_projection(rag, kp.root, kp.projection)
    return {"rag": rag, "kp": kp}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- EHR serialisation ------------------------------------------------------------------------


def test_ehr_serialisation_order_and_format() -> None:
    fields = [("heart_rate", "bpm"), ("sbp", "mmHg"), ("temperature", "degC"), ("ph", "units")]
    times = np.array([0.0, 1.0, 2.0, 30.0])
    values = {
        "ph": np.array([7.41, np.nan, 7.3512, np.nan]),
        "temperature": np.full(4, np.nan),  # never observed -> omitted
        "sbp": np.array([120.0, 100.0, np.nan, 140.0]),
        "heart_rate": np.array([88.0, 92.5, np.nan, 101.0]),
        "zeta_extra": np.array(
            [1.0, np.nan, np.nan, np.nan]
        ),  # not in the table -> after it, sorted
        "alpha_extra": np.array([12345.678, np.nan, np.nan, np.nan]),
    }
    text = serialize_ehr(times, values, fields=fields)
    assert (
        text
        == "heart_rate: 101 bpm; sbp: 140 mmHg; ph: 7.351 units; alpha_extra: 12350; zeta_extra: 1"
    )
    assert serialize_ehr(times, values, fields=fields, aggregation="mean").startswith(
        "heart_rate: 93.83 bpm; sbp: 120 mmHg"
    )
    assert serialize_ehr(times, values, fields=fields, aggregation="min").startswith(
        "heart_rate: 88 bpm; sbp: 100 mmHg; ph: 7.351"
    )
    per = serialize_ehr(
        times,
        values,
        fields=fields,
        aggregation="last",
        per_variable={"sbp": "max"},
        window_hours=[0, 24],
    )
    assert per.startswith("heart_rate: 92.5 bpm; sbp: 120 mmHg; ph: 7.351 units")
    with pytest.raises(BridgeError, match="unknown aggregation"):
        serialize_ehr(times, values, fields=fields, aggregation="median")
    from extractors.base import SampleError

    with pytest.raises(SampleError, match="no observed"):
        serialize_ehr(times, {"heart_rate": np.full(4, np.nan)}, fields=fields)
    assert (
        format_value(0.0) == "0" and format_value(-0.5) == "-0.5" and format_value(37.25) == "37.25"
    )


def test_ehr_fixed_field_order_is_the_46_variable_table() -> None:
    from cohorts.adapters.ehr_variables import VARIABLES

    fields = ehr_fields()
    assert len(fields) == 46 and [n for n, _ in fields] == [v.name for v in VARIABLES]
    rng = np.random.default_rng(1)
    names = [n for n, _ in fields]
    shuffled = {
        n: rng.normal(size=3) + 50 for n in rng.permutation(names)
    }  # dict order is irrelevant
    parts = serialize_ehr(np.arange(3.0), shuffled).split("; ")
    assert [p.split(":")[0] for p in parts] == names
    assert parts[0].endswith(" bpm") and parts[1].endswith(" mmHg")  # heart_rate, sbp with units


def test_ehr_fio2_fraction_is_written_in_percent(tmp_path: Path) -> None:
    """FiO2 is a % variable whose convention allows a fraction (``fraction_to_percent``, as the
    MIMIC adapters convert it): values <= 1 are fractions, written in %."""
    from cohorts.demo.ehr import simulate_stay, write_parquet
    from extractors.rag.bridge import serialize_ehr_file

    fields = [("heart_rate", "bpm"), ("fio2", "%")]
    times = np.arange(3.0)
    values = {"heart_rate": np.array([80.0, 82.0, np.nan]), "fio2": np.array([0.4, np.nan, 0.348])}
    assert serialize_ehr(times, values, fields=fields) == "heart_rate: 82 bpm; fio2: 34.8 %"
    mixed = {"fio2": np.array([0.5, 60.0, 1.0])}  # fraction, percent, fraction (100 %)
    assert serialize_ehr(times, mixed, fields=fields, aggregation="mean") == "fio2: 70 %"
    assert serialize_ehr(times, mixed, fields=fields, aggregation="min") == "fio2: 50 %"
    assert serialize_ehr(times, mixed, fields=fields, percent_from_fraction=()) == "fio2: 1 %"
    # the demo generator charts FiO2 as a fraction (0.21-1.0); the bridge text says 21-100 %
    stay = simulate_stay({"resp": 1.0}, 48, np.random.default_rng(3))
    write_parquet(tmp_path / "stay.parquet", stay)
    last = float(stay["fio2"].dropna().iloc[-1])
    assert 0.21 <= last <= 1.0
    text = serialize_ehr_file(tmp_path / "stay.parquet", {"aggregation": "last"})
    fio2 = next(p for p in text.split("; ") if p.startswith("fio2: "))
    assert fio2 == f"fio2: {format_value(last * 100)} %" and 21 <= float(fio2.split()[1]) <= 100


# -- bridging and leakage ---------------------------------------------------------------------


def test_rag_config_defaults_and_bridge_choice() -> None:
    from extractors.rag.bridge import bridge_config
    from medmix.rag_settings import rag_config

    rag = rag_config({"k": 7, "bridges": {"ct": {"type": "merlin"}}, "llm": {"random_init": True}})
    assert rag["k"] == 7 and rag["query_encoder"]["model_id"] == "ncbi/MedCPT-Query-Encoder"
    assert rag["llm"]["model_id"] == "Qwen/Qwen2-0.5B" and rag["llm"]["random_init"] is True
    assert (
        bridge_config(rag, "ct", "volume")["type"] == "merlin"
    )  # a modality name wins over its kind
    assert bridge_config(rag, "abdomen", "volume")["type"] == "nearest-report"
    assert bridge_config(rag, "note", "text")["type"] == "passthrough"
    assert rag_config({"query_encoder": {"type": "sentence-transformers"}})["query_encoder"] == {
        "type": "sentence-transformers"
    }
    with pytest.raises(ValueError, match="unknown key"):
        rag_config({"top_k": 5})
    with pytest.raises(ValueError, match="k must be"):
        rag_config({"k": 0})


def test_bridges_per_kind(tmp_path: Path) -> None:
    c = make_cohort(tmp_path)
    text, _ = run_bridge(c["manifest"], "report", {"type": "passthrough"})
    assert (
        text.loc[0, "text"] == REPORTS[0] + " Study 0." and text.loc[0, "source"] == "passthrough"
    )
    assert text.loc[1, "status"] == "missing" and pd.isna(text.loc[1, "text"])
    ehr, meta = run_bridge(c["manifest"], "ehr", {"type": "ehr-serialize"})
    assert (
        ehr.loc[0, "text"] == "heart_rate: 90 bpm; sbp: 110.5 mmHg"
    )  # last values; lactate never observed
    assert ehr.loc[5, "status"] == "missing" and len(meta["fields"]) == 46
    img, meta = run_bridge(
        c["manifest"], "frontal", {"type": "nearest-report"}, image_cache=c["cache"]
    )
    assert meta["report_modality"] == "report" and meta["image_expert"] == "radiomics"
    assert img.loc[4, "status"] == "missing"
    with pytest.raises(BridgeError, match="passthrough bridge needs a text modality"):
        run_bridge(c["manifest"], "ehr", {"type": "passthrough"})


def test_nearest_report_only_from_training_split_and_never_own_patient(tmp_path: Path) -> None:
    c = make_cohort(tmp_path)
    frame, _ = run_bridge(
        c["manifest"], "frontal", {"type": "nearest-report"}, image_cache=c["cache"]
    )
    rows = {r["sample_id"]: r for r in c["rows"]}
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == sum(r["frontal"] is not None for r in c["rows"])
    for sid, source, text in zip(ok["sample_id"], ok["source"], ok["text"], strict=True):
        nb = source.removeprefix("nearest-report:")
        assert rows[nb]["split"] == "train"
        assert rows[nb]["patient_id"] != rows[sid]["patient_id"]
        assert text == rows[nb]["report"]
    # the neighbour is the cosine-nearest eligible training sample
    unit = c["emb"] / np.linalg.norm(c["emb"], axis=1, keepdims=True)
    sid = "s15"
    eligible = [
        r["sample_id"] for r in c["rows"] if r["split"] == "train" and r["frontal"] and r["report"]
    ]
    best = max(eligible, key=lambda e: float(unit[int(e[1:])] @ unit[15]))
    assert frame.set_index("sample_id").loc[sid, "source"] == f"nearest-report:{best}"
    with pytest.raises(BridgeError, match="no labels"):
        nearest_report(
            pd.DataFrame(
                {"sample_id": ["a"], "patient_id": ["p"], "split": ["train"], "label_y": [1]}
            ),
            ["a"],
            np.ones((1, 2)),
            np.array([True]),
            ["r"],
        )


def test_nearest_report_external_target_takes_the_source_library(tmp_path: Path) -> None:
    """An external-validation target's reports come from the SOURCE cohort's training split
    (one library for both cohorts, so the RAG branch embeds both in one space)."""
    src = make_cohort(tmp_path / "src", seed=0, dataset="src")
    tgt = make_cohort(tmp_path / "tgt", seed=1, dataset="tgt")
    frame, meta = run_bridge(
        tgt["manifest"], "frontal", {"type": "nearest-report"}, image_cache=tgt["cache"],
        fit_manifest=src["manifest"], fit_image_cache=src["cache"],
    )  # fmt: skip
    assert meta["library_dataset"] == "src"
    src_rows = {r["sample_id"]: r for r in src["rows"]}
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == sum(r["frontal"] is not None for r in tgt["rows"])
    src_unit = src["emb"] / np.linalg.norm(src["emb"], axis=1, keepdims=True)
    tgt_unit = tgt["emb"] / np.linalg.norm(tgt["emb"], axis=1, keepdims=True)
    eligible = [
        r["sample_id"]
        for r in src["rows"]
        if r["split"] == "train" and r["frontal"] and r["report"]
    ]
    for sid, source, text in zip(ok["sample_id"], ok["source"], ok["text"], strict=True):
        nb = source.removeprefix("nearest-report:")
        assert src_rows[nb]["split"] == "train" and text == src_rows[nb]["report"]
        # cosine-nearest in the source library; the same patient id in another cohort is
        # another person, so it is not excluded
        best = max(eligible, key=lambda e: float(src_unit[int(e[1:])] @ tgt_unit[int(sid[1:])]))
        assert nb == best
    own, own_meta = run_bridge(
        tgt["manifest"], "frontal", {"type": "nearest-report"}, image_cache=tgt["cache"]
    )
    assert own_meta["library_dataset"] == "tgt"
    assert not own.loc[own["status"] == "ok", "source"].equals(ok["source"])
    with pytest.raises(BridgeError, match="fit-image-cache"):
        run_bridge(tgt["manifest"], "frontal", {"type": "nearest-report"},
                   image_cache=tgt["cache"], fit_manifest=src["manifest"])  # fmt: skip


def test_bridge_does_not_see_labels_or_other_test_samples(tmp_path: Path) -> None:
    c = make_cohort(tmp_path)
    before, _ = run_bridge(
        c["manifest"], "frontal", {"type": "nearest-report"}, image_cache=c["cache"]
    )
    rows = [dict(r) for r in c["rows"]]
    emb = c["emb"].copy()
    target = "s15"
    for i, r in enumerate(rows):
        r["label_y"] = 1 - r["label_y"]  # every label flipped
        if r["split"] == "test" and r["sample_id"] != target:
            r["report"] = "Completely different text."
            emb[i] = -emb[i] * 3 + 1  # other test images changed
    rewrite_cohort(c, rows, emb)
    after, _ = run_bridge(
        c["manifest"], "frontal", {"type": "nearest-report"}, image_cache=c["cache"]
    )
    b, a = before.set_index("sample_id"), after.set_index("sample_id")
    train_val = [r["sample_id"] for r in rows if r["split"] != "test"]
    pd.testing.assert_frame_equal(b.loc[train_val + [target]], a.loc[train_val + [target]])


# -- index, retrieval, soft prompt ------------------------------------------------------------


def test_index_is_built_from_the_knowledge_base_alone(built: dict, tmp_path: Path) -> None:
    from extractors.rag.expert import run_index, run_projection
    from extractors.rag.index import load_index
    from extractors.rag.knowledge import read_docs

    kp, rag = built["kp"], built["rag"]
    ki = load_index(kp.root)
    kb = read_docs(DEMO_KB)
    assert (
        ki.docs["doc_id"].tolist() == kb["doc_id"].tolist()
        and ki.docs["text"].tolist() == kb["text"].tolist()
    )
    assert set(ki.meta) >= {
        "name",
        "docs_hash",
        "article_encoder",
        "index_type",
    } and "dataset" not in json.dumps(ki.meta)
    assert np.allclose(np.linalg.norm(ki.embeddings, axis=1), 1.0, atol=1e-5)
    # with a cohort (and its labels) lying around, a rebuild is the same index and the same
    # projection, byte for byte (index.json differs only in its created_at stamp)
    make_cohort(tmp_path)
    run_index(rag, tmp_path / "again", threads=1)
    assert sha(tmp_path / "again" / "index.faiss") == sha(kp.index)
    assert sha(tmp_path / "again" / "docs.parquet") == sha(kp.docs)
    again = json.loads((tmp_path / "again" / "index.json").read_text())
    first = json.loads(kp.meta.read_text())
    assert {k: v for k, v in again.items() if k != "created_at"} == {
        k: v for k, v in first.items() if k != "created_at"
    }
    run_projection(rag, tmp_path / "again", tmp_path / "again" / "projection.safetensors")
    assert sha(tmp_path / "again" / "projection.safetensors") == sha(kp.projection)


def test_retrieval_exact_and_selectable_index_types(built: dict) -> None:
    from extractors.rag.index import load_index, make_faiss_index

    ki = load_index(built["kp"].root)
    q = ki.embeddings[:5]
    scores, idx = ki.search(q, 3)
    assert (idx[:, 0] == np.arange(5)).all() or np.allclose(scores[:, 0], 1.0, atol=1e-5)
    exact = np.sort(ki.embeddings @ q.T, axis=0)[::-1][:3].T
    assert np.allclose(scores, exact, atol=1e-5)
    for kind in ("ivf", "hnsw"):  # probing every cell / a wide beam is exact on 229 docs
        index, params = make_faiss_index(ki.embeddings, kind=kind, nlist=4, nprobe=4)
        s, _ = index.search(np.ascontiguousarray(q), 3)
        assert np.allclose(s, exact, atol=1e-5)
        assert params == (
            {"nlist": 4, "nprobe": 4, "seed": 1234}
            if kind == "ivf"
            else {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128}
        )


def test_doc_targets_are_mean_input_embeddings_of_the_real_tokens() -> None:
    """The projection's regression target: the mean of Qwen2's ``embed_tokens`` rows over the
    document's own tokens (no special tokens, never padding), whatever the batch."""
    from extractors.rag.softprompt import SoftPromptEncoder

    llm = SoftPromptEncoder({**TINY_QWEN, "max_length": 12})
    model, tok = llm._load()
    assert type(model).__name__ == "Qwen2Model" and model.config.hidden_size == 24
    titles = ["Asthma", "Kidney cancer", "Sepsis"]
    texts = [
        "Asthma narrows the airways.",
        "Renal cell carcinoma is the most common kidney cancer in adults, often found by imaging.",
        "A life-threatening response to infection.",
    ]
    got = llm.doc_targets(titles, texts)
    table = model.embed_tokens.weight.detach().numpy().astype(np.float64)
    lengths = []
    for i, (title, text) in enumerate(zip(titles, texts, strict=True)):
        ids = tok(f"{title}. {text}", add_special_tokens=False)["input_ids"][:12]
        assert tok.cls_token_id not in ids and tok.sep_token_id not in ids
        lengths.append(len(ids))
        assert np.allclose(got[i], table[ids].mean(axis=0), atol=1e-6)
        assert np.allclose(llm.doc_targets([title], [text])[0], got[i], atol=1e-6)  # batch-free
    assert len(set(lengths)) > 1 and max(lengths) == 12  # padded batch, one doc truncated


def test_soft_prompt_deterministic_gradient_free(built: dict) -> None:
    from extractors.rag.index import load_index
    from extractors.rag.softprompt import Projection, SoftPromptEncoder, fit_projection

    proj = Projection.load(built["kp"].projection)
    assert (
        proj.meta["fitted_on"].startswith("knowledge base documents only")
        and proj.meta["n_docs"] == 229
    )
    ki = load_index(built["kp"].root)
    llm = SoftPromptEncoder(built["rag"]["llm"])
    texts = [
        "Cardiomegaly with effusion.",
        "heart_rate: 90 bpm; sbp: 110.5 mmHg",
        "Lungs are clear, no acute disease seen today.",
    ]
    pooled = ki.embeddings[[0, 5, 9]]
    a = llm.encode(texts, pooled, proj)
    b = llm.encode(texts, pooled, proj)
    assert a.shape == (3, 24) and a.dtype == np.float32 and np.array_equal(a, b)
    single = llm.encode(texts[1:2], pooled[1:2], proj)  # padding/batching does not change a sample
    assert np.allclose(single[0], a[1], atol=1e-5)
    assert not np.allclose(
        llm.encode(texts[:1], pooled[1:2], proj), a[:1], atol=1e-4
    )  # the soft token matters
    model = llm._load()[0]
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert torch.is_grad_enabled()  # inference_mode was scoped
    # the least-squares fit recovers an exact linear map
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    w, bias = rng.normal(size=(6, 4)), rng.normal(size=4)
    y = x @ w + bias
    fit = fit_projection(x, y, ridge=0.0)
    assert (
        np.allclose(fit.weight, w, atol=1e-8)
        and np.allclose(fit(x), y, atol=1e-5)
        and fit.meta["r2"] > 0.999999
    )
    assert fit_projection(x, y).meta["r2"] > 0.9999  # the default relative ridge barely moves it


def test_chain_via_cli_and_no_leakage(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from extractors.rag.__main__ import main
    from extractors.rag.expert import read_provenance

    c = make_cohort(tmp_path)
    cfg = rag_cfg(tmp_path)
    cfg_json = json.dumps(cfg)
    kp = built["kp"]
    index_hash = sha(kp.index)
    results = tmp_path / "results" / "tinyrag"

    def run_all(tag: str) -> None:
        for m in ("frontal", "report", "ehr"):
            assert (
                main(
                    [
                        "bridge",
                        "--config",
                        cfg_json,
                        "--dataset",
                        "tinyrag",
                        "--modality",
                        m,
                        "--out",
                        str(results / tag / f"bridge-{m}.parquet"),
                    ]
                )
                == 0
            )
            assert (
                main(
                    [
                        "embed",
                        "--config",
                        cfg_json,
                        "--dataset",
                        "tinyrag",
                        "--modality",
                        m,
                        "--bridge",
                        str(results / tag / f"bridge-{m}.parquet"),
                        "--index-dir",
                        str(kp.root),
                        "--projection",
                        str(kp.projection),
                        "--out",
                        str(results / tag / m / "rag.parquet"),
                    ]
                )
                == 0
            )

    run_all("a")
    for m in ("frontal", "report", "ehr"):
        data = read_cache(results / "a" / m / "rag.parquet")
        bridge = pd.read_parquet(results / "a" / f"bridge-{m}.parquet")
        assert data.meta.expert == "rag" and data.meta.dim == 24 and data.meta.modality == m
        assert data.sample_ids.tolist() == bridge["sample_id"].tolist()
        assert data.status.tolist() == bridge["status"].tolist()
        assert data.ok.sum() > 0 and np.isfinite(data.embeddings).all()
        assert (
            data.meta.extra["chain"]["k"] == 3
            and data.meta.extra["chain"]["knowledge_base"] == "demo-test"
        )
        prov = read_provenance(results / "a" / m / "rag.provenance.parquet")
        ok = prov[data.ok]
        assert ok["doc_ids"].map(len).eq(3).all() and ok["scores"].map(len).eq(3).all()
        assert prov[~data.ok]["doc_ids"].isna().all()
    capsys.readouterr()
    assert (
        main(
            [
                "show",
                "--provenance",
                str(results / "a" / "report" / "rag.provenance.parquet"),
                "--sample-id",
                "s00",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert '"bridge_source": "passthrough"' in shown and "medquad:" in shown

    # Flip every label and change every other test sample (report, EHR, image): a test sample's
    # bridge, retrieval and embedding do not move; the shared index is untouched.
    rows = [dict(r) for r in c["rows"]]
    emb = c["emb"].copy()
    target = "s15"
    for i, r in enumerate(rows):
        r["label_y"] = 1 - r["label_y"]
        if r["split"] == "test" and r["sample_id"] != target:
            r["report"] = "Massive unrelated finding in a different organ."
            emb[i] = emb[i][::-1] * 2
            if r["ehr"]:
                pd.DataFrame({"hour": [0.0], "heart_rate": [150.0], "sbp": [60.0]}).to_parquet(
                    tmp_path / r["ehr"]
                )
    rewrite_cohort(c, rows, emb)
    run_all("b")
    for m in ("frontal", "report", "ehr"):
        pa_, pb = (
            read_provenance(results / t / m / "rag.provenance.parquet").set_index("sample_id")
            for t in ("a", "b")
        )
        assert pa_.loc[target, "doc_ids"].tolist() == pb.loc[target, "doc_ids"].tolist()
        assert np.allclose(pa_.loc[target, "scores"], pb.loc[target, "scores"], atol=1e-6)
        ea, eb = (read_cache(results / t / m / "rag.parquet") for t in ("a", "b"))
        ia, ib = list(ea.sample_ids).index(target), list(eb.sample_ids).index(target)
        assert ea.status[ia] == "ok" and np.allclose(
            ea.embeddings[ia], eb.embeddings[ib], atol=1e-5
        )
    assert sha(kp.index) == index_hash


def test_embed_resumes_identically(
    built: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extractors.cache import ShardedCacheWriter
    from extractors.rag import expert as rag_expert

    c = make_cohort(tmp_path)
    frame, meta = run_bridge(c["manifest"], "report", {"type": "passthrough"})
    bridge = write_bridge(frame, tmp_path / "bridge.parquet", meta)
    kp = built["kp"]
    ref = rag_expert.run_embed(
        built["rag"], bridge, kp.root, kp.projection, tmp_path / "ref.parquet", shard_size=8
    )
    assert ref.ok == int((frame["status"] == "ok").sum())

    out = tmp_path / "emb" / "rag.parquet"
    real_write = ShardedCacheWriter.write_shard

    def crash_on_third(self: ShardedCacheWriter, index: int, records: CacheRecords) -> None:
        if index == 2:
            raise KeyboardInterrupt("killed")
        real_write(self, index, records)

    monkeypatch.setattr(ShardedCacheWriter, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        rag_expert.run_embed(built["rag"], bridge, kp.root, kp.projection, out, shard_size=8)
    assert not out.exists()
    monkeypatch.setattr(ShardedCacheWriter, "write_shard", real_write)
    calls = []
    real_call = rag_expert.RagEncoder.__call__
    monkeypatch.setattr(
        rag_expert.RagEncoder,
        "__call__",
        lambda self, texts: calls.append(len(texts)) or real_call(self, texts),
    )
    again = rag_expert.run_embed(built["rag"], bridge, kp.root, kp.projection, out, shard_size=8)
    n_last = sum(frame["status"].iloc[16:24] == "ok")
    assert calls == [n_last]  # only the unfinished shard was computed
    assert again.ok == ref.ok and np.array_equal(
        read_cache(out).embeddings, read_cache(tmp_path / "ref.parquet").embeddings
    )
    assert read_provenance_equal(out, tmp_path / "ref.parquet")


def read_provenance_equal(a: Path, b: Path) -> bool:
    from extractors.rag.expert import provenance_path, read_provenance

    pa_, pb = read_provenance(provenance_path(a)), read_provenance(provenance_path(b))
    return (
        pa_["doc_ids"].map(lambda v: None if v is None else list(v)).tolist()
        == pb["doc_ids"].map(lambda v: None if v is None else list(v)).tolist()
    )
