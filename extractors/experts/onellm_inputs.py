"""One sample of each kind as OneLLM's inputs: image frames, IMU windows or LLaMA token ids.

This is the numpy side of the OneLLM expert (it runs in the DataLoader workers):

* an image -> one CLIP-preprocessed frame (3, S, S);
* a CT volume -> ``k_slices`` axial slices spread over the depth, HU-windowed, as frames;
* a slide -> its tissue tiles (the ``slide-tiles`` tiler) as frames;
* an EHR series -> (groups, 6, length) IMU-style windows (:func:`series_to_imu`);
* a note -> LLaMA-2 token ids (OneLLM's ``tokenizer.model``, SentencePiece).

:class:`OneLLMInputs` is mixed into :class:`extractors.experts.fm_onellm.OneLLMExpert`; the
architecture (``arch``), the bound ``kind`` and the weights folder (``_folder``) are the
expert's.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import missing_package
from extractors.experts.fm_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalized_rgb
from extractors.experts.slide import SlideTilesExpert
from extractors.experts.volume import windowed_slices
from extractors.loading import WeightsNotFound, how_to_provide, load_tokenizer
from extractors.readers import resolve_path
from extractors.readers.images import read_image
from extractors.readers.notes import read_note
from extractors.readers.timeseries import read_series
from extractors.readers.volumes import read_volume


def series_to_imu(
    times: np.ndarray,
    columns: list[np.ndarray | None],
    length: int,
    channels: int,
    min_obs: int = 1,
    scaling: str = "standard",
) -> np.ndarray:
    """Variables on a clock -> (groups, channels, length) float32 IMU-style windows.

    Each variable with at least ``min_obs`` observations is linearly interpolated between its
    observations (constant beyond the first/last) onto ``length`` steps evenly spaced over
    [first time, last time], optionally standardised within the sample; other variables are
    zero channels. Variables are cut into consecutive groups of ``channels``."""
    t = np.asarray(times, dtype=np.float64)
    grid = np.linspace(t[0], t[-1], length) if len(t) > 1 else np.full(length, t[0])
    rows, observed = [], 0
    for vals in columns:
        if vals is None:
            rows.append(np.zeros(length))
            continue
        vals = np.asarray(vals, dtype=np.float64)
        ok = np.isfinite(vals)
        if int(ok.sum()) < max(1, min_obs):
            rows.append(np.zeros(length))
            continue
        observed += 1
        row = np.interp(grid, t[ok], vals[ok])
        if scaling == "standard":
            sd = row.std()
            row = (row - row.mean()) / sd if sd > 1e-8 else np.zeros(length)
        rows.append(row)
    if not observed:
        raise SampleError("no variable with enough observations")
    n_groups = math.ceil(len(rows) / channels)
    pad = n_groups * channels - len(rows)
    arr = np.stack(rows + [np.zeros(length)] * pad).reshape(n_groups, channels, length)
    return arr.astype(np.float32)


class OneLLMInputs:
    """Reading and preprocessing one sample for the OneLLM expert (see the module docstring)."""

    # provided by the expert this is mixed into, as are model_spec() and _folder()
    name: str
    kind: str
    params: dict[str, Any]
    arch: dict[str, Any]
    input_size: int
    random_init: bool
    _tok: Any
    _tiler: Any

    # -- images, volumes, slides, series -------------------------------------------------
    def prepare_array(self, arr: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) in [0, 1] -> CLIP-normalised (3, S, S) float32."""
        resize = self.params["resize"]
        return normalized_rgb(arr, self.input_size, resize, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def load(self, value: str, root: Path) -> np.ndarray:
        """The sample as OneLLM input frames: (T, 3, S, S), (G, 6, L) or LLaMA token ids."""
        kind = self.kind
        if kind == "image":
            arr = read_image(resolve_path(root, value), high_bit=self.params["high_bit"])
            return self.prepare_array(arr)[None]
        if kind == "volume":
            vol = read_volume(
                resolve_path(root, value, allow_dir=True),
                axis_order=self.params["axis_order"],
                npz_key=self.params["npz_key"],
            )
            return self.prepare_volume(vol.array)
        if kind == "slide":
            return np.stack(self.tiler().load(value, root).tiles)
        if kind == "timeseries":
            s = read_series(resolve_path(root, value), time_column=self.params["time_column"])
            names = self.params["variables"] or sorted(s.values)
            return series_to_imu(
                s.times,
                [s.values.get(n) for n in names],
                int(self.arch["imu_length"]),
                int(self.arch["imu_channels"]),
                self.params["min_obs"],
                self.params["scaling"],
            )
        return self.tokenize(value)

    def prepare_volume(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim != 3 or arr.shape[0] < 2:
            raise SampleError(f"volume has shape {arr.shape}, expected a 3-D volume")
        if not np.isfinite(arr).all():
            raise SampleError("NaN voxels")
        _, unit = windowed_slices(arr, self.params["k_slices"], self.params["hu_window"])
        return np.stack([self.prepare_array(s.astype(np.float32)) for s in unit])

    def tiler(self) -> Any:
        """The ``slide-tiles`` tiler with this expert's image preprocessing for each tile."""
        if self._tiler is None:
            p = self.params
            tiler = SlideTilesExpert(
                target_mpp=p["target_mpp"],
                tile_px=self.input_size,
                min_tissue=p["min_tissue"],
                max_tiles=p["max_tiles"],
            )
            tiler.inner = SimpleNamespace(prepare_array=self.prepare_array)  # type: ignore[assignment]
            self._tiler = tiler
        return self._tiler

    # -- notes ----------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        """LLaMA-2's SentencePiece model (random_init: the project's stand-in vocabulary)."""
        if self._tok is not None:
            return self._tok
        path = self.params["tokenizer"]
        if path is None and self.random_init:
            tok = load_tokenizer(self.model_spec())  # type: ignore[attr-defined]  # the packaged stand-in vocabulary
            self._tok = ("hf", tok)
            return self._tok
        if path is None:
            folder = self._folder()  # type: ignore[attr-defined]
            cands = sorted(folder.glob("tokenizer.model")) + sorted(
                folder.glob("*/tokenizer.model")
            )
            if not cands:
                raise WeightsNotFound(
                    f"expert {self.name!r}: notes need OneLLM's LLaMA-2 tokenizer.model (in the OneLLM "
                    f"repository at config/llama2/tokenizer.model); none in {folder}. Set `tokenizer:` to "
                    f"it. {how_to_provide(self.model_spec())}"  # type: ignore[attr-defined]
                )
            path = str(cands[0])
        p = Path(path).expanduser()
        if p.is_dir():
            from transformers import AutoTokenizer

            self._tok = ("hf", AutoTokenizer.from_pretrained(str(p)))
            return self._tok
        if not p.is_file():
            raise WeightsNotFound(f"expert {self.name!r}: tokenizer {p} does not exist")
        try:
            import sentencepiece
        except ImportError as exc:
            raise missing_package(self.name, "sentencepiece", "sentencepiece") from exc
        self._tok = ("spm", sentencepiece.SentencePieceProcessor(model_file=str(p)))
        return self._tok

    def vocab_size(self) -> int:
        if self.random_init and "vocab_size" not in self.params["config"]:
            kind, tok = self.get_tokenizer()
            return len(tok) if kind == "hf" else int(tok.get_piece_size())
        return int(self.arch["vocab_size"])

    def tokenize(self, value: Any) -> np.ndarray:
        text = read_note(value)
        kind, tok = self.get_tokenizer()
        ids = (
            tok.encode(text) if kind == "spm" else tok(text, add_special_tokens=False)["input_ids"]
        )
        ids = np.asarray(ids[: self.params["max_length"]], dtype=np.int64)
        if ids.size == 0:
            raise SampleError("no tokens")
        return ids
