"""Generic table adapter: any CSV / TSV / Parquet plus a column mapping -> manifest.

This is how a user brings their own cohort. The mapping (YAML file or dict)::

    dataset: my-cohort
    root: /data/my-cohort           # dataset root; relative paths are resolved from the YAML's folder
    table: clinical.csv             # .csv, .csv.gz, .tsv, .parquet; relative to root
    task_type: binary               # binary | multilabel | multiclass
    id: case_id                     # sample id column
    patient: patient_id             # optional (default: the id column)
    split:                          # EITHER an official split column ...
      column: split
      values: {train: [train], val: [val, validation], test: [test]}   # optional value map
      val_fraction: 0.15            # optional: move this share of the training patients to val
      seed: 0                       #   (seeded, by patient; stratify: a label name, optional)
    # split: {ratios: {train: 0.7, val: 0.1, test: 0.2}, seed: 0, stratify: outcome}  # ... OR ratios
    modalities:
      ct:   {kind: volume, column: ct_path}                      # a column holding the path
      wsi:  {kind: slide, template: "slides/{slide_id}.svs"}     # or a template over columns
      note: {kind: text, column: report}                         # text: the cell is the note
    labels:
      outcome: {column: vital_status, map: {Alive: 0, Dead: 1}}  # raw value -> label
      os_12m: {survival: {time: os_days, event: os_event, horizon: 365}}
    check_files: true               # path modalities: a file absent on disk -> modality missing
    drop_unlabeled: true            # drop samples whose labels are all unknown
    duplicate_ids: error            # or "first": keep the first row of a repeated id (a table
                                    # with one row per file of a case), the others dropped

``--mapping`` and ``--root`` must exist when named (an :class:`AdapterError` names the option
and the path; exit code 2 on the command line), as must the mapping's ``root``.

Survival labels: 1 if the event happened by the horizon, 0 if followed past it, unknown if
censored before it. Every problem (absent file, absent column, unmapped value) is reported
with the file and the column. A CSV/TSV that is not valid UTF-8 is still read (see
:func:`cohorts.adapters.readers.read_csv_text`); the rows re-decoded are in the summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cohorts.adapters import AdapterError, cli_errors, require_path
from cohorts.adapters.readers import read_csv_text
from cohorts.adapters.summary import Drops, redecoded_remarks, write_cohort
from cohorts.manifest import (
    MODALITY_KINDS,
    PATH_KINDS,
    SPLITS,
    TASK_TYPES,
    ManifestMeta,
    clean_id,
    inside_root,
)
from cohorts.splits import patient_split
from medmix.cli import non_negative_int

log = logging.getLogger("medmix.cohorts.table")

ADAPTER_VERSION = "1"
KNOWN_KEYS = {
    "dataset", "root", "table", "task_type", "id", "patient", "split", "modalities", "labels",
    "check_files", "drop_unlabeled", "classes", "description", "source", "duplicate_ids",
}  # fmt: skip
SPLIT_KEYS = {"column", "values", "val_fraction", "ratios", "seed", "stratify"}


def load_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a mapping YAML; ``root`` (and ``table``) are resolved against the YAML's folder."""
    path = require_path(path, "--mapping", "file", "table")
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AdapterError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(mapping, dict):
        raise AdapterError(f"{path}: the mapping must be a YAML mapping (key: value)")
    mapping.setdefault("root", ".")
    mapping["root"] = str((path.parent / os.path.expanduser(str(mapping["root"]))).resolve())
    mapping["_source"] = str(path)
    return mapping


def read_table(path: Path, redecoded: dict[str, int] | None = None) -> pd.DataFrame:
    """CSV / CSV.gz / TSV / Parquet as strings-or-numbers, with a clear error.

    Text that is not valid UTF-8 is decoded with the cp1252 fallback (rows counted in
    ``redecoded``), never an error.
    """
    if not path.is_file():
        raise AdapterError(f"{path}: table not found")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".tsv", ".tsv.gz", ".txt")):
            return read_csv_text(path, redecoded=redecoded, sep="\t")
        if name.endswith((".csv", ".csv.gz")):
            return read_csv_text(path, redecoded=redecoded)
    except Exception as exc:  # any reader error becomes one message naming the file
        raise AdapterError(f"{path}: unreadable table ({type(exc).__name__}: {exc})") from exc
    raise AdapterError(f"{path}: unsupported table format (csv, csv.gz, tsv, parquet)")


def _need(where: str, df: pd.DataFrame, cols: list[str], key: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise AdapterError(
            f"{where}: column(s) {missing} (from mapping key {key!r}) not in the table; it has {list(df.columns)}"
        )


def _template_columns(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _modality(df: pd.DataFrame, name: str, spec: dict, where: str) -> pd.Series:
    if "column" in spec:
        _need(where, df, [spec["column"]], f"modalities.{name}.column")
        out = df[spec["column"]].map(lambda v: None if pd.isna(v) else _fmt(v))
    elif "template" in spec:
        cols = _template_columns(spec["template"])
        _need(where, df, cols, f"modalities.{name}.template")

        def fill(row: pd.Series) -> str | None:
            if any(pd.isna(row[c]) for c in cols):
                return None
            return spec["template"].format(**{c: _fmt(row[c]) for c in cols})

        out = df.apply(fill, axis=1) if len(df) else pd.Series([], dtype=object)
    else:
        raise AdapterError(f"{where}: modalities.{name} needs 'column' or 'template'")
    out = out.astype(object)
    out[out.map(lambda v: v is None or (isinstance(v, str) and not v.strip()))] = None
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _label(
    df: pd.DataFrame, name: str, spec: dict, where: str, task_type: str, classes: list | None
) -> pd.Series:
    if "survival" in spec:
        s = spec["survival"]
        for k in ("time", "event", "horizon"):
            if k not in s:
                raise AdapterError(f"{where}: labels.{name}.survival needs {k!r}")
        _need(where, df, [s["time"], s["event"]], f"labels.{name}.survival")
        t = pd.to_numeric(df[s["time"]], errors="coerce")
        e = _binary(df[s["event"]], s.get("event_map"), f"{where}: column {s['event']!r}")
        y = pd.Series(np.nan, index=df.index)
        y[(e == 1) & (t <= s["horizon"])] = 1
        y[t > s["horizon"]] = 0
        return y
    if "column" not in spec:
        raise AdapterError(f"{where}: labels.{name} needs 'column' or 'survival'")
    col = spec["column"]
    _need(where, df, [col], f"labels.{name}.column")
    if task_type == "multiclass":
        cls = spec.get("classes") or classes
        if not cls:
            raise AdapterError(
                f"{where}: labels.{name}: a multiclass label needs 'classes' (the ordered class values)"
            )
        index = {str(c): i for i, c in enumerate(cls)}
        raw = df[col].map(lambda v: None if pd.isna(v) else index.get(_fmt(v), -1))
        bad = raw == -1
        if bad.any():
            raise AdapterError(
                f"{where}: column {col!r} has values not in classes {cls}: {sorted(set(df.loc[bad, col].astype(str)))[:5]}"
            )
        return pd.to_numeric(raw, errors="coerce")
    return _binary(df[col], spec.get("map"), f"{where}: column {col!r}")


def _binary(values: pd.Series, mapping: dict | None, where: str) -> pd.Series:
    if mapping:
        m = {str(k): v for k, v in mapping.items()}
        out = values.map(lambda v: np.nan if pd.isna(v) else m.get(_fmt(v), "?"))
        bad = out == "?"
        if bad.any():
            raise AdapterError(
                f"{where} has values the mapping does not cover: {sorted(set(values[bad].astype(str)))[:5]}"
            )
        return pd.to_numeric(out, errors="coerce")
    out = pd.to_numeric(values, errors="coerce")
    bad = (out.notna() & ~out.isin([0, 1])) | (out.isna() & values.notna())
    if bad.any():
        raise AdapterError(
            f"{where} is not 0/1 (give a 'map'): e.g. {sorted(set(values[bad].astype(str)))[:5]}"
        )
    return out


def _split(
    df: pd.DataFrame, spec: Any, where: str, patients: pd.Series, labels: pd.DataFrame
) -> np.ndarray:
    if not isinstance(spec, dict) or not ({"column"} & set(spec) or {"ratios"} & set(spec)):
        raise AdapterError(f"{where}: 'split' needs 'column' (official split) or 'ratios'")
    unknown = set(spec) - SPLIT_KEYS
    if unknown:
        raise AdapterError(
            f"{where}: unknown split key(s) {sorted(unknown)}; known: {sorted(SPLIT_KEYS)}"
        )
    strat = spec.get("stratify")
    if strat is not None and f"label_{strat}" not in labels:
        raise AdapterError(f"{where}: split.stratify {strat!r} is not a label name")
    stratify = labels[f"label_{strat}"].fillna(-1).to_numpy() if strat else None
    if "column" in spec:
        out = _official_split(df, spec, where)
        if spec.get("val_fraction"):
            out = _carve_val(out, spec, where, patients, stratify)
        return out
    return patient_split(patients, spec["ratios"], int(spec.get("seed", 0)), stratify=stratify)


def _carve_val(
    split: np.ndarray, spec: dict, where: str, patients: pd.Series, stratify: np.ndarray | None
) -> np.ndarray:
    """Move ``val_fraction`` of the training patients to ``val`` (official splits without one)."""
    frac = spec["val_fraction"]
    if not isinstance(frac, int | float) or not 0 < frac < 1:
        raise AdapterError(f"{where}: split.val_fraction must be a number in (0, 1), got {frac!r}")
    train = split == "train"
    if not train.any():
        return split
    part = patient_split(
        patients[train],
        {"train": 1.0 - frac, "val": float(frac)},
        int(spec.get("seed", 0)),
        stratify=None if stratify is None else stratify[train],
    )
    out = split.copy()
    out[train] = part
    return out


def _official_split(df: pd.DataFrame, spec: dict, where: str) -> np.ndarray:
    """The split column, its values mapped to train/val/test/external."""
    _need(where, df, [spec["column"]], "split.column")
    raw = df[spec["column"]].astype(str).str.strip()
    values = spec.get("values") or {s: [s] for s in SPLITS}
    lookup = {str(v): s for s, vs in values.items() for v in ([vs] if isinstance(vs, str) else vs)}
    out = raw.map(lookup)
    if out.isna().any():
        raise AdapterError(
            f"{where}: column {spec['column']!r} has split values not in the mapping {values}: {sorted(set(raw[out.isna()]))[:5]}"
        )
    return out.to_numpy(dtype=object)


def build(
    mapping: dict[str, Any], root: str | Path | None = None, seed: int | None = None
) -> tuple[pd.DataFrame, ManifestMeta, Drops]:
    """Mapping -> (manifest frame, meta, drops)."""
    where_map = mapping.get("_source", "<mapping>")
    unknown = set(mapping) - KNOWN_KEYS - {"_source"}
    if unknown:
        raise AdapterError(
            f"{where_map}: unknown mapping key(s) {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}"
        )
    for key in ("table", "id", "task_type", "modalities", "labels", "split"):
        if key not in mapping:
            raise AdapterError(f"{where_map}: mapping key {key!r} is required")
    task_type = mapping["task_type"]
    if task_type not in TASK_TYPES:
        raise AdapterError(f"{where_map}: task_type {task_type!r} not in {TASK_TYPES}")
    if root is not None:
        require_path(root, "--root", "folder", "table")
    else:
        root = mapping.get("root", ".")
        if not Path(root).is_dir():
            raise AdapterError(f"{where_map}: root {root}: folder not found (or give --root)")
    root = Path(root).resolve()
    table_path = Path(os.path.expanduser(str(mapping["table"])))
    table_path = table_path if table_path.is_absolute() else root / table_path
    redecoded: dict[str, int] = {}
    df = read_table(table_path, redecoded)
    where = str(table_path)
    drops = Drops()

    _need(where, df, [mapping["id"]], "id")
    # ids without surrounding whitespace ("P003 " is P003): clean_id, as every adapter
    ids = df[mapping["id"]].map(clean_id)
    if ids.isna().any():
        raise AdapterError(
            f"{where}: column {mapping['id']!r} (id) has empty values on {int(ids.isna().sum())} row(s)"
        )
    pcol = mapping.get("patient", mapping["id"])
    _need(where, df, [pcol], "patient")
    out = pd.DataFrame({"sample_id": ids, "patient_id": df[pcol].map(clean_id)})
    policy = mapping.get("duplicate_ids", "error")
    if policy not in ("error", "first"):
        raise AdapterError(f"{where_map}: duplicate_ids {policy!r} must be 'error' or 'first'")
    if policy == "first":
        extra_rows = out["sample_id"].duplicated(keep="first")
        drops.add(
            f"repeated id in column {mapping['id']!r} (first row kept)",
            out.loc[extra_rows, "sample_id"],
        )
        out, df = out[~extra_rows].reset_index(drop=True), df[~extra_rows].reset_index(drop=True)
    dup = out["sample_id"].duplicated(keep=False)
    if dup.any():
        raise AdapterError(
            f"{where}: column {mapping['id']!r} (id) has duplicate values (set duplicate_ids: first to keep the first row of each): {sorted(set(out.loc[dup, 'sample_id']))[:5]}"
        )

    modalities: dict[str, str] = {}
    remarks: list[str] = redecoded_remarks(redecoded)
    check = bool(mapping.get("check_files", True))
    for name, spec in (mapping["modalities"] or {}).items():
        kind = (spec or {}).get("kind")
        if kind not in MODALITY_KINDS:
            raise AdapterError(
                f"{where_map}: modalities.{name}.kind {kind!r} not in {MODALITY_KINDS}"
            )
        modalities[name] = kind
        col = _modality(df, name, spec, where)
        if kind in PATH_KINDS:
            present = col.notna()
            escaping = present & col.map(lambda p: p is not None and not inside_root(root, p))
            if escaping.any():
                raise AdapterError(
                    f"{where}: modality {name!r} has paths outside the dataset root {root}: {col[escaping].head(3).tolist()}"
                )
            if check:
                absent = present & ~col.map(lambda p: p is not None and (root / p).exists())
                if absent.any():
                    remarks.append(
                        f"{int(absent.sum())} {name} file(s) named in the table are absent under the root: modality missing"
                    )
                    log.warning("%s: %s", where, remarks[-1])
                col[absent] = None
        out[name] = col
    if not modalities:
        raise AdapterError(f"{where_map}: 'modalities' is empty")

    labels = list((mapping["labels"] or {}).keys())
    if not labels:
        raise AdapterError(f"{where_map}: 'labels' is empty")
    for name in labels:
        out[f"label_{name}"] = _label(
            df, name, mapping["labels"][name] or {}, where, task_type, mapping.get("classes")
        )

    nopatient = out["patient_id"].isna()
    drops.add(f"patient column {pcol!r} empty", out.loc[nopatient, "sample_id"])
    keep = ~nopatient
    if mapping.get("drop_unlabeled", True):
        unl = keep & out[[f"label_{n}" for n in labels]].isna().all(axis=1)
        drops.add("label unknown", out.loc[unl, "sample_id"])
        keep &= ~unl
    out, df = out[keep].reset_index(drop=True), df[keep].reset_index(drop=True)
    split_spec = dict(mapping["split"]) if isinstance(mapping["split"], dict) else mapping["split"]
    seeded = isinstance(split_spec, dict) and (
        "ratios" in split_spec or "val_fraction" in split_spec
    )
    if seed is not None and seeded:
        split_spec["seed"] = seed
    out["split"] = (
        _split(df, split_spec, where, out["patient_id"], out)
        if len(out)
        else np.array([], dtype=object)
    )
    lab = out[[f"label_{n}" for n in labels]]
    if not lab.isna().any().any():
        out[lab.columns] = lab.astype("int8" if task_type != "multiclass" else "int64")
    extra: dict[str, Any] = {
        "table": str(table_path),
        "mapping": str(where_map),
        "remarks": remarks,
        "redecoded": redecoded,
    }
    if task_type == "multiclass":
        classes = mapping.get("classes") or next(
            (s.get("classes") for s in mapping["labels"].values() if s), None
        )
        extra["n_classes"] = len(classes or [])
        extra["classes"] = list(classes or [])
    if seeded:
        extra["seed"] = int(split_spec.get("seed", 0))
    meta = ManifestMeta(
        dataset=str(mapping.get("dataset", table_path.stem)),
        task_type=task_type,
        modalities=modalities,
        labels=labels,
        adapter="table",
        adapter_version=ADAPTER_VERSION,
        root=str(root),
        extra=extra,
    )
    return out, meta, drops


def run(
    mapping: str | Path | dict,
    out: str | Path,
    root: str | Path | None = None,
    seed: int | None = None,
    dataset: str | None = None,
) -> Path:
    mp = load_mapping(mapping) if not isinstance(mapping, dict) else mapping
    require_path(root, "--root", "folder", "table")
    if dataset:
        mp = {**mp, "dataset": dataset}
    df, meta, drops = build(mp, root, seed)
    return write_cohort(df, meta, out, drops, log)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "table",
        help="any CSV/Parquet + a YAML column mapping (e.g. config/cohorts/mmist_ccrcc.yaml) -> manifest",
    )
    p.add_argument("--mapping", required=True, help="the YAML column mapping")
    p.add_argument("--root", help="dataset root (overrides the mapping's 'root')")
    p.add_argument(
        "--out", required=True, help="output folder: manifest.parquet, summary.csv, summary.md"
    )
    p.add_argument("--dataset", help="dataset name (overrides the mapping's 'dataset')")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        help="split seed when the mapping splits by ratios or carves val (overrides split.seed)",
    )
    p.set_defaults(func=_main)


@cli_errors("table")
def _main(args: argparse.Namespace) -> int:
    run(args.mapping, args.out, args.root, args.seed, args.dataset)
    return 0
