"""Stage 1: turn every modality into text (paper App. B, "report bridging").

Output, one row per manifest sample, ``results/{dataset}/bridge/{modality}.parquet``:
``sample_id``, ``text`` (null unless ok), ``source`` (what produced the text), ``status``
(ok / missing / failed) and ``reason`` (null when ok).

Bridges by input kind (``rag.bridges`` in the config; a modality name overrides its kind):

* ``passthrough`` (text): the note itself, whitespace-normalised.
* ``ehr-serialize`` (timeseries): ``variable_name: value unit; …`` over a fixed field order —
  the 46 variables of ``cohorts.adapters.ehr_variables`` in their table order, then any other
  column of the file in sorted order. Each variable is aggregated over the window (default the
  whole file; ``window_hours: [lo, hi)`` restricts it) with ``aggregation`` (last / mean / min /
  max; ``per_variable`` overrides it for single variables); variables without an observed value
  are omitted; values are written with ``precision`` significant digits, without exponent.
  Observations <= 1 of a ``fraction_to_percent`` variable (FiO2) are fractions, written in %.
* ``nearest-report`` (image, volume, slide): the offline bridge, no weights needed. It reads an
  image expert's cached embedding of this modality and returns the report text (the dataset's
  text modality) of the most cosine-similar *training-split* sample with a report, never one of
  the sample's own patient. It sees sample ids, patient ids, splits, the image embeddings and the
  training reports — never a label. A stand-in for report generation, labelled as such.
* ``maira2`` (chest X-ray), ``merlin`` (CT), ``histgen`` (WSI): report-generation models, loaded
  under the policy of ``extractors.loading`` (MAIRA-2's remote code only when its config opts in,
  at a pinned revision; Merlin built from merlin-vlm's classes without their downloads, see
  ``MerlinBridge``); they raise ``LoadingError`` naming what is missing when their weights (or
  code) are absent, and one sample that fails to generate is ``failed`` with its reason.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from extractors.base import SampleError
from extractors.loading import LoadingError, ModelSpec, load_state_dict, resolve_dir, resolve_file
from medmix.io import atomic_path

log = logging.getLogger("medmix.rag")

BRIDGE_COLUMNS = ("sample_id", "text", "source", "status", "reason")
META_KEY = b"medmix.bridge"
AGGREGATIONS = ("last", "mean", "min", "max")
BRIDGE_TYPES = ("passthrough", "ehr-serialize", "nearest-report", "maira2", "merlin", "histgen")


class BridgeError(ValueError):
    pass


@dataclass
class BridgeRows:
    sample_ids: list[str]
    text: list[str | None]
    source: list[str | None]
    status: list[str]
    reason: list[str | None]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "sample_id": self.sample_ids,
                "text": self.text,
                "source": self.source,
                "status": self.status,
                "reason": self.reason,
            }
        )


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"[:300]


# -- text -------------------------------------------------------------------------------------


def passthrough(value: Any) -> str:
    if _is_missing(value):
        raise SampleError("empty text")
    text = " ".join(str(value).split())
    if not text:
        raise SampleError("empty text")
    return text


# -- EHR serialisation ------------------------------------------------------------------------


def ehr_fields() -> list[tuple[str, str]]:
    """(name, unit) of the 46 EHR variables in their fixed order (``ehr_variables.VARIABLES``)."""
    try:
        from cohorts.adapters.ehr_variables import VARIABLES
    except ImportError:  # pragma: no cover - the adapters ship with the package
        return []
    return [(v.name, v.unit) for v in VARIABLES]


def ehr_percent_from_fraction() -> set[str]:
    """Variables recorded in % whose convention allows a fraction (``fraction_to_percent``: FiO2)."""
    try:
        from cohorts.adapters.ehr_variables import VARIABLES
    except ImportError:  # pragma: no cover - the adapters ship with the package
        return set()
    return {v.name for v in VARIABLES if v.fraction_to_percent}


def fractions_to_percent(values: np.ndarray) -> np.ndarray:
    """Values <= 1 read as fractions and written in % (as the MIMIC adapters convert FiO2)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values <= 1.0), values * 100.0, values)


def format_value(value: float, precision: int = 4) -> str:
    """``precision`` significant digits, positional (no exponent), trailing zeros trimmed."""
    if value == 0:
        return "0"
    return np.format_float_positional(
        float(value), precision=precision, unique=False, fractional=False, trim="-"
    )


def aggregate(values: np.ndarray, how: str) -> float | None:
    """One number from a variable's values in time order (NaN = not observed); None if none."""
    obs = values[np.isfinite(values)]
    if obs.size == 0:
        return None
    if how == "last":
        return float(obs[-1])
    if how == "mean":
        return float(obs.mean())
    if how == "min":
        return float(obs.min())
    if how == "max":
        return float(obs.max())
    raise BridgeError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")


def serialize_ehr(
    times: np.ndarray,
    values: Mapping[str, np.ndarray],
    fields: Sequence[tuple[str, str]] | None = None,
    aggregation: str = "last",
    per_variable: Mapping[str, str] | None = None,
    window_hours: Sequence[float] | None = None,
    precision: int = 4,
    percent_from_fraction: Collection[str] | None = None,
) -> str:
    """``name: value unit; …`` in the fixed field order; unobserved variables omitted.

    ``percent_from_fraction`` (default: the table's ``fraction_to_percent`` variables, FiO2):
    observations <= 1 of these variables are fractions and are converted to % before
    aggregating, so the text never says ``fio2: 0.35 %``.
    """
    fields = list(ehr_fields() if fields is None else fields)
    to_percent = set(
        ehr_percent_from_fraction() if percent_from_fraction is None else percent_from_fraction
    )
    per_variable = dict(per_variable or {})
    for how in [aggregation, *per_variable.values()]:
        if how not in AGGREGATIONS:
            raise BridgeError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")
    known = {name for name, _ in fields}
    order = list(fields) + [(name, "") for name in sorted(values) if name not in known]
    times = np.asarray(times, dtype=np.float64)
    keep = np.ones(times.shape, dtype=bool)
    if window_hours is not None:
        lo, hi = float(window_hours[0]), float(window_hours[1])
        keep = (times >= lo) & (times < hi)
    parts = []
    for name, unit in order:
        if name not in values:
            continue
        series = np.asarray(values[name], dtype=np.float64)[keep]
        if name in to_percent:
            series = fractions_to_percent(series)
        v = aggregate(series, per_variable.get(name, aggregation))
        if v is None:
            continue
        parts.append(f"{name}: {format_value(v, precision)}" + (f" {unit}" if unit else ""))
    if not parts:
        raise SampleError("no observed EHR value in the window")
    return "; ".join(parts)


def serialize_ehr_file(path: str | Path, cfg: Mapping[str, Any]) -> str:
    from extractors.readers.timeseries import read_series

    series = read_series(path, time_column=cfg.get("time_column", "hour"))
    return serialize_ehr(
        series.times,
        series.values,
        aggregation=cfg.get("aggregation", "last"),
        per_variable=cfg.get("per_variable"),
        window_hours=cfg.get("window_hours"),
        precision=int(cfg.get("precision", 4)),
    )


# -- nearest-neighbour report bridge (offline) ------------------------------------------------


@dataclass
class ReportLibrary:
    """The training reports a nearest-report bridge hands out, with their image embeddings.

    By default the cohort's own training split; for an external-validation target, the
    SOURCE cohort's (``--fit-manifest``), so both cohorts' bridged text comes from one library
    and the RAG branch embeds them in one space.
    """

    samples: pd.DataFrame  # sample_id, patient_id, split (no labels)
    image_ids: Sequence[str]
    image_emb: np.ndarray
    image_ok: np.ndarray
    reports: Sequence[Any]
    same_cohort: bool = True  # exclude a query's own patient (ids mean one person only here)


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)


def nearest_report(
    samples: pd.DataFrame,
    image_ids: Sequence[str],
    image_emb: np.ndarray,
    image_ok: np.ndarray,
    reports: Sequence[Any],
    library: ReportLibrary | None = None,
) -> tuple[list[str | None], list[str | None], list[str], list[str | None]]:
    """For each row of ``samples`` (sample_id, patient_id, split): the report of the nearest
    training sample by cosine similarity of the image embeddings.

    Candidates: training-split rows of the library (default: ``samples`` themselves, with
    ``reports``) with an ok image embedding and a non-empty report, sorted by sample id (ties go
    to the smallest id). Within one cohort a sample never receives a report of its own
    patient. Returns (text, source, status, reason) per row. Labels are not an input.
    """
    if library is None:
        library = ReportLibrary(samples, image_ids, image_emb, image_ok, reports)
    for frame in (samples, library.samples):
        if set(frame.columns) - {"sample_id", "patient_id", "split"}:
            raise BridgeError(
                "nearest_report takes only sample_id, patient_id and split (no labels)"
            )
    pos = {sid: i for i, sid in enumerate(image_ids)}
    unit = _unit_rows(image_emb)
    sid = samples["sample_id"].astype(str).tolist()
    pid = samples["patient_id"].astype(str).to_numpy()
    lib_pos = {s: i for i, s in enumerate(library.image_ids)}
    lib_unit = _unit_rows(library.image_emb)
    lib_sid = library.samples["sample_id"].astype(str).tolist()
    lib_pid = library.samples["patient_id"].astype(str).to_numpy()
    lib_split = library.samples["split"].astype(str).to_numpy()
    lib_reports = library.reports
    cand = [
        i
        for i in range(len(lib_sid))
        if lib_split[i] == "train"
        and lib_sid[i] in lib_pos
        and library.image_ok[lib_pos[lib_sid[i]]]
        and not _is_missing(lib_reports[i])
        and str(lib_reports[i]).strip()
    ]
    cand.sort(key=lambda i: lib_sid[i])
    if not cand:
        raise BridgeError(
            "nearest-report bridge: no training sample has both an image embedding and a report"
        )
    cand_vecs = lib_unit[[lib_pos[lib_sid[i]] for i in cand]]
    cand_pid = lib_pid[cand] if library.same_cohort else np.full(len(cand), None, dtype=object)
    text: list[str | None] = []
    source: list[str | None] = []
    status: list[str] = []
    reason: list[str | None] = []
    for i, s in enumerate(sid):
        if s not in pos:
            (
                text.append(None),
                source.append(None),
                status.append("failed"),
                reason.append("no image embedding row"),
            )
            continue
        j = pos[s]
        if not image_ok[j]:
            (
                text.append(None),
                source.append(None),
                status.append("failed"),
                reason.append("image embedding not ok"),
            )
            continue
        sims = cand_vecs @ unit[j]
        sims = np.where(cand_pid == pid[i], -np.inf, sims)
        if not np.isfinite(sims).any():
            (
                text.append(None),
                source.append(None),
                status.append("failed"),
                reason.append("no other-patient training report"),
            )
            continue
        best = int(np.argmax(sims))
        nb = cand[best]
        text.append(" ".join(str(lib_reports[nb]).split()))
        source.append(f"nearest-report:{lib_sid[nb]}")
        status.append("ok")
        reason.append(None)
    return text, source, status, reason


# -- report-generation bridges (real weights) -------------------------------------------------


class ReportGenerator:
    """A report-generation model: ``generate(paths)`` -> one report per file (or an exception)."""

    name = "generator"

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        self.cfg = dict(cfg)
        self.device = device
        self.batch_size = int(cfg.get("batch_size", 1))

    def load(self) -> None:  # pragma: no cover - needs weights
        raise NotImplementedError

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return ModelSpec.from_config(self.name, self.cfg).describe()


class Maira2Bridge(ReportGenerator):
    """MAIRA-2 (microsoft/maira-2): findings generation for a chest X-ray, no grounding.

    MAIRA-2's processor and model classes are code in its hub repository, so the bridge needs
    ``trust_remote_code: true`` in its own config (``rag.bridges.image``). Nothing turns it on by
    default, and the loading policy honours it only with a pinned 40-hex ``revision`` (the
    default below is one; an unpinned revision is refused before anything is read). The
    modality's image fills the processor's ``current_frontal`` slot, the one image it requires:
    each modality is bridged on its own image, so a lateral-view modality is reported from its
    lateral image alone, and a missing other view never blocks this modality's bridge.
    """

    name = "maira2"
    DEFAULTS = {
        "model_id": "microsoft/maira-2",
        "revision": "795a2b1cd4a310624b4e3d14b5a23e41fd273deb",
        "model_class": "AutoModelForCausalLM",
        "max_new_tokens": 300,
    }

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__({**self.DEFAULTS, **dict(cfg)}, device)
        self.spec = ModelSpec.from_config("rag/bridge/maira2", self.cfg)
        self._model: Any = None
        self._processor: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        from extractors.loading import (
            RemoteCodeRefused,
            check_remote_code,
            load_model,
            model_file_patterns,
        )

        if not self.spec.trust_remote_code:
            raise RemoteCodeRefused(
                f"expert {self.spec.expert!r}: MAIRA-2's processor and model are code in its hub "
                f"repository ({self.spec.model_id}); review that code at revision "
                f"{self.spec.revision} and opt in with `trust_remote_code: true` in this bridge's "
                "config (rag.bridges.<modality>). Remote code runs only at a pinned commit."
            )
        trust = check_remote_code(self.spec)  # refuses an unpinned revision
        import torch
        from transformers import AutoProcessor

        dtype = getattr(torch, self.cfg["dtype"]) if self.cfg.get("dtype") else None
        model = load_model(self.spec, device=self.device, dtype=dtype)
        folder = resolve_dir(self.spec, allow_patterns=model_file_patterns(trust))
        self._processor = AutoProcessor.from_pretrained(
            str(folder), trust_remote_code=trust, local_files_only=True
        )
        self._model = model

    def _image(self, path: Path) -> Any:
        from PIL import Image

        from extractors.readers.images import read_image, to_rgb

        arr = to_rgb(read_image(path))
        return Image.fromarray((arr * 255).round().astype(np.uint8))

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:
        import torch

        self.load()
        dtype = getattr(torch, self.cfg["dtype"]) if self.cfg.get("dtype") else None
        out: list[str | BaseException] = []
        for path in paths:
            try:
                inputs = self._processor.format_and_preprocess_reporting_input(
                    current_frontal=self._image(path),
                    current_lateral=None,
                    prior_frontal=None,
                    indication=None,
                    technique=None,
                    comparison=None,
                    prior_report=None,
                    get_grounding=False,
                    return_tensors="pt",
                ).to(self.device)
                if dtype is not None:
                    inputs = inputs.to(dtype)  # floating tensors only (pixel values)
                with torch.inference_mode():
                    ids = self._model.generate(
                        **inputs, max_new_tokens=int(self.cfg["max_new_tokens"]), use_cache=True
                    )
                n = inputs["input_ids"].shape[-1]  # the prompt; only the continuation is the report
                decoded = self._processor.decode(ids[0][n:], skip_special_tokens=True).lstrip()
                out.append(
                    plain_report(
                        self._processor.convert_output_to_plaintext_or_grounded_sequence(decoded)
                    )
                )
            except Exception as exc:  # one bad image never stops the run
                out.append(exc)
        return out


def plain_report(result: Any) -> str:
    """MAIRA-2's parsed output as plain text: a string as is; a grounded sequence (a list of
    ``(phrase, boxes)``) as its phrases, without the boxes."""
    if isinstance(result, str):
        return result
    return " ".join(str(item[0]).strip() for item in result)


MERLIN_ORGAN_SYSTEMS = (
    "lower thorax",
    "liver",
    "gallbladder",
    "spleen",
    "pancreas",
    "adrenal glands",
    "kidneys",
    "bowel",
    "peritoneum",
    "pelvic",
    "circulatory",
    "lymph nodes",
    "musculoskeletal",
)
# RadLLaMA's tokenizer and config only: its weights are part of Merlin's checkpoint.
MERLIN_DECODER_FILES = ("*.json", "*.model", "*.txt", "*.tiktoken")


def _bare_module(cls: type) -> Any:
    """An instance of a torch module class whose own ``__init__`` is not run (Merlin's
    constructors download weights); the caller sets the submodules ``__init__`` would set."""
    import torch

    obj = cls.__new__(cls)
    torch.nn.Module.__init__(obj)
    return obj


def build_merlin_report_model(
    decoder_dir: str | os.PathLike, trust_remote_code: bool, lora: Mapping[str, Any]
) -> Any:
    """merlin-vlm's ``Clip3DForTextGeneration``, assembled from its own classes without the
    downloads in their constructors.

    What merlin-vlm 0.0.7 builds, and how here: ``ModifiedImageEncoder`` wraps an I3ResNet
    inflated from ``torchvision.models.resnet152(pretrained=True)`` (an ImageNet download) —
    here ``weights=None``; ``TextDecoder`` calls ``from_pretrained("StanfordAIMI/RadLLaMA-7b")``
    for the tokenizer (remote code on) and the 7B weights — here the tokenizer and config come
    from ``decoder_dir`` (resolved under the loading policy) and the LLaMA is built from its
    config with empty weights, then wrapped in Merlin's LoRA; ``Adapter`` maps the image features
    to the decoder width. Every weight then comes from Merlin's checkpoint
    (``load_merlin_state``), as in merlin-vlm, whose strict load covers the whole model.
    """
    import torchvision
    from accelerate import init_empty_weights
    from merlin.models import i3res
    from merlin.models import radiology_report_generation as rrg
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    i3 = i3res.I3ResNet(
        torchvision.models.resnet152(weights=None),
        class_nb=1692,
        conv_class=True,
        ImageEmbedding=True,
        PhenotypeCls=False,
    )
    encoder = _bare_module(rrg.ModifiedImageEncoder)
    encoder.vision_model = rrg.ModifiedI3ResNet(i3)

    decoder = _bare_module(rrg.TextDecoder)
    decoder.tokenizer = AutoTokenizer.from_pretrained(
        str(decoder_dir), use_fast=True, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if decoder.tokenizer.pad_token_id is None:  # one prompt per call: padding never applies
        decoder.tokenizer.pad_token = decoder.tokenizer.eos_token
    config = AutoConfig.from_pretrained(
        str(decoder_dir), trust_remote_code=trust_remote_code, local_files_only=True
    )
    with init_empty_weights():
        llm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        decoder.text_decoder = get_peft_model(
            llm, LoraConfig(bias="none", task_type="CAUSAL_LM", **dict(lora))
        )

    model = _bare_module(rrg.Clip3DForTextGeneration)
    model.encode_image = encoder
    model.decode_text = decoder
    model.adapter = rrg.Adapter(int(i3.layer4[-1].conv3.out_channels), int(config.hidden_size))
    return model


def load_merlin_state(model: Any, state: Mapping[str, Any], path: Path, expert: str) -> None:
    """Every tensor of ``model`` from ``state`` (assigned, so the empty decoder weights take the
    checkpoint's storage); a key mismatch or a weight left empty is a ``LoadingError``."""
    result = model.load_state_dict(dict(state), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise LoadingError(
            f"expert {expert!r}: {path} does not match Merlin's report-generation model "
            f"({len(result.missing_keys)} missing, e.g. {result.missing_keys[:3]}; "
            f"{len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[:3]}). "
            "Use the report-generation checkpoint with the decoder config and LoRA settings it "
            "was trained with."
        )
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise LoadingError(f"expert {expert!r}: no weights for {empty[:3]} in {path}")


class MerlinBridge(ReportGenerator):
    """Merlin report generation (stanfordmimi/Merlin, ``merlin-vlm``) for CT volumes.

    merlin-vlm's ``Merlin(RadiologyReport=True)`` cannot take a local checkpoint and would
    download the checkpoint, RadLLaMA-7b and an ImageNet ResNet-152 on its own. This bridge uses
    merlin-vlm's classes but builds the model itself (``build_merlin_report_model``):

    * the checkpoint (``checkpoint`` in the ``stanfordmimi/Merlin`` snapshot at ``revision``, or
      ``local_dir`` = the file or its folder) is resolved under the loading policy and read by
      ``load_state_dict`` (safetensors, else ``torch.load(weights_only=True)``);
    * the text decoder's tokenizer and config come from ``decoder`` (``model_id`` +
      ``revision`` or ``local_dir``; only config and tokenizer files are fetched, the weights are
      in Merlin's checkpoint); its ``trust_remote_code`` is off unless ``decoder`` turns it on
      with a pinned revision;
    * with ``HF_HUB_OFFLINE=1`` both are read from the hub cache only; nothing else is fetched.

    Volumes go through Merlin's own preprocessing transform; the report is generated per organ
    system with Merlin's prompts (greedy, its stop token) and joined.
    """

    name = "merlin"
    DEFAULTS = {
        "model_id": "stanfordmimi/Merlin",
        "revision": None,
        "checkpoint": "resnet_gpt2_best_stanford_report_generation_average_mtl.pt",
        "decoder": {"model_id": "StanfordAIMI/RadLLaMA-7b", "revision": None},
        "lora": {"r": 512, "lora_alpha": 16, "lora_dropout": 0.1},  # merlin-vlm's TextDecoder
        "dtype": None,
        "max_new_tokens": 128,
        "repetition_penalty": 1.2,
        "stop_token_id": 48134,  # "###" in RadLLaMA's vocabulary (Merlin's demo)
        "organ_systems": list(MERLIN_ORGAN_SYSTEMS),
    }

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        cfg = dict(cfg)
        merged = {**self.DEFAULTS, **cfg}
        for key in ("decoder", "lora"):
            merged[key] = {**self.DEFAULTS[key], **dict(cfg.get(key) or {})}
        super().__init__(merged, device)
        self.spec = ModelSpec.from_config("rag/bridge/merlin", self.cfg)
        self.decoder_spec = ModelSpec.from_config(
            "rag/bridge/merlin/decoder", self.cfg["decoder"], model_class="AutoModelForCausalLM"
        )
        self._model: Any = None

    def describe(self) -> str:
        return f"{self.spec.describe()} + decoder {self.decoder_spec.describe()}"

    def checkpoint_path(self) -> Path:
        return resolve_file(self.spec, str(self.cfg["checkpoint"]))

    def decoder_dir(self) -> tuple[Path, bool]:
        """The folder with the decoder's config and tokenizer, and its trust_remote_code."""
        from extractors.loading import check_remote_code

        trust = check_remote_code(self.decoder_spec)
        patterns = [*MERLIN_DECODER_FILES, *(["*.py"] if trust else [])]
        return resolve_dir(self.decoder_spec, allow_patterns=patterns), trust

    def load(self) -> None:
        if self._model is not None:
            return
        ckpt = self.checkpoint_path()
        folder, trust = self.decoder_dir()
        try:
            import merlin.models.radiology_report_generation  # noqa: F401
        except ImportError as exc:
            raise LoadingError(
                f"expert {self.spec.expert!r}: the merlin-vlm package is not installed "
                "(pip install merlin-vlm; envs/rag.yaml pins it)"
            ) from exc
        state = load_state_dict(ckpt, expert=self.spec.expert)
        model = build_merlin_report_model(folder, trust, self.cfg["lora"])
        load_merlin_state(model, state, ckpt, self.spec.expert)
        if self.cfg.get("dtype"):
            import torch

            model = model.to(getattr(torch, self.cfg["dtype"]))
        self._model = model.eval().to(self.device)

    @staticmethod
    def preprocess(path: str | os.PathLike) -> Any:
        """Merlin's transform (``merlin.data.monai_transforms.ImageTransforms``: RAS, 1.5 × 1.5 ×
        3 mm, HU [-1000, 1000] -> [0, 1], pad/crop to 224 × 224 × 160) as a (1, 1, X, Y, Z) batch.

        Applied directly rather than through merlin's ``DataLoader``, whose cache files are read
        back with ``torch.load(weights_only=False)``.
        """
        import torch
        from merlin.data.monai_transforms import ImageTransforms

        image = ImageTransforms({"image": str(path)})["image"]
        if hasattr(image, "as_tensor"):  # monai MetaTensor -> plain tensor
            image = image.as_tensor()
        return torch.as_tensor(image).unsqueeze(0)

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        stop_id = int(self.cfg["stop_token_id"])

        class _StopAt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return input_ids[:, -1] == stop_id

        self.load()
        model = self._model
        dtype = next(model.encode_image.parameters()).dtype
        out: list[str | BaseException] = []
        for path in paths:
            try:
                image = self.preprocess(path).to(self.device, dtype)
                lines = []
                with torch.inference_mode():
                    # Clip3DForTextGeneration.generate, with the image encoded once per volume
                    feats = model.adapter(model.encode_image(image))
                    for organ in self.cfg["organ_systems"]:
                        gen = model.decode_text.generate(
                            feats,
                            [f"Generate a radiology report for {organ}###\n"],
                            do_sample=False,
                            num_beams=1,
                            repetition_penalty=float(self.cfg["repetition_penalty"]),
                            max_new_tokens=int(self.cfg["max_new_tokens"]),
                            stopping_criteria=StoppingCriteriaList([_StopAt()]),
                        )
                        lines.append(f"{organ}: {str(gen[0]).split('###')[-1].strip()}")
                out.append(" ".join(lines))
            except Exception as exc:  # one bad volume never stops the run
                out.append(exc)
        return out


class HistGenBridge(ReportGenerator):
    """HistGen (MICCAI 2024, github.com/dddavid4real/HistGen) for whole-slide images.

    HistGen generates from pre-extracted patch features (1024-d DINOv2 ViT-L, its CLAM
    pipeline), one ``{features_dir}/{slide stem}.pt`` tensor per slide. Needs a checkout of the
    HistGen code at a pinned commit (``repo_dir``), the checkpoint (``checkpoint``, loaded with
    ``weights_only=True``; HistGen's own ``model_best.pth`` files also pickle optimiser state and
    must be converted to a plain state dict first) and the annotation file that defines its
    vocabulary (``ann_path``).
    """

    name = "histgen"
    ARGS = {
        "dataset_name": "wsi_report",
        "max_seq_length": 100,
        "threshold": 10,
        "d_model": 512,
        "d_ff": 512,
        "d_vf": 512,
        "num_heads": 8,
        "num_layers": 3,
        "dropout": 0.1,
        "logit_layers": 1,
        "bos_idx": 0,
        "eos_idx": 0,
        "pad_idx": 0,
        "use_bn": 0,
        "drop_prob_lm": 0.5,
        "topk": 512,
        "cmm_size": 2048,
        "cmm_dim": 512,
        "region_size": 96,
        "prototype_num": 512,
        "sample_method": "beam_search",
        "beam_size": 3,
        "temperature": 1.0,
        "sample_n": 1,
        "group_size": 1,
        "output_logsoftmax": 1,
        "decoding_constraint": 0,
        "block_trigrams": 1,
        "visual_extractor": "resnet101",
        "visual_extractor_pretrained": False,
        "model_name": "histgen",
        "n_gpu": 0,
    }

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__(dict(cfg), device)
        self._model: Any = None

    def describe(self) -> str:
        return f"histgen:{self.cfg.get('repo_dir')}@{self.cfg.get('commit', 'unpinned')}:{self.cfg.get('checkpoint')}"

    def load(self) -> None:
        if self._model is not None:
            return
        import argparse

        def need(key: str, what: str) -> Path:
            value = self.cfg.get(key)
            if not value or not Path(value).expanduser().exists():
                raise LoadingError(
                    f"expert 'rag/bridge/histgen': {what} not found ({key}: {value!r}). Clone "
                    "https://github.com/dddavid4real/HistGen at a pinned commit, download its released "
                    "checkpoint, convert it to a plain state dict (safetensors), and set repo_dir, "
                    "checkpoint, ann_path and features_dir in rag.bridges.slide"
                )
            return Path(value).expanduser()

        ckpt = need("checkpoint", "checkpoint")
        repo = need("repo_dir", "HistGen code checkout")
        ann = need("ann_path", "annotation file (defines the vocabulary)")
        need("features_dir", "patch-feature folder")
        state = load_state_dict(ckpt, expert="rag/bridge/histgen")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if str(repo) not in sys.path:
            sys.path.insert(0, str(repo))
        from models.histgen_model import HistGenModel  # type: ignore[import-not-found]
        from modules.tokenizers import Tokenizer  # type: ignore[import-not-found]

        for cls in (HistGenModel, Tokenizer):  # HistGen's packages are the generic models/modules
            origin = Path(inspect.getfile(cls)).resolve()
            if not origin.is_relative_to(repo.resolve()):
                raise LoadingError(
                    f"expert 'rag/bridge/histgen': {cls.__name__} was imported from {origin}, not "
                    f"from the HistGen checkout {repo} (another `models`/`modules` package is loaded)"
                )

        args = argparse.Namespace(
            **{
                **self.ARGS,
                **self.cfg.get("args", {}),
                "ann_path": str(ann),
                "image_dir": str(self.cfg["features_dir"]),
            }
        )
        tokenizer = Tokenizer(args)
        model = HistGenModel(args, tokenizer)
        model.load_state_dict(state)
        self._model = model.eval().to(self.device)

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:
        import torch

        from extractors.loading import load_state_dict as load_tensor

        self.load()
        feats_dir = Path(self.cfg["features_dir"]).expanduser()
        out: list[str | BaseException] = []
        for path in paths:
            try:
                stem = Path(path).name.split(".")[0]
                feats_file = feats_dir / f"{stem}.pt"
                if not feats_file.is_file():
                    raise SampleError(f"no patch features {feats_file} for slide {Path(path).name}")
                feats = load_tensor(feats_file, expert="rag/bridge/histgen")
                with torch.inference_mode():
                    ids = self._model(
                        torch.as_tensor(feats).float().unsqueeze(0).to(self.device), mode="sample"
                    )
                out.append(self._model.tokenizer.decode_batch(ids.cpu().numpy())[0])
            except Exception as exc:
                out.append(exc)
        return out


GENERATORS = {"maira2": Maira2Bridge, "merlin": MerlinBridge, "histgen": HistGenBridge}


# -- per-modality driver ----------------------------------------------------------------------


def bridge_config(rag_cfg: Mapping[str, Any], modality: str, kind: str) -> dict[str, Any]:
    bridges = rag_cfg.get("bridges", {})
    spec = bridges.get(modality) or bridges.get(kind)
    if spec is None:
        raise BridgeError(
            f"no bridge configured for modality {modality!r} (kind {kind!r}) under rag.bridges"
        )
    spec = dict(spec)
    if spec.get("type") not in BRIDGE_TYPES:
        raise BridgeError(
            f"rag.bridges.{modality if modality in bridges else kind}: type {spec.get('type')!r} not in {BRIDGE_TYPES}"
        )
    return spec


def report_modality(modalities: Mapping[str, str], explicit: str | None = None) -> str:
    """The text modality whose reports the nearest-report bridge hands out."""
    if explicit:
        if modalities.get(explicit) != "text":
            raise BridgeError(f"report_modality {explicit!r} is not a text modality of the dataset")
        return explicit
    texts = [m for m, k in modalities.items() if k == "text"]
    if not texts:
        raise BridgeError(
            "nearest-report bridge: the dataset has no text modality to take reports from"
        )
    return texts[0]


def run_bridge(
    manifest_path: str | os.PathLike,
    modality: str,
    spec: Mapping[str, Any],
    image_cache: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    device: str = "cpu",
    fit_manifest: str | os.PathLike | None = None,
    fit_image_cache: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Bridge one modality of a manifest; returns the rows and their metadata.

    ``fit_manifest`` / ``fit_image_cache`` (external-validation targets, nearest-report only):
    take the reports from that cohort's training split instead of this one's.
    """
    from cohorts.manifest import read_manifest

    df, mmeta = read_manifest(manifest_path)
    if modality not in mmeta.modalities:
        raise BridgeError(
            f"{manifest_path}: no modality {modality!r}; has {list(mmeta.modalities)}"
        )
    kind = mmeta.modalities[modality]
    btype = spec["type"]
    data_root = Path(root if root is not None else mmeta.root)
    ids = df["sample_id"].astype(str).tolist()
    values = df[modality].tolist()
    present = [not _is_missing(v) for v in values]
    meta: dict[str, Any] = {
        "dataset": mmeta.dataset,
        "modality": modality,
        "kind": kind,
        "bridge": dict(spec),
    }

    rows = BridgeRows(
        ids,
        [None] * len(ids),
        [None] * len(ids),
        ["missing"] * len(ids),
        ["modality not recorded"] * len(ids),
    )

    def fill(i: int, fn: Any, src: str) -> None:
        try:
            rows.text[i] = fn(values[i])
            rows.source[i], rows.status[i], rows.reason[i] = src, "ok", None
        except Exception as exc:
            rows.source[i], rows.status[i], rows.reason[i] = src, "failed", _reason(exc)

    if btype == "passthrough":
        if kind != "text":
            raise BridgeError(f"passthrough bridge needs a text modality; {modality!r} is {kind!r}")
        for i in range(len(ids)):
            if present[i]:
                fill(i, passthrough, "passthrough")
    elif btype == "ehr-serialize":
        if kind != "timeseries":
            raise BridgeError(
                f"ehr-serialize bridge needs a timeseries modality; {modality!r} is {kind!r}"
            )
        from extractors.readers import resolve_path

        for i in range(len(ids)):
            if present[i]:
                fill(
                    i,
                    lambda v: serialize_ehr_file(resolve_path(data_root, v), spec),
                    "ehr-serialize",
                )
        meta["fields"] = [n for n, _ in ehr_fields()]
    elif btype == "nearest-report":
        if image_cache is None:
            raise BridgeError(
                "nearest-report bridge needs the image expert's cache (--image-cache)"
            )
        from extractors.cache import read_cache

        cache = read_cache(image_cache)
        rep_mod = report_modality(mmeta.modalities, spec.get("report_modality"))
        # Only ids, patients and splits go in: the bridge cannot see a label.
        samples = df[["sample_id", "patient_id", "split"]].copy()
        library, library_dataset = None, mmeta.dataset
        if fit_manifest is not None:
            if fit_image_cache is None:
                raise BridgeError(
                    "--fit-manifest needs --fit-image-cache (the source's image cache)"
                )
            lib_df, lib_meta = read_manifest(fit_manifest)
            lib_cache = read_cache(fit_image_cache)
            if lib_cache.meta.expert != cache.meta.expert:
                raise BridgeError(
                    f"library image cache is {lib_cache.meta.expert!r}, this cohort's is "
                    f"{cache.meta.expert!r}: the nearest-neighbour search needs one embedding space"
                )
            lib_rep = report_modality(lib_meta.modalities, spec.get("report_modality"))
            library = ReportLibrary(
                lib_df[["sample_id", "patient_id", "split"]].copy(),
                lib_cache.sample_ids.astype(str).tolist(),
                lib_cache.embeddings,
                lib_cache.ok,
                lib_df[lib_rep].tolist(),
                same_cohort=lib_meta.dataset == mmeta.dataset,
            )
            library_dataset = lib_meta.dataset
        text, source, status, reason = nearest_report(
            samples,
            cache.sample_ids.astype(str).tolist(),
            cache.embeddings,
            cache.ok,
            df[rep_mod].tolist(),
            library=library,
        )
        for i in range(len(ids)):
            if present[i]:
                rows.text[i], rows.source[i], rows.status[i], rows.reason[i] = (
                    text[i],
                    source[i],
                    status[i],
                    reason[i],
                )
        meta.update(
            {
                "image_expert": cache.meta.expert,
                "image_cache": str(image_cache),
                "report_modality": rep_mod,
                "library_dataset": library_dataset,
            }
        )
    else:
        gen = GENERATORS[btype](spec, device=device)
        gen.load()  # a missing model fails the whole job, with the loader's message
        from extractors.readers import resolve_path

        todo = [i for i in range(len(ids)) if present[i]]
        for b0 in range(0, len(todo), gen.batch_size):
            chunk = todo[b0 : b0 + gen.batch_size]
            paths: list[Path | None] = []
            for i in chunk:
                try:
                    paths.append(resolve_path(data_root, values[i], allow_dir=kind == "volume"))
                except SampleError as exc:
                    paths.append(None)
                    rows.source[i], rows.status[i], rows.reason[i] = btype, "failed", str(exc)
            ok_idx = [i for i, p in zip(chunk, paths, strict=True) if p is not None]
            results = gen.generate([p for p in paths if p is not None])
            for i, res in zip(ok_idx, results, strict=True):
                if isinstance(res, BaseException) or not str(res).strip():
                    rows.source[i], rows.status[i] = btype, "failed"
                    rows.reason[i] = (
                        _reason(res) if isinstance(res, BaseException) else "empty generated report"
                    )
                else:
                    rows.text[i], rows.source[i], rows.status[i], rows.reason[i] = (
                        " ".join(str(res).split()),
                        btype,
                        "ok",
                        None,
                    )
        meta["generator"] = gen.describe()
    return rows.frame(), meta


_SCHEMA = pa.schema([(c, pa.string()) for c in BRIDGE_COLUMNS])


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


def read_bridge(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise BridgeError(f"bridge file {path} not found")
    table = pq.read_table(path)
    missing = [c for c in BRIDGE_COLUMNS if c not in table.column_names]
    if missing:
        raise BridgeError(f"{path}: missing column(s) {missing}")
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return table.to_pandas(), meta
