"""EHR time-series experts: catch22 per variable, and simple per-variable statistics.

The variable set fixes the embedding dim. Give it as ``variables: [...]``; otherwise the expert
learns it: the driver calls :meth:`fit` on the training files (``requires_fit`` is set for
this instance) and the variables are the sorted union of their columns. Without a fit, the
first file embedded fixes it (sorted columns). A variable absent from a file, or observed fewer
than ``min_obs`` times, gets zero features and its observed fraction (0 when absent), so a model
can tell "missing" from "zero"; a file where none of the variables is observed is a failed sample
(its embedding would be all zeros). Outputs are always finite. Time is in hours (the reader
converts date-time and duration time columns), so ``step`` and the slopes are per hour.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Expert, SampleError
from extractors.readers import resolve_path
from extractors.readers.timeseries import Series, read_series
from extractors.registry import register_expert

log = logging.getLogger("medmix.extract")


class TimeSeriesExpert(Expert):
    kind = "timeseries"
    per_var_names: tuple[str, ...] = ()

    def __init__(self, variables: list[str] | None, time_column: str, **params: Any) -> None:
        """``params``: the run parameters (``batch_size``, ``device``, ``seed``) and the
        subclass's own settings; the subclasses' signatures give the defaults."""
        super().__init__(
            variables=sorted(map(str, variables)) if variables is not None else None,
            time_column=str(time_column),
            **params,
        )
        self._variables: list[str] | None = self.params["variables"]
        # Learn the variable set from the training split when it is not configured.
        self.requires_fit = variables is None  # type: ignore[misc]

    @property
    def variables(self) -> list[str]:
        if self._variables is None:
            raise RuntimeError(
                f"expert {self.name!r}: the variable set (and so the dim) is not known yet; "
                "set `variables:` or fit on the training files first"
            )
        return list(self._variables)

    @property
    def dim(self) -> int:
        return len(self.variables) * len(self.per_var_names)

    @property
    def feature_names(self) -> list[str]:
        return [f"{v}:{f}" for v in self.variables for f in self.per_var_names]

    @property
    def pooling(self) -> str:
        return "per-variable features, concatenated"

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        cfg["variables"] = self._variables
        return cfg

    def load(self, value: str, root: Path) -> Series:
        return read_series(resolve_path(root, value), time_column=self.params["time_column"])

    def fit(self, loaded: list[Series]) -> None:
        if self.params["variables"] is not None:
            return
        names = sorted({v for s in loaded for v in s.values})
        if not names:
            raise ValueError(f"expert {self.name!r}: no variables in the training files")
        self._variables = names

    def _variable_features(self, s: Series, values: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _observed(
        self, s: Series, values: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Zero features with the observed fraction last, and the mask of observed values
        (``None`` when the variable is absent from the file)."""
        out = np.zeros(len(self.per_var_names), dtype=np.float64)
        if values is None:
            return out, None
        obs = np.isfinite(values)
        out[-1] = int(obs.sum()) / max(len(s.times), 1)
        return out, obs

    def embed(self, batch: list[Series]) -> np.ndarray:
        if self._variables is None and batch:
            self._variables = sorted(batch[0].values)
            log.warning(
                "%s: variables not configured or fitted; using the first file's: %s",
                self.name,
                self._variables,
            )
        names = self.variables
        for s in batch:  # the driver retries one by one: only that file fails
            if not any(np.isfinite(s.values[v]).any() for v in names if v in s.values):
                raise SampleError(
                    f"none of the expert's {len(names)} variables is observed in the file"
                )
        out = np.zeros((len(batch), self.dim), dtype=np.float64)
        k = len(self.per_var_names)
        for b, s in enumerate(batch):
            for j, var in enumerate(self.variables):
                out[b, j * k : (j + 1) * k] = self._variable_features(s, s.values.get(var))
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _regular_grid(t_obs: np.ndarray, step: float, max_len: int) -> np.ndarray:
    """A regular grid from the first to the last observation at ``step`` (at most ``max_len``
    points; falls back to the observation times when the span holds fewer than 3 steps)."""
    span = float(t_obs[-1] - t_obs[0])
    if not (step > 0 and np.isfinite(step)) or span <= 0:
        return t_obs
    n = int(np.floor(span / step + 1e-9)) + 1
    if n > max_len:
        return np.linspace(t_obs[0], t_obs[-1], max_len)
    if n < 3:
        return t_obs
    return t_obs[0] + np.arange(n, dtype=np.float64) * step


@register_expert("catch22")
class Catch22Expert(TimeSeriesExpert):
    """catch22 (Lubba et al. 2019, pycatch22) per variable + the observed fraction.

    Per variable: the observed values (see the reader's cleaning rules) are linearly
    interpolated onto a regular grid over that variable's observed span, at ``step`` hours (default:
    the file's median time step, i.e. hourly for hourly files; at most ``max_len`` points), and
    the 22 catch22 features computed (``catch24: true`` adds mean and std; catch22 alone is
    scale-free). Fewer than ``min_obs`` (3) observations -> zeros. Non-finite features -> 0.
    """

    packages = ("pycatch22", "numpy", "pandas")
    _C22 = (
        "DN_HistogramMode_5", "DN_HistogramMode_10", "DN_OutlierInclude_p_001_mdrmd",
        "DN_OutlierInclude_n_001_mdrmd", "CO_FirstCrossing_acf_1e_pointOfCrossing", "CO_FirstMin_ac",
        "SP_Summaries_fft_area_5_1", "SP_Summaries_fft_wq_50", "FC_LocalSimple_mean3_stde",
        "FC_LocalSimple_mean1_taurat", "MD_pNN_pnn40", "SB_BinaryStats_mean_longstretch1",
        "SB_BinaryStats_diff_longstretch0", "SB_MotifThree_quantile_hh", "CO_HistogramAMI_even_5bin_ami2",
        "CO_trev_1_num", "IN_AutoMutualInfoStats_40_gaussian_fmmi",
        "SB_TransitionMatrix_quantile_3_ac_sumdiagcov", "PD_PeriodicityWang_th0_01",
        "CO_Embed2_Dist_tau_d_expfit_meandiff", "SC_FluctAnal_2_rsrangefit_50_1_logi_prop_r1",
        "SC_FluctAnal_2_dfa_50_1_2_logi_prop_r1",
    )  # fmt: skip

    def __init__(
        self,
        variables: list[str] | None = None,
        time_column: str = "hour",
        catch24: bool = False,
        min_obs: int = 3,
        step: float | None = None,
        max_len: int = 2000,
        batch_size: int = 64,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            variables,
            time_column,
            batch_size=batch_size,
            device=device,
            seed=seed,
            catch24=bool(catch24),
            min_obs=max(3, int(min_obs)),
            step=step,
            max_len=int(max_len),
        )
        extra = ("DN_Mean", "DN_Spread_Std") if catch24 else ()
        self.per_var_names = (*self._C22, *extra, "observed_fraction")

    def _variable_features(self, s: Series, values: np.ndarray | None) -> np.ndarray:
        import pycatch22

        out, obs = self._observed(s, values)
        if obs is None or int(obs.sum()) < self.params["min_obs"]:
            return out
        t_obs, v_obs = s.times[obs], values[obs]
        step = self.params["step"]
        if step is None:
            step = float(np.median(np.diff(s.times))) if len(s.times) > 1 else 1.0
        grid = _regular_grid(t_obs, float(step), self.params["max_len"])
        series = np.interp(grid, t_obs, v_obs)
        res = pycatch22.catch22_all(series.tolist(), catch24=self.params["catch24"])
        feats = dict(zip(res["names"], res["values"], strict=True))
        vals = np.asarray([feats.get(n, 0.0) for n in self.per_var_names[:-1]], dtype=np.float64)
        out[:-1] = np.where(np.isfinite(vals), vals, 0.0)
        return out


@register_expert("ts-stats")
class TsStatsExpert(TimeSeriesExpert):
    """Per variable: mean, std, min, max, last, least-squares slope (units per hour) and the
    observed fraction, over the observed values (no interpolation). Raw units: standardise
    downstream. A variable with no observation gets zeros and fraction 0."""

    packages = ("numpy", "pandas")
    per_var_names = ("mean", "std", "min", "max", "last", "slope", "observed_fraction")

    def __init__(
        self,
        variables: list[str] | None = None,
        time_column: str = "hour",
        batch_size: int = 256,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(variables, time_column, batch_size=batch_size, device=device, seed=seed)

    def _variable_features(self, s: Series, values: np.ndarray | None) -> np.ndarray:
        out, obs = self._observed(s, values)
        if obs is None or not obs.any():
            return out
        n_obs = int(obs.sum())
        t, v = s.times[obs], values[obs]
        slope = 0.0
        if n_obs >= 2:
            tc = t - t.mean()
            denom = float((tc**2).sum())
            slope = float((tc * (v - v.mean())).sum() / denom) if denom > 0 else 0.0
        out[:-1] = [v.mean(), v.std(), v.min(), v.max(), v[-1], slope]
        return out
