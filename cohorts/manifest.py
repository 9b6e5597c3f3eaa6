"""The manifest contract (docs/design.md §3.1): one row per sample, written by every adapter.

Columns: ``sample_id`` (unique), ``patient_id``, ``split`` (train/val/test/external), one
column per modality (a path relative to the dataset root, or the text itself for text
modalities; null = missing) and one ``label_{name}`` column per label. Parquet key-value
metadata carries the dataset name, task type, modality kinds, label names and adapter version.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medmix.errors import UserError
from medmix.io import atomic_path

TASK_TYPES = ("multilabel", "binary", "multiclass")
MODALITY_KINDS = ("image", "volume", "slide", "text", "timeseries")
SPLITS = ("train", "val", "test", "external")
PATH_KINDS = ("image", "volume", "slide", "timeseries")
META_KEY = b"medmix.manifest"


class ManifestError(UserError, ValueError):
    """A fatal manifest problem; the message names the file, the column and offending ids."""


@dataclass
class ManifestMeta:
    dataset: str
    task_type: str
    modalities: dict[str, str]  # modality name -> kind
    labels: list[str]  # label names, without the ``label_`` prefix
    adapter: str
    adapter_version: str = "1"
    root: str = "."  # dataset root that modality paths are relative to
    extra: dict = field(default_factory=dict)

    def label_columns(self) -> list[str]:
        return [f"label_{name}" for name in self.labels]


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, meta: ManifestMeta) -> Path:
    """Validate and write a manifest atomically; returns the path."""
    validate_manifest(df, meta, path=path)
    cols = ["sample_id", "patient_id", "split", *meta.modalities, *meta.label_columns()]
    table = pa.Table.from_pandas(df[cols].reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata({META_KEY: json.dumps(asdict(meta)).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: str | os.PathLike) -> tuple[pd.DataFrame, ManifestMeta]:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ManifestError(f"{path}: no MedMIX manifest metadata (key {META_KEY.decode()!r})")
    meta = ManifestMeta(**json.loads(raw))
    return table.to_pandas(), meta


def clean_id(value: object) -> str | None:
    """A sample or patient id as the manifest stores it: text without surrounding whitespace;
    ``None`` for a null or blank cell. Every adapter reads ids through it, so ``P003`` and
    ``"P003 "`` are one id."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric id column read as float: 17.0 -> "17"
    text = str(value).strip()
    return text or None


def id_key(value: object) -> str:
    """The key two ids that may name the same patient share: stripped and case-folded
    (``P003``, ``p003`` and ``" P003"``). The splits group patients by it and the validator
    refuses two ids with one key in different splits."""
    return str(value).strip().casefold()


def _first_ids(df: pd.DataFrame, mask: pd.Series, n: int = 5) -> str:
    ids = df.loc[mask, "sample_id"].astype(str).head(n).tolist() if "sample_id" in df else []
    more = int(mask.sum()) - len(ids)
    return ", ".join(ids) + (f" (+{more} more)" if more > 0 else "")


def validate_manifest(
    df: pd.DataFrame,
    meta: ManifestMeta,
    path: str | os.PathLike = "<manifest>",
    root: str | os.PathLike | None = None,
    check_files: bool = False,
) -> None:
    """Raise ManifestError on the first fatal problem.

    Checks: required and declared columns present; unique non-null sample ids; ids without
    surrounding whitespace; split values; no patient in two splits, also under ids that differ
    only in case or whitespace (:func:`id_key`); label values in range; modality paths
    relative and inside the dataset root (and existing, when ``check_files``). A path that
    cannot be resolved (a symlink loop) is left to the extraction, which fails that sample.
    """
    where = str(path)
    if meta.task_type not in TASK_TYPES:
        raise ManifestError(f"{where}: task_type {meta.task_type!r} not in {TASK_TYPES}")
    for mod, kind in meta.modalities.items():
        if kind not in MODALITY_KINDS:
            raise ManifestError(
                f"{where}: modality {mod!r} has kind {kind!r}, not in {MODALITY_KINDS}"
            )
    required = ["sample_id", "patient_id", "split", *meta.modalities, *meta.label_columns()]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}")
    if not meta.labels:
        raise ManifestError(f"{where}: no label columns declared")

    sid = df["sample_id"]
    if sid.isna().any():
        raise ManifestError(
            f"{where}: column 'sample_id' has {int(sid.isna().sum())} null value(s)"
        )
    dup = sid.duplicated(keep=False)
    if dup.any():
        raise ManifestError(f"{where}: column 'sample_id' has duplicate ids: {_first_ids(df, dup)}")
    if df["patient_id"].isna().any():
        raise ManifestError(
            f"{where}: column 'patient_id' is null for ids {_first_ids(df, df['patient_id'].isna())}"
        )
    for col in ("sample_id", "patient_id"):
        text = df[col].astype(str)
        unclean = text != text.str.strip()
        if unclean.any():
            raise ManifestError(
                f"{where}: column {col!r} has ids with surrounding whitespace "
                f"{sorted(set(text[unclean]))[:5]!r}; strip them (cohorts.manifest.clean_id)"
            )
        if (text == "").any():
            raise ManifestError(
                f"{where}: column {col!r} has empty ids for ids {_first_ids(df, text == '')}"
            )

    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        raise ManifestError(
            f"{where}: column 'split' has values outside {SPLITS} for ids {_first_ids(df, bad_split)}"
        )
    nsplits = df.groupby("patient_id")["split"].nunique()
    leaking = nsplits[nsplits > 1].index
    if len(leaking):
        mask = df["patient_id"].isin(leaking)
        raise ManifestError(
            f"{where}: {len(leaking)} patient(s) appear in more than one split "
            f"(first: {list(map(str, leaking[:5]))}); ids {_first_ids(df, mask)}"
        )

    _check_near_duplicate_patients(df, where)

    for col in meta.label_columns():
        values = pd.to_numeric(df[col], errors="coerce")
        non_numeric = values.isna() & df[col].notna()
        if non_numeric.any():
            raise ManifestError(
                f"{where}: column {col!r} has non-numeric values for ids {_first_ids(df, non_numeric)}"
            )
        if meta.task_type in ("binary", "multilabel"):
            bad = values.notna() & ~values.isin([0, 1])
            if bad.any():
                raise ManifestError(
                    f"{where}: column {col!r} has values outside {{0, 1}} for ids {_first_ids(df, bad)}"
                )
        else:
            ncls = int(meta.extra.get("n_classes", 0))
            bad = values.notna() & (
                (values < 0) | (values != values.round()) | ((values >= ncls) if ncls else False)
            )
            if bad.any():
                raise ManifestError(
                    f"{where}: column {col!r} has class ids outside [0, {ncls}) for ids {_first_ids(df, bad)}"
                )

    base = Path(os.path.realpath(root if root is not None else meta.root))
    for mod, kind in meta.modalities.items():
        if kind not in PATH_KINDS:
            continue
        present = df[mod].notna()
        paths = df.loc[present, mod].astype(str)
        absolute = paths.map(lambda p: os.path.isabs(p)).astype(bool)
        escaping = paths.map(lambda p: not inside_root(base, p)).astype(bool)
        bad = absolute | escaping
        if bad.any():
            mask = present.copy()
            mask.loc[present] = bad.values
            raise ManifestError(
                f"{where}: column {mod!r} has paths outside the dataset root {base} for ids {_first_ids(df, mask)}"
            )
        if check_files:
            exists = paths.map(lambda p: os.path.exists(base / p))  # False on any OSError
            if not exists.all():
                mask = present.copy()
                mask.loc[present] = (~exists).values
                raise ManifestError(
                    f"{where}: column {mod!r} names files that do not exist for ids {_first_ids(df, mask)}"
                )


def _check_near_duplicate_patients(df: pd.DataFrame, where: str) -> None:
    """Patient ids that differ only in case or surrounding whitespace, in different splits:
    most likely one patient typed two ways, so a leak between the splits."""
    pid = df["patient_id"].astype(str)
    keys = pid.map(id_key)
    per_key = pd.DataFrame({"key": keys, "pid": pid, "split": df["split"].astype(str)})
    spread = per_key.groupby("key")["split"].nunique()
    leaking = spread[spread > 1].index
    if not len(leaking):
        return
    examples = []
    for key in leaking[:3]:
        rows = per_key[per_key["key"] == key].drop_duplicates(["pid", "split"])
        examples.append(
            " / ".join(f"{p!r} ({s})" for p, s in zip(rows["pid"], rows["split"], strict=True))
        )
    more = f" (+{len(leaking) - 3} more)" if len(leaking) > 3 else ""
    raise ManifestError(
        f"{where}: {len(leaking)} patient(s) appear in more than one split under ids that "
        f"differ only in case or surrounding whitespace: {'; '.join(examples)}{more}; use one "
        "spelling per patient"
    )


def inside_root(base: Path, rel: str) -> bool:
    """Whether the relative path ``rel`` stays inside ``base`` (``base`` resolved). Symlinks
    are followed as far as they resolve; a loop or an unreadable link is not an error here (the
    sample fails when it is read)."""
    if os.path.isabs(rel):
        return False
    target = Path(os.path.realpath(base / rel))
    return target == base or base in target.parents
