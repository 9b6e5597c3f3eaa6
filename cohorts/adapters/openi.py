"""OpenI (Indiana University chest X-ray collection) -> manifest.

Two published layouts are read unchanged:

* the Kaggle tables: ``indiana_reports.csv`` (uid, MeSH, Problems, image, indication,
  comparison, findings, impression) and ``indiana_projections.csv`` (uid, filename,
  projection), images named ``{uid}_IM-….dcm.png``;
* NLM's original release: ``ecgen-radiology/{uid}.xml`` (report sections as
  ``<AbstractText Label="FINDINGS">``, indexing as ``<MeSH><major>``, images as
  ``<parentImage id="CXR{uid}_IM-…">``) and ``NLMCXR_png/CXR{uid}_IM-….png``.

One sample per study (IU has one study per patient: patient_id = sample_id = ``CXR{uid}``).
Modalities: ``frontal`` and ``lateral`` (image paths relative to the dataset root; the
first existing image of that view, else missing) and ``report`` (findings + impression;
missing when both are empty). Views come from the projections table; without one (XML
only) the image with the lowest series number of a study is frontal and the others lateral.
That guess agrees with the Kaggle table for only 85 % of images, so it is a warning, a
remark in the summary and ``views: inferred from image names`` in the manifest metadata.
Labels: the 15 findings of :mod:`.openi_labels`. Report tables that are not valid UTF-8
are read with the cp1252 fallback of :mod:`.readers` (rows counted in the summary).

Split: seeded by patient (0.65 / 0.15 / 0.20, stratified by ``normal``), or taken exactly
from a published split file (``--split-file``: the R2Gen ``annotation.json`` or an
``id,split`` CSV; ids ``CXR2384_IM-0942``, ``CXR2384`` or ``2384`` all name study 2384), see
:mod:`.published_split`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.adapters import (
    AdapterError,
    add_common_args,
    add_split_file_args,
    cli_errors,
    require_path,
)
from cohorts.adapters.openi_labels import LABELS, findings
from cohorts.adapters.published_split import apply_split, read_split_file
from cohorts.adapters.readers import read_csv_text, require_columns
from cohorts.adapters.summary import Drops, redecoded_remarks, write_cohort
from cohorts.manifest import ManifestMeta
from cohorts.splits import patient_split

log = logging.getLogger("medmix.cohorts.openi")

ADAPTER_VERSION = "1"
FRACTIONS = {"train": 0.65, "val": 0.15, "test": 0.20}
MODALITIES = {"frontal": "image", "lateral": "image", "report": "text"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
INFERRED_VIEWS = (
    "views inferred from image names (no projections table): the lowest series number of a "
    "study is taken as frontal, which agrees with the Kaggle projections table for only 85 % "
    "of IU images; pass --projections indiana_projections.csv for exact views"
)
_KEY = re.compile(r"^(?:CXR)?(?P<uid>\d+)_(?:\d+_)?(?P<im>IM-[\d-]+)$", re.IGNORECASE)


def image_key(name: str) -> tuple[str, str] | None:
    """``(uid, "IM-xxxx-yyyy")`` for a Kaggle or NLM image name (with or without extension)."""
    stem = Path(name).name
    for ext in (".dcm.png", *IMAGE_EXTS, ".dcm"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    m = _KEY.match(stem)
    return (str(int(m["uid"])), m["im"].upper()) if m else None


SPLIT_ID_COLUMNS = {"id": "sample", "sample_id": "sample", "uid": "sample"}
_STUDY = re.compile(r"^(?:CXR)?(?P<uid>\d+)$", re.IGNORECASE)


def study_id(name: str) -> str:
    """A published split's id -> the manifest's ``CXR{uid}``: R2Gen ``CXR2384_IM-0942`` (or
    ``CXR2372_IM-0933-0001``), ``CXR2384`` and ``2384`` all give ``CXR2384``; others unchanged."""
    name = str(name).strip()
    key = image_key(name)
    if key is not None:
        return f"CXR{key[0]}"
    m = _STUDY.match(name)
    return f"CXR{int(m['uid'])}" if m else name


def index_images(root: Path, images_dir: Path) -> dict[tuple[str, str], str]:
    """Every image under ``images_dir``, keyed by :func:`image_key`, as a path relative to ``root``."""
    found: dict[tuple[str, str], str] = {}
    if not images_dir.is_dir():
        return found
    for dirpath, _, files in os.walk(images_dir):
        for f in sorted(files):
            if not f.lower().endswith(IMAGE_EXTS):
                continue
            key = image_key(f)
            if key is not None and key not in found:
                found[key] = (Path(dirpath) / f).relative_to(root).as_posix()
    return found


def _read_csv(path: Path, need: list[str], redecoded: dict[str, int] | None = None) -> pd.DataFrame:
    if not path.is_file():
        raise AdapterError(f"{path}: file not found")
    try:
        df = read_csv_text(path, redecoded=redecoded, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise AdapterError(f"{path}: not a readable CSV ({exc})") from exc
    df.columns = [c.strip().lower() for c in df.columns]
    require_columns(path, list(df.columns), need)
    return df


def _text(*parts: str | None) -> str | None:
    kept = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    return "\n".join(kept) if kept else None


def load_kaggle(reports: str | Path, redecoded: dict[str, int] | None = None) -> pd.DataFrame:
    """Studies from ``indiana_reports.csv``: uid, report, terms (list of MeSH major terms)."""
    df = _read_csv(Path(reports), ["uid", "mesh", "findings", "impression"], redecoded)
    return pd.DataFrame(
        {
            "uid": df["uid"].str.strip().map(lambda u: str(int(u)) if u.isdigit() else u),
            "report": [_text(f, i) for f, i in zip(df["findings"], df["impression"], strict=True)],
            "terms": df["mesh"].map(lambda s: [t for t in s.split(";") if t.strip()]),
            "images": [[] for _ in range(len(df))],
        }
    )


def load_projections(path: str | Path, redecoded: dict[str, int] | None = None) -> pd.DataFrame:
    """``indiana_projections.csv`` -> uid, key, projection (``frontal`` / ``lateral``)."""
    df = _read_csv(Path(path), ["uid", "filename", "projection"], redecoded)
    keys = df["filename"].map(image_key)
    bad = keys.isna()
    if bad.any():
        raise AdapterError(
            f"{path}: column 'filename' has names that are not IU image names, e.g. {df.loc[bad, 'filename'].head(3).tolist()}"
        )
    proj = df["projection"].str.strip().str.lower()
    unknown = ~proj.isin(["frontal", "lateral"])
    if unknown.any():
        raise AdapterError(
            f"{path}: column 'projection' has values other than Frontal/Lateral: {sorted(set(df.loc[unknown, 'projection']))[:5]}"
        )
    return pd.DataFrame({"uid": [k[0] for k in keys], "key": keys, "projection": proj})


def _xml_study(path: Path) -> dict:
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AdapterError(f"{path}: not well-formed XML ({exc})") from exc
    node = tree.find("IUXRId")
    uid = node.get("id") if node is not None else None
    if uid is None:
        node = tree.find("uId")
        uid = re.sub(r"^CXR", "", node.get("id", "")) if node is not None else None
    if not uid:
        raise AdapterError(f"{path}: no <IUXRId id=…> or <uId id=…> element")
    sections = {
        (el.get("Label") or "").upper(): (el.text or "") for el in tree.iter("AbstractText")
    }
    if "FINDINGS" not in sections and "IMPRESSION" not in sections:
        raise AdapterError(
            f'{path}: no <AbstractText Label="FINDINGS"> or Label="IMPRESSION" element'
        )
    mesh = tree.find("MeSH")
    terms = [el.text.strip() for el in mesh.findall("major") if el.text] if mesh is not None else []
    images = [el.get("id") for el in tree.iter("parentImage") if el.get("id")]
    return {
        "uid": str(int(uid)) if uid.isdigit() else uid,
        "report": _text(sections.get("FINDINGS"), sections.get("IMPRESSION")),
        "terms": terms or ["No Indexing"],
        "images": images,
    }


def load_xml(xml_dir: str | Path) -> pd.DataFrame:
    """Studies from ``ecgen-radiology/*.xml``: uid, report, terms, images (NLM image ids)."""
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise AdapterError(f"{xml_dir}: folder of ecgen-radiology XML reports not found")
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise AdapterError(f"{xml_dir}: no *.xml report files")
    return pd.DataFrame([_xml_study(f) for f in files])


def views_from_names(studies: pd.DataFrame) -> pd.DataFrame:
    """Views without a projections table: lowest series number in a study = frontal, others lateral."""
    rows = []
    for uid, names in zip(studies["uid"], studies["images"], strict=True):
        keys = sorted((k for k in map(image_key, names) if k is not None), key=_series_order)
        for i, key in enumerate(keys):
            rows.append({"uid": uid, "key": key, "projection": "frontal" if i == 0 else "lateral"})
    return pd.DataFrame(rows, columns=["uid", "key", "projection"])


def _series_order(key: tuple[str, str]) -> tuple[int, str]:
    parts = key[1].split("-")
    return (int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 10**9, key[1])


def build(
    studies: pd.DataFrame,
    views: pd.DataFrame,
    root: str | Path,
    images_dir: str | Path | None = None,
    seed: int = 0,
    dataset: str = "openi",
    split_file: str | Path | None = None,
    split_missing: str = "drop",
) -> tuple[pd.DataFrame, ManifestMeta, Drops]:
    """Studies + views + the images on disk -> (manifest frame, meta, drops).

    ``split_file``: a published split (R2Gen JSON or ``id,split`` CSV) used instead of the
    seeded one; studies it does not list are dropped (``split_missing="drop"``) or refused.
    """
    require_path(root, "--root", "folder", "openi")
    require_path(images_dir, "--images", "folder", "openi")
    published = (
        read_split_file(split_file, SPLIT_ID_COLUMNS, study_id) if split_file is not None else None
    )
    root = Path(root).resolve()
    images_dir = Path(images_dir).resolve() if images_dir else root
    if root != images_dir and root not in images_dir.parents:
        raise AdapterError(f"{images_dir}: image folder is not inside the dataset root {root}")
    on_disk = index_images(root, images_dir)
    drops = Drops()
    studies_all = studies
    dup = studies["uid"].duplicated()
    drops.add("duplicate study uid", "CXR" + studies.loc[dup, "uid"])
    studies = studies.loc[~dup]

    chosen: dict[tuple[str, str], str] = {}
    for row in views.sort_values(["uid", "key"]).itertuples(index=False):
        path = on_disk.get(row.key)
        if path is not None and (row.uid, row.projection) not in chosen:
            chosen[(row.uid, row.projection)] = path
    remarks = []
    absent = int((~views["key"].isin(on_disk.keys())).sum()) if len(views) else 0
    if absent:
        remarks.append(
            f"{absent} of {len(views)} listed images not found under {images_dir}: those views are missing"
        )
    rows = []
    unindexed = []
    for s in studies.itertuples(index=False):
        labels = findings(s.terms)
        if labels is None:
            unindexed.append(f"CXR{s.uid}")
            continue
        rows.append(
            {
                "sample_id": f"CXR{s.uid}",
                "patient_id": f"CXR{s.uid}",
                "frontal": chosen.get((s.uid, "frontal")),
                "lateral": chosen.get((s.uid, "lateral")),
                "report": s.report,
                **{f"label_{k}": np.int8(v) for k, v in labels.items()},
            }
        )
    drops.add("MeSH 'No Indexing' (labels unknown)", unindexed)
    cols = ["sample_id", "patient_id", *MODALITIES, *(f"label_{k}" for k in LABELS)]
    df = pd.DataFrame(rows, columns=cols)
    for k in LABELS:
        df[f"label_{k}"] = df[f"label_{k}"].astype("int8")
    if published is not None:
        known = set("CXR" + studies_all["uid"].astype(str))
        df, split_remarks = apply_split(
            df, published, known=known, drops=drops, missing=split_missing, what="study"
        )
        remarks += split_remarks
    else:
        df["split"] = (
            patient_split(df["patient_id"], FRACTIONS, seed, stratify=df["label_normal"])
            if len(df)
            else []
        )
    meta = ManifestMeta(
        dataset=dataset,
        task_type="multilabel",
        modalities=dict(MODALITIES),
        labels=list(LABELS),
        adapter="openi",
        adapter_version=ADAPTER_VERSION,
        root=str(root),
        extra={
            "seed": seed,
            "fractions": FRACTIONS,
            "images_found": len(on_disk),
            "remarks": remarks,
        },
    )
    if published is not None:
        del meta.extra["fractions"], meta.extra["seed"]
        meta.extra["split_file"] = {
            "path": str(published.path.resolve()),
            "format": published.format,
            "missing": split_missing,
        }
    return df, meta, drops


def run(
    out: str | Path,
    reports: str | Path | None = None,
    xml: str | Path | None = None,
    projections: str | Path | None = None,
    root: str | Path | None = None,
    images: str | Path | None = None,
    seed: int = 0,
    dataset: str = "openi",
    split_file: str | Path | None = None,
    split_missing: str = "drop",
) -> Path:
    """Read either layout, build, write manifest + summary into ``out``; returns the manifest path.

    Every path given must exist (an :class:`AdapterError` names the option and the path).
    """
    if (reports is None) == (xml is None):
        raise AdapterError(
            "openi: give exactly one of --reports (Kaggle CSV) or --xml (ecgen-radiology folder)"
        )
    require_path(reports, "--reports", "file", "openi")
    require_path(xml, "--xml", "folder", "openi")
    require_path(projections, "--projections", "file", "openi")
    require_path(root, "--root", "folder", "openi")
    require_path(images, "--images", "folder", "openi")
    require_path(split_file, "--split-file", "file", "openi")
    redecoded: dict[str, int] = {}
    if reports is not None:
        studies = load_kaggle(reports, redecoded)
        if projections is None:
            cand = Path(reports).with_name("indiana_projections.csv")
            if not cand.is_file():
                raise AdapterError(f"{cand}: file not found (give --projections)")
            projections = cand
        default_root = Path(reports).parent
    else:
        studies = load_xml(xml)
        default_root = Path(xml).parent
    if projections is not None:
        views = load_projections(projections, redecoded)
    else:
        views = views_from_names(studies)
        log.warning("openi: %s", INFERRED_VIEWS)
    df, meta, drops = build(
        studies, views, root or default_root, images, seed, dataset, split_file, split_missing
    )
    meta.extra["views"] = (
        "projections table" if projections is not None else "inferred from image names"
    )
    meta.extra["remarks"] = (
        ([INFERRED_VIEWS] if projections is None else [])
        + meta.extra["remarks"]
        + redecoded_remarks(redecoded)
    )
    meta.extra["redecoded"] = redecoded
    return write_cohort(df, meta, out, drops, log)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "openi", help="OpenI / IU chest X-ray (Kaggle tables or NLM XML) -> manifest"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reports", help="indiana_reports.csv (Kaggle layout)")
    src.add_argument("--xml", help="ecgen-radiology/ folder of NLM XML reports")
    p.add_argument(
        "--projections",
        help="indiana_projections.csv (default: beside --reports; optional with --xml, but without"
        " it the views are guessed from image names, wrong for ~15 %% of IU images)",
    )
    p.add_argument(
        "--root",
        help="dataset root that image paths are relative to (default: the reports' folder)",
    )
    p.add_argument(
        "--images", help="folder searched for images, inside the root (default: the root)"
    )
    add_split_file_args(
        p,
        "the R2Gen annotation.json (train/val/test lists of {'id': 'CXR2384_IM-0942', …}) or a"
        " CSV with columns id,split (id CXR2384_IM-0942, CXR2384 or 2384; split train/val/test)",
    )
    add_common_args(p, "openi")
    p.set_defaults(func=_main)


@cli_errors("openi")
def _main(args: argparse.Namespace) -> int:
    run(
        args.out,
        args.reports,
        args.xml,
        args.projections,
        args.root,
        args.images,
        args.seed,
        args.dataset,
        args.split_file,
        args.split_missing,
    )
    return 0
