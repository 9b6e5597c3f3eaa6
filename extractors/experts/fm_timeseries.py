"""EHR time-series foundation-model experts: Chronos (S / L teacher) and MOIRAI.

Both read a file with :func:`extractors.readers.timeseries.read_series` (wide or long CSV /
Parquet; one row per time stamp, NaN where a variable was not observed), take the configured
``variables`` (default: every variable of the file; the embedding dim does not depend on them),
optionally re-bin the rows onto a regular grid of ``step`` hours (mean per bin; default:
the file's rows as they are — the cohort adapters write hourly grids), and skip variables
observed fewer than ``min_obs`` times. A file with no usable variable is a failed sample.

Embedding = the model's encoder states pooled **over time** (mean over the observed time steps
/ patches only: unobserved steps are masked inputs, their states are not averaged in) and then
**over variables** (each variable weighs the same). A series longer than the model window is
cut into consecutive windows that are all encoded (nothing is dropped); the number of windows is
recorded per sample (``extra`` column).

``chronos`` — chronos-forecasting's ``ChronosPipeline.embed`` (T5 encoder, mean scaling and
uniform-bin tokens; NaN = missing, masked), one univariate series per variable. Default weights
``amazon/chronos-t5-small`` (Chronos-S, 512-d); the teacher Chronos-L is
``model_id: amazon/chronos-t5-large`` (1024-d). Weights are loaded through the project's policy as
``T5ForConditionalGeneration`` and wrapped in the pipeline with the ``chronos_config`` of the
repository's ``config.json`` (Chronos-Bolt repositories are not T5 seq2seq models and are refused).

``moirai`` — uni2ts ``MoiraiModule`` (any-variate masked encoder): all variables of a sample in
one packed sequence (``variate_id`` per variable, ``time_id`` per patch), patches of
``patch_size`` steps (default 32, MOIRAI's choice for hourly data; the series is left-padded
with unobserved values to a multiple of it), its own per-variable standard scaling, attention
restricted to the sample (``sample_id``), and the transformer's output states taken before the
distribution head. uni2ts pins old torch/numpy, so it runs from its own environment
(``envs/moirai.yaml``); in other environments it is installed with ``--no-deps`` and only its
inference module is imported (the training stack — lightning, gluonts — is not needed).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import FMExpert, autocast_dtype, forward_chunks, missing_package
from extractors.experts.fm_source import SOURCE_KEYS_NO_REMOTE_CODE
from extractors.loading import (
    LoadingError,
    find_weights,
    load_model,
    resolve_dir,
    verify_torch_files,
)
from extractors.readers import resolve_path
from extractors.readers.timeseries import Series, read_series
from extractors.registry import register_expert


@dataclass
class TSItem:
    series: list[np.ndarray]  # one float32 array per (variable, window); NaN = not observed
    var_index: list[int]  # which variable (0..n_vars-1) each array belongs to
    n_vars: int
    n_windows: int
    window_index: list[int] | None = None  # MOIRAI: which packed window each array belongs to


def regrid(s: Series, step: float) -> Series:
    """Mean of the observations in consecutive bins of ``step`` from the first time stamp."""
    t = s.times
    k = np.floor((t - t[0]) / step + 1e-9).astype(np.int64)
    n = int(k.max()) + 1
    out = {}
    for var, vals in s.values.items():
        obs = np.isfinite(vals)
        sums = np.bincount(k[obs], weights=vals[obs], minlength=n)
        cnt = np.bincount(k[obs], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[var] = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    return Series(times=t[0] + np.arange(n) * step, values=out)


class FMTimeSeriesExpert(FMExpert):
    kind = "timeseries"
    window_default = 512
    source_keys = SOURCE_KEYS_NO_REMOTE_CODE
    series_keys = ("variables", "time_column", "step", "min_obs")  # taken by this base class

    def __init__(
        self,
        variables: list[str] | None = None,
        time_column: str = "hour",
        step: float | None = None,
        min_obs: int = 1,
        **config: Any,
    ) -> None:
        """The series keys every time-series FM expert takes; ``config``: the source keys."""
        self.check_source_keys(config)
        super().__init__(config)
        self.params.update(
            variables=sorted(map(str, variables)) if variables else None,
            time_column=str(time_column),
            step=float(step) if step else None,
            min_obs=max(1, int(min_obs)),
            window=None,  # chronos: the context window (``window``); moirai: none
        )

    @property
    def window(self) -> int:
        return int(self.params["window"] or self.window_default)

    def select(self, s: Series) -> list[np.ndarray]:
        if self.params["step"]:
            s = regrid(s, self.params["step"])
        names = self.params["variables"] or sorted(s.values)
        out = []
        for name in names:
            vals = s.values.get(name)
            if vals is None or int(np.isfinite(vals).sum()) < self.params["min_obs"]:
                continue
            out.append(np.asarray(vals, dtype=np.float32))
        if not out:
            raise SampleError("no variable with enough observations")
        return out

    def split_windows(self, vals: np.ndarray, window: int) -> list[np.ndarray]:
        """Consecutive windows of at most ``window`` steps, from the end (the last is complete);
        windows without any observation are dropped."""
        n = len(vals)
        ends = list(range(n, 0, -window))
        wins = [vals[max(0, e - window) : e] for e in reversed(ends)]
        return [w for w in wins if np.isfinite(w).any()]

    def load(self, value: str, root: Path) -> TSItem:
        s = read_series(resolve_path(root, value), time_column=self.params["time_column"])
        series, index = [], []
        for j, vals in enumerate(self.select(s)):
            for w in self.split_windows(vals, self.window):
                series.append(w)
                index.append(j)
        n_vars = len(set(index))
        return TSItem(series, index, n_vars, len(series))

    def item_info(self, item: TSItem) -> dict[str, Any]:
        return {"n_variables": item.n_vars, "n_windows": item.n_windows}

    @property
    def pooling(self) -> str:
        return "mean over observed time steps, then mean over variables"

    def pool_items(self, batch: list[TSItem], vecs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Per sample: windows of a variable weighted by their observed counts, variables equal."""
        out = np.zeros((len(batch), vecs.shape[1]), dtype=np.float64)
        i = 0
        for b, item in enumerate(batch):
            k = len(item.series)
            v, w = vecs[i : i + k].astype(np.float64), weights[i : i + k].astype(np.float64)
            idx = np.asarray(item.var_index)
            per_var = []
            for j in np.unique(idx):
                m = idx == j
                per_var.append((v[m] * w[m, None]).sum(0) / max(w[m].sum(), 1e-12))
            out[b] = np.mean(per_var, axis=0)
            i += k
        return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Chronos
# ---------------------------------------------------------------------------------------------

TINY_CHRONOS_CONFIG = {  # chronos_config of the T5 checkpoints (amazon/chronos-t5-*)
    "tokenizer_class": "MeanScaleUniformBins",
    "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
    "context_length": 512,
    "prediction_length": 64,
    "n_tokens": 4096,
    "n_special_tokens": 2,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "use_eos_token": True,
    "model_type": "seq2seq",
    "num_samples": 20,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}


@register_expert("chronos")
class ChronosExpert(FMTimeSeriesExpert):
    """Chronos (T5) encoder embeddings per variable, pooled over time and variables."""

    model_class = "T5ForConditionalGeneration"
    default_model_id = "amazon/chronos-t5-small"
    default_batch_size = 64
    packages = ("torch", "transformers", "chronos-forecasting", "numpy", "pandas")
    import_names = (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("chronos", "chronos-forecasting"),
    )

    def __init__(
        self,
        chronos_config: dict[str, Any] | None = None,
        window: int | None = None,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self.params["window"] = int(window) if window else None
        self.params["chronos_config"] = (
            {**TINY_CHRONOS_CONFIG, **(chronos_config or {})}
            if self.random_init
            else chronos_config
        )
        self._pipeline: Any = None

    @property
    def window(self) -> int:
        if self.params["window"]:
            return int(self.params["window"])
        if self.params["chronos_config"]:
            return int(self.params["chronos_config"]["context_length"])
        return self.window_default  # the T5 checkpoints' context_length

    @property
    def dim(self) -> int:
        return self.configured_dim("d_model", lambda model: model.config.d_model)

    def _load_model(self) -> Any:
        try:
            from chronos import ChronosConfig, ChronosModel, ChronosPipeline
        except ImportError as exc:
            raise missing_package(self.name, "chronos", "chronos-forecasting") from exc
        spec = self.model_spec()
        if spec.random_init:
            cc = dict(self.params["chronos_config"])
            extra = {
                "vocab_size": cc["n_tokens"],
                "pad_token_id": cc["pad_token_id"],
                "eos_token_id": cc["eos_token_id"],
                "decoder_start_token_id": cc["pad_token_id"],
            }
            model = load_model(spec, device=self.run_device, **extra)
        else:
            model = load_model(
                spec, device=self.run_device, dtype=autocast_dtype(self.run_device, self.precision)
            )
            cc = getattr(model.config, "chronos_config", None)
            if not cc:
                raise LoadingError(
                    f"expert {self.name!r}: {self.model_id} has no chronos_config in its config.json "
                    "(a Chronos T5 repository such as amazon/chronos-t5-small is expected)"
                )
            cc = {**cc, **(self.params["chronos_config"] or {})}
        config = ChronosConfig(**cc)
        if config.model_type != "seq2seq":
            raise LoadingError(
                f"expert {self.name!r}: only seq2seq (T5) Chronos models have encoder embeddings"
            )
        self._pipeline = ChronosPipeline(
            tokenizer=config.create_tokenizer(), model=ChronosModel(config, model)
        )
        return model

    @property
    def pipeline(self) -> Any:
        self.get_model()
        return self._pipeline

    def embed(self, batch: list[TSItem]) -> np.ndarray:
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = [s for item in batch for s in item.series]
        pipe = self.pipeline
        use_eos = bool(pipe.tokenizer.config.use_eos_token)
        vecs = np.zeros((len(flat), self.dim), dtype=np.float32)
        weights = np.zeros(len(flat), dtype=np.float32)
        order = np.argsort([len(s) for s in flat], kind="stable")
        with self.inference():
            for sl in forward_chunks(len(flat), self.batch_size):
                idx = order[sl]
                ctx = [torch.as_tensor(flat[i]) for i in idx]
                emb, _ = pipe.embed(ctx)  # left-padded with NaN to the longest
                n = max(len(c) for c in ctx)
                obs = torch.zeros((len(ctx), n), dtype=torch.bool)
                for r, c in enumerate(ctx):
                    obs[r, n - len(c) :] = ~torch.isnan(c)
                if use_eos:
                    obs = torch.cat([obs, torch.zeros((len(ctx), 1), dtype=torch.bool)], dim=1)
                emb = emb[:, -obs.shape[1] :].float()
                m = obs.unsqueeze(-1).to(emb.dtype)
                vecs[idx] = ((emb * m).sum(1) / m.sum(1).clamp(min=1)).numpy()
                weights[idx] = obs.sum(1).numpy()
        return self.pool_items(batch, vecs, weights)


# ---------------------------------------------------------------------------------------------
# MOIRAI
# ---------------------------------------------------------------------------------------------

MOIRAI_PATCH_SIZES = (8, 16, 32, 64, 128)


def moirai_module_class(expert: str = "moirai") -> Any:
    """uni2ts' ``MoiraiModule``; without the training stack (lightning, gluonts), its inference
    module alone is imported from the installed uni2ts."""
    try:
        from uni2ts.model.moirai.module import MoiraiModule

        return MoiraiModule
    except ImportError as exc:
        if importlib.util.find_spec("uni2ts") is None:
            raise missing_package(
                expert, "uni2ts", "uni2ts", " (with --no-deps; see envs/moirai.yaml)"
            ) from exc
        if getattr(exc, "name", None) in ("jax", "jaxtyping", "einops", "hydra", "torch"):
            raise missing_package(
                expert, str(exc.name), str(exc.name).replace("hydra", "hydra-core")
            ) from exc
    import sys

    name = "_medmix_uni2ts_moirai_module"
    if name not in sys.modules:
        spec = importlib.util.find_spec("uni2ts")
        path = Path(next(iter(spec.submodule_search_locations))) / "model" / "moirai" / "module.py"
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except ImportError as exc2:
            del sys.modules[name]
            raise missing_package(expert, str(exc2.name), str(exc2.name)) from exc2
    return sys.modules[name].MoiraiModule


@register_expert("moirai")
class MoiraiExpert(FMTimeSeriesExpert):
    """MOIRAI (uni2ts ``MoiraiModule``) encoder states, pooled over patches and variables."""

    model_class = "MoiraiModule"
    default_model_id = "Salesforce/moirai-1.1-R-small"
    packages = ("torch", "uni2ts", "jaxtyping", "einops", "hydra-core", "numpy", "pandas")
    import_names = (
        ("torch", "torch"),
        ("uni2ts", "uni2ts"),
        ("jaxtyping", "jaxtyping"),
        ("jax", "jax"),
        ("einops", "einops"),
        ("hydra", "hydra-core"),
    )

    def __init__(self, patch_size: int = 32, max_tokens: int | None = None, **config: Any) -> None:
        self.check_source_keys(config, also=self.series_keys)
        if int(patch_size) not in MOIRAI_PATCH_SIZES:
            raise ValueError(f"moirai: patch_size must be one of {MOIRAI_PATCH_SIZES}")
        super().__init__(**config)
        self.params.update(
            patch_size=int(patch_size), max_tokens=int(max_tokens) if max_tokens else None
        )

    @property
    def max_tokens(self) -> int:
        if self.params["max_tokens"]:
            return int(self.params["max_tokens"])
        if self.random_init:
            return int(self.params["config"].get("max_seq_len", 512))
        return int(getattr(self.get_model(), "max_seq_len", 512))

    @property
    def dim(self) -> int:
        return self.configured_dim("d_model", lambda model: model.d_model)

    def load(self, value: str, root: Path) -> TSItem:
        """All variables share the time axis; windows of ``max_tokens // n_vars`` patches."""
        s = read_series(resolve_path(root, value), time_column=self.params["time_column"])
        arrays = self.select(s)
        ps = self.params["patch_size"]
        n_vars = len(arrays)
        per_var = max(1, self.max_tokens // n_vars) * ps  # steps per window
        series, index, windows = [], [], []
        n = len(arrays[0])
        n_windows = 0
        for e in reversed(range(n, 0, -per_var)):
            win = [a[max(0, e - per_var) : e] for a in arrays]
            if not any(np.isfinite(w).any() for w in win):
                continue
            for j, w in enumerate(win):
                series.append(w)
                index.append(j)
                windows.append(n_windows)  # one packed sequence per window
            n_windows += 1
        return TSItem(series, index, n_vars, n_windows, windows)

    def _pack(self, item: TSItem, win: int) -> dict[str, np.ndarray]:
        """One window of one sample -> MOIRAI's packed token arrays."""
        ps = self.params["patch_size"]
        arrays = [s for s, w in zip(item.series, item.window_index or [], strict=True) if w == win]
        n = max(len(a) for a in arrays)
        n_patch = -(-n // ps)
        total = n_patch * ps
        target, observed, time_id, var_id = [], [], [], []
        for j, a in enumerate(arrays):
            padded = np.full(total, np.nan, dtype=np.float32)
            padded[total - len(a) :] = a
            obs = np.isfinite(padded)
            target.append(np.where(obs, padded, 0.0).reshape(n_patch, ps))
            observed.append(obs.reshape(n_patch, ps))
            time_id.append(np.arange(n_patch))
            var_id.append(np.full(n_patch, j))
        return {
            "target": np.concatenate(target).astype(np.float32),
            "observed": np.concatenate(observed),
            "time_id": np.concatenate(time_id),
            "variate_id": np.concatenate(var_id),
        }

    def _load_model(self) -> Any:
        import torch

        cls = moirai_module_class(self.name)
        if self.random_init:
            try:  # optional: uni2ts lives in envs/moirai.yaml
                from uni2ts.distribution import (
                    LogNormalOutput,
                    MixtureOutput,
                    NegativeBinomialOutput,
                    NormalFixedScaleOutput,
                    StudentTOutput,
                )
            except ImportError as exc:  # pragma: no cover - moirai_module_class raised first
                raise missing_package(self.name, "uni2ts", "uni2ts") from exc

            cfg = {
                "d_model": 64,
                "num_layers": 2,
                "patch_sizes": list(MOIRAI_PATCH_SIZES),
                "max_seq_len": 512,
                "attn_dropout_p": 0.0,
                "dropout_p": 0.0,
                "scaling": True,
                **self.params["config"],
            }
            cfg["patch_sizes"] = tuple(cfg["patch_sizes"])
            distr = MixtureOutput(
                [
                    StudentTOutput(),
                    NormalFixedScaleOutput(),
                    NegativeBinomialOutput(),
                    LogNormalOutput(),
                ]
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = cls(distr_output=distr, **cfg)
        else:
            spec = self.model_spec()
            folder = resolve_dir(spec, allow_patterns=["*.json", "*.safetensors"])
            kind, files = find_weights(folder, self.name)
            if kind == "torch":
                verify_torch_files(files, self.name)
            model = cls.from_pretrained(str(folder), local_files_only=True)
        if self.params["patch_size"] not in tuple(model.patch_sizes):
            raise LoadingError(
                f"expert {self.name!r}: patch_size {self.params['patch_size']} not in {model.patch_sizes}"
            )
        return model.eval().to(self.run_device)

    def _encode(self, packs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Encoder states of packed windows, right-padded to one length with ``sample_id`` 0."""
        import torch

        model = self.get_model()
        tu = _torch_util()
        ps = self.params["patch_size"]
        max_patch = max(model.patch_sizes)
        n = max(len(p["time_id"]) for p in packs)
        b = len(packs)
        target = torch.zeros((b, n, max_patch))
        observed = torch.zeros((b, n, max_patch), dtype=torch.bool)
        sample_id = torch.zeros((b, n), dtype=torch.long)
        time_id = torch.zeros((b, n), dtype=torch.long)
        variate_id = torch.zeros((b, n), dtype=torch.long)
        patch_size = torch.full((b, n), ps, dtype=torch.long)
        for i, p in enumerate(packs):
            k = len(p["time_id"])
            target[i, :k, :ps] = torch.from_numpy(p["target"])
            observed[i, :k, :ps] = torch.from_numpy(p["observed"])
            sample_id[i, :k] = 1
            time_id[i, :k] = torch.from_numpy(p["time_id"])
            variate_id[i, :k] = torch.from_numpy(p["variate_id"])
        dev = self.run_device
        target, observed, sample_id, time_id, variate_id, patch_size = (
            t.to(dev) for t in (target, observed, sample_id, time_id, variate_id, patch_size)
        )
        prediction_mask = torch.zeros_like(sample_id, dtype=torch.bool)
        loc, scale = model.scaler(
            target, observed * ~prediction_mask.unsqueeze(-1), sample_id, variate_id
        )
        reprs = model.in_proj((target - loc) / scale, patch_size)
        reprs = tu.mask_fill(reprs, prediction_mask, model.mask_encoding.weight)
        reprs = model.encoder(
            reprs, tu.packed_attention_mask(sample_id), time_id=time_id, var_id=variate_id
        )
        return self.to_numpy(reprs), [observed[i].any(-1).cpu().numpy() for i in range(b)]

    def embed(self, batch: list[TSItem]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        jobs = [(b, w) for b, item in enumerate(batch) for w in range(item.n_windows)]
        packs = [self._pack(batch[b], w) for b, w in jobs]
        vecs, weights, owners = [], [], []
        with self.inference():
            for sl in forward_chunks(len(packs), self.batch_size):
                states, obs = self._encode(packs[sl])
                for r, (pack, ob) in enumerate(zip(packs[sl], obs, strict=True)):
                    k = len(pack["time_id"])
                    st, ob = states[r, :k], ob[:k]
                    for j in np.unique(pack["variate_id"]):
                        m = (pack["variate_id"] == j) & ob
                        vecs.append(st[m].mean(0) if m.any() else np.zeros(self.dim, np.float32))
                        weights.append(float(m.sum()))
                        owners.append((jobs[sl.start + r][0], int(j)))
        out = np.zeros((len(batch), self.dim), dtype=np.float64)
        for b in range(len(batch)):
            per_var: dict[int, list[tuple[np.ndarray, float]]] = {}
            for (owner, j), v, w in zip(owners, vecs, weights, strict=True):
                if owner == b and w > 0:
                    per_var.setdefault(j, []).append((v, w))
            pooled = [sum(v * w for v, w in vw) / sum(w for _, w in vw) for vw in per_var.values()]
            out[b] = np.mean(pooled, axis=0) if pooled else 0.0
        return out.astype(np.float32)


def _torch_util() -> Any:
    try:  # optional: uni2ts lives in envs/moirai.yaml
        return importlib.import_module("uni2ts.common.torch_util")
    except ImportError as exc:  # pragma: no cover - the model loaded, so uni2ts is there
        raise missing_package("moirai", "uni2ts", "uni2ts") from exc
