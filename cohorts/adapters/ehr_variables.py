"""The 46 EHR variables of the MIMIC adapters, with their itemids, units and plausible ranges.

One table, used by both MIMIC-IV (v2.x ``icu/chartevents`` + ``hosp/labevents``) and MIMIC-III
(v1.4 ``CHARTEVENTS`` from CareVue and MetaVision + ``LABEVENTS``), so that a model trained on
one cohort reads the other's series column for column (the ``external`` protocol).

* ``chart_iv``: MIMIC-IV ``icu/d_items`` itemids (MetaVision numbering, 22xxxx).
* ``chart_cv`` / ``chart_mv``: MIMIC-III CareVue (< 10000) and MetaVision (22xxxx) itemids;
  MIMIC-III MetaVision and MIMIC-IV share their numbering.
* ``lab``: ``d_labitems`` itemids (50xxx/51xxx), the same in MIMIC-III and MIMIC-IV.
* ``unit``: the unit every value is converted to; ``fahrenheit`` lists itemids recorded in °F
  (converted to °C); ``fraction_to_percent`` marks FiO2, charted as a fraction in some items.
* ``valid``: values outside ``[lo, hi]`` (after conversion) are dropped as charting errors.

Every itemid here was checked against the MIMIC-III demo's ``D_ITEMS`` / ``D_LABITEMS``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    unit: str
    valid: tuple[float, float]
    chart_iv: tuple[int, ...] = ()
    chart_cv: tuple[int, ...] = ()
    chart_mv: tuple[int, ...] = ()
    lab: tuple[int, ...] = ()
    fahrenheit: tuple[int, ...] = ()
    fraction_to_percent: bool = False
    label: str = ""


V = Variable
# fmt: off
VARIABLES: tuple[Variable, ...] = (
    # ---- vitals and bedside measurements (chartevents) ----
    V("heart_rate", "bpm", (0, 350), (220045,), (211,), (220045,), label="Heart Rate"),
    V("sbp", "mmHg", (0, 400), (220050, 220179), (51, 442, 455, 6701), (220050, 220179),
      label="Systolic blood pressure, arterial or non-invasive"),
    V("dbp", "mmHg", (0, 300), (220051, 220180), (8368, 8440, 8441, 8555), (220051, 220180),
      label="Diastolic blood pressure, arterial or non-invasive"),
    V("mbp", "mmHg", (0, 300), (220052, 220181, 225312), (52, 443, 456, 6702), (220052, 220181, 225312),
      label="Mean blood pressure, arterial or non-invasive"),
    V("resp_rate", "insp/min", (0, 80), (220210, 224690), (615, 618), (220210, 224690),
      label="Respiratory rate"),
    V("temperature", "degC", (25, 45), (223761, 223762), (676, 677, 678, 679), (223761, 223762),
      fahrenheit=(223761, 678, 679), label="Body temperature (°F items converted)"),
    V("spo2", "%", (0, 100), (220277,), (646,), (220277,), label="O2 saturation, pulse oximetry"),
    V("gcs_eye", "score", (1, 4), (220739,), (184,), (220739,), label="GCS eye opening"),
    V("gcs_verbal", "score", (1, 5), (223900,), (723,), (223900,), label="GCS verbal response"),
    V("gcs_motor", "score", (1, 6), (223901,), (454,), (223901,), label="GCS motor response"),
    V("fio2", "%", (21, 100), (223835,), (190, 3420), (223835,), fraction_to_percent=True,
      label="Inspired O2 fraction (fractions <= 1 converted to %)"),
    V("weight", "kg", (1, 500), (226512, 224639), (762, 763), (226512, 224639),
      label="Admission or daily weight"),
    V("cvp", "mmHg", (-10, 50), (220074,), (113,), (220074,), label="Central venous pressure"),
    # ---- laboratory values (labevents; glucose also from bedside chart items) ----
    V("glucose", "mg/dL", (0, 2000), (220621, 225664, 226537), (807, 811, 1529, 3745),
      (220621, 225664, 226537), lab=(50931, 50809), label="Glucose (serum, blood gas, fingerstick)"),
    V("albumin", "g/dL", (0, 10), lab=(50862,), label="Albumin"),
    V("alt", "IU/L", (0, 20000), lab=(50861,), label="Alanine aminotransferase"),
    V("ast", "IU/L", (0, 40000), lab=(50878,), label="Aspartate aminotransferase"),
    V("alkaline_phosphatase", "IU/L", (0, 5000), lab=(50863,), label="Alkaline phosphatase"),
    V("anion_gap", "mEq/L", (0, 60), lab=(50868,), label="Anion gap"),
    V("bicarbonate", "mEq/L", (0, 70), lab=(50882,), label="Bicarbonate"),
    V("bilirubin_total", "mg/dL", (0, 80), lab=(50885,), label="Bilirubin, total"),
    V("bun", "mg/dL", (0, 300), lab=(51006,), label="Urea nitrogen"),
    V("calcium_total", "mg/dL", (0, 25), lab=(50893,), label="Calcium, total"),
    V("calcium_ionized", "mmol/L", (0, 5), lab=(50808,), label="Free (ionized) calcium"),
    V("chloride", "mEq/L", (50, 200), lab=(50902,), label="Chloride"),
    V("creatinine", "mg/dL", (0, 40), lab=(50912,), label="Creatinine"),
    V("magnesium", "mg/dL", (0, 20), lab=(50960,), label="Magnesium"),
    V("phosphate", "mg/dL", (0, 30), lab=(50970,), label="Phosphate"),
    V("potassium", "mEq/L", (0, 15), lab=(50971, 50822), label="Potassium (serum, whole blood)"),
    V("sodium", "mEq/L", (50, 250), lab=(50983, 50824), label="Sodium (serum, whole blood)"),
    V("hematocrit", "%", (0, 100), lab=(51221, 50810), label="Hematocrit"),
    V("hemoglobin", "g/dL", (0, 30), lab=(51222, 50811), label="Hemoglobin"),
    V("platelets", "K/uL", (0, 3000), lab=(51265,), label="Platelet count"),
    V("wbc", "K/uL", (0, 1000), lab=(51301, 51300), label="White blood cells"),
    V("rdw", "%", (0, 50), lab=(51277,), label="Red cell distribution width"),
    V("mcv", "fL", (30, 200), lab=(51250,), label="Mean corpuscular volume"),
    V("inr", "ratio", (0, 20), lab=(51237,), label="INR (PT)"),
    V("pt", "sec", (0, 200), lab=(51274,), label="Prothrombin time"),
    V("ptt", "sec", (0, 250), lab=(51275,), label="Partial thromboplastin time"),
    V("fibrinogen", "mg/dL", (0, 2000), lab=(51214,), label="Fibrinogen, functional"),
    V("lactate", "mmol/L", (0, 50), lab=(50813,), label="Lactate (blood gas)"),
    V("ph", "units", (6.3, 8.0), lab=(50820,), label="pH (blood gas)"),
    V("pco2", "mmHg", (0, 250), lab=(50818,), label="pCO2 (blood gas)"),
    V("po2", "mmHg", (0, 800), lab=(50821,), label="pO2 (blood gas)"),
    V("base_excess", "mEq/L", (-50, 50), lab=(50802,), label="Base excess (blood gas)"),
    V("troponin_t", "ng/mL", (0, 100), lab=(51003,), label="Troponin T"),
)
# fmt: on

NAMES: tuple[str, ...] = tuple(v.name for v in VARIABLES)
BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}
N_HOURS = 48


def itemid_map(source: str) -> dict[int, str]:
    """itemid -> variable name for one source: ``chart_iv``, ``chart_iii`` (CareVue + MetaVision) or ``lab``."""
    out: dict[int, str] = {}
    for v in VARIABLES:
        if source == "chart_iv":
            ids = v.chart_iv
        elif source == "chart_iii":
            ids = v.chart_cv + v.chart_mv
        elif source == "lab":
            ids = v.lab
        else:
            raise ValueError(f"unknown itemid source {source!r} (chart_iv, chart_iii, lab)")
        for i in ids:
            if i in out and out[i] != v.name:
                raise ValueError(f"itemid {i} is mapped to both {out[i]!r} and {v.name!r}")
            out[i] = v.name
    return out


def markdown_table() -> str:
    """The variable table as Markdown (docs/adapters.md embeds it)."""

    def ids(t: tuple[int, ...]) -> str:
        return ", ".join(map(str, t)) or "–"

    lines = [
        "| # | variable | unit | MIMIC-IV chartevents | MIMIC-III CareVue | MIMIC-III MetaVision | labevents | valid range |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, v in enumerate(VARIABLES, 1):
        lines.append(
            f"| {i} | `{v.name}` ({v.label}) | {v.unit} | {ids(v.chart_iv)} | {ids(v.chart_cv)} | "
            f"{ids(v.chart_mv)} | {ids(v.lab)} | {v.valid[0]:g} – {v.valid[1]:g} |"
        )
    return "\n".join(lines)
