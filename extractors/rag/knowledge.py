"""The retrieval knowledge base: MedlinePlus health topics -> ``docs.parquet``.

Two input formats are read:

* the official MedlinePlus bulk XML (``mplus_topics_YYYY-MM-DD.xml``, from
  https://medlineplus.gov/xml.html): ``<health-topics>`` with one
  ``<health-topic title= url= id= language=>`` per topic, its ``<also-called>`` synonyms and an
  HTML ``<full-summary>`` (escaped markup inside the XML). English topics only by default.
* the MedQuAD format (``medquad_mplus_topics/*.xml``, one ``<Document id= source= url=>`` per
  file with ``<Focus>``, ``<Synonyms><Synonym>`` and ``<QAPairs><QAPair><Answer>``).

Summaries are stripped of HTML, whitespace-normalised and split into chunks of at most
``max_words`` words at sentence boundaries; each chunk is one retrievable document with the
topic's title. Columns of ``docs.parquet``:

``doc_id`` (``{topic_id}#{chunk:02d}``), ``topic_id`` (``mplus:{id}`` or ``medquad:{id}``),
``title``, ``synonyms`` (list of strings), ``url``, ``text``.

The base contains public encyclopedia text only: nothing in it depends on a cohort, a split or
a label (docs/design.md §4: built once, shared by every dataset).
"""

from __future__ import annotations

import html
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medmix.errors import UserError
from medmix.io import atomic_path

DOC_COLUMNS = ("doc_id", "topic_id", "title", "synonyms", "url", "text")
_BLOCK_TAGS = {
    "p",
    "li",
    "ul",
    "ol",
    "br",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


class KnowledgeError(UserError, ValueError):
    pass


@dataclass
class Topic:
    topic_id: str
    title: str
    url: str
    synonyms: list[str] = field(default_factory=list)
    summary: str = ""


# -- text cleaning ----------------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str | None) -> str:
    """Markup removed, entities decoded, whitespace collapsed; list items become sentences."""
    if not text:
        return ""
    parser = _TextExtractor()
    parser.feed(html.unescape(text) if "&lt;" in text else text)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    lines = [ln.lstrip("-• ").strip() for ln in lines if ln.strip()]
    out = []
    for ln in lines:  # list items have no full stop: end them so chunking can split there
        out.append(ln if ln[-1] in ".!?:;" else ln + ".")
    return " ".join(out)


def chunk_text(text: str, max_words: int = 150, min_words: int = 20) -> list[str]:
    """Split at sentence boundaries into chunks of at most ``max_words`` words (a longer
    sentence is cut at the word limit; a tail shorter than ``min_words`` joins the previous
    chunk). Short texts are one chunk."""
    words = text.split()
    if len(words) <= max_words:
        return [" ".join(words)] if words else []
    chunks: list[str] = []
    cur: list[str] = []
    for sentence in _SENTENCE.split(text):
        sw = sentence.split()
        while len(sw) > max_words:  # an over-long sentence
            if cur:
                chunks.append(" ".join(cur))
                cur = []
            chunks.append(" ".join(sw[:max_words]))
            sw = sw[max_words:]
        if cur and len(cur) + len(sw) > max_words:
            chunks.append(" ".join(cur))
            cur = []
        cur.extend(sw)
    if cur:
        if chunks and len(cur) < min_words:  # a short tail joins the chunk before it
            chunks[-1] = chunks[-1] + " " + " ".join(cur)
        else:
            chunks.append(" ".join(cur))
    return chunks


# -- parsers ----------------------------------------------------------------------------------


def _text(el: ET.Element | None) -> str:
    return "".join(el.itertext()).strip() if el is not None else ""


def parse_mplus_xml(path: str | os.PathLike, language: str | None = "English") -> Iterator[Topic]:
    """Topics of a MedlinePlus bulk file (``mplus_topics_*.xml``), streamed."""
    for _event, el in ET.iterparse(str(path), events=("end",)):
        if el.tag != "health-topic":
            continue
        lang = el.get("language")
        if language is None or lang in (None, language):
            title = (el.get("title") or "").strip()
            if title:
                yield Topic(
                    topic_id=f"mplus:{el.get('id') or title}",
                    title=title,
                    url=el.get("url") or "",
                    synonyms=[s for s in (_text(a) for a in el.findall("also-called")) if s],
                    summary=strip_html(_text(el.find("full-summary"))),
                )
        el.clear()


_QA_PREFIX = re.compile(r"^\s*(summary|what is \(are\)[^:]*)\s*:\s*", re.I)


def parse_medquad_xml(path: str | os.PathLike) -> Topic | None:
    """One MedQuAD document; None when it has no answer text (MedQuAD removed some answers)."""
    root = ET.parse(str(path)).getroot()
    if root.tag != "Document":
        raise KnowledgeError(f"{path}: not a MedQuAD document (root <{root.tag}>)")
    title = _text(root.find("Focus"))
    synonyms = [s for s in (_text(e) for e in root.iter("Synonym")) if s]
    answers = []
    pairs = root.findall("./QAPairs/QAPair")
    for pair in pairs:
        answer = _text(pair.find("Answer"))
        if not answer:
            continue
        answer = _QA_PREFIX.sub("", answer)
        question = _text(pair.find("Question"))
        answers.append(f"{question}: {answer}" if len(pairs) > 1 and question else answer)
    if not title or not answers:
        return None
    return Topic(
        topic_id=f"medquad:{root.get('id') or Path(path).stem}",
        title=title,
        url=root.get("url") or "",
        synonyms=synonyms,
        summary=strip_html(" ".join(answers)),
    )


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(2048).decode("utf-8", "replace")
    if "<health-topics" in head or "<health-topic " in head:
        return "mplus"
    if "<Document" in head:
        return "medquad"
    raise KnowledgeError(f"{path}: neither a MedlinePlus bulk file nor a MedQuAD document")


def read_topics(source: str | os.PathLike, language: str | None = "English") -> list[Topic]:
    """Topics from a bulk XML file, a MedQuAD XML file, or a folder of either (sorted by name)."""
    src = Path(source)
    if not src.exists():
        raise KnowledgeError(f"knowledge source {src} does not exist")
    files = sorted(src.glob("*.xml")) if src.is_dir() else [src]
    if not files:
        raise KnowledgeError(f"knowledge source {src}: no *.xml files")
    topics: list[Topic] = []
    for f in files:
        if _sniff(f) == "mplus":
            topics.extend(parse_mplus_xml(f, language=language))
        else:
            t = parse_medquad_xml(f)
            if t is not None:
                topics.append(t)
    return topics


def topics_to_docs(topics: Iterable[Topic], max_words: int = 150) -> pd.DataFrame:
    rows = []
    seen: set[str] = set()
    for t in topics:
        if t.topic_id in seen:
            raise KnowledgeError(f"duplicate topic id {t.topic_id!r}")
        seen.add(t.topic_id)
        for i, chunk in enumerate(chunk_text(t.summary, max_words) or [t.title]):
            rows.append(
                {
                    "doc_id": f"{t.topic_id}#{i:02d}",
                    "topic_id": t.topic_id,
                    "title": t.title,
                    "synonyms": list(t.synonyms),
                    "url": t.url,
                    "text": chunk,
                }
            )
    return pd.DataFrame(rows, columns=list(DOC_COLUMNS))


def build_docs(
    source: str | os.PathLike,
    max_words: int = 150,
    language: str | None = "English",
    topic_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Parse a knowledge source into the docs table (optionally a subset of topic ids)."""
    topics = read_topics(source, language=language)
    if topic_ids is not None:
        wanted = list(dict.fromkeys(topic_ids))
        by_id = {t.topic_id: t for t in topics}
        unknown = [t for t in wanted if t not in by_id]
        if unknown:
            raise KnowledgeError(f"{source}: unknown topic ids {unknown[:5]}")
        topics = [by_id[t] for t in wanted]
    docs = topics_to_docs(topics, max_words=max_words)
    if docs.empty:
        raise KnowledgeError(f"{source}: no topics with text")
    return docs


_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("topic_id", pa.string()),
        ("title", pa.string()),
        ("synonyms", pa.list_(pa.string())),
        ("url", pa.string()),
        ("text", pa.string()),
    ]
)


def write_docs(
    docs: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    validate_docs(docs)
    table = pa.Table.from_pandas(
        docs[list(DOC_COLUMNS)].reset_index(drop=True), schema=_SCHEMA, preserve_index=False
    )
    if metadata:
        table = table.replace_schema_metadata(
            {k.encode(): str(v).encode() for k, v in metadata.items()}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_docs(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise KnowledgeError(f"docs table {path} not found")
    docs = pq.read_table(path).to_pandas()
    validate_docs(docs, where=str(path))
    docs["synonyms"] = docs["synonyms"].map(lambda s: [str(x) for x in s] if s is not None else [])
    return docs


def validate_docs(docs: pd.DataFrame, where: str = "<docs>") -> None:
    missing = [c for c in DOC_COLUMNS if c not in docs.columns]
    if missing:
        raise KnowledgeError(f"{where}: missing column(s) {missing}")
    if docs["doc_id"].duplicated().any():
        raise KnowledgeError(
            f"{where}: duplicate doc ids {docs.loc[docs['doc_id'].duplicated(), 'doc_id'].head(3).tolist()}"
        )
    if (docs["text"].fillna("").str.strip() == "").any():
        raise KnowledgeError(f"{where}: empty document text")


def load_knowledge(
    source: str | os.PathLike, max_words: int = 150, language: str | None = "English"
) -> pd.DataFrame:
    """A docs table from a ``docs.parquet`` or from XML (file or folder)."""
    src = Path(source)
    if src.is_file() and src.suffix in (".parquet", ".pq"):
        return read_docs(src)
    return build_docs(src, max_words=max_words, language=language)
