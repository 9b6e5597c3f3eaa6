"""Knowledge-base parsing: the official MedlinePlus bulk XML and the MedQuAD format."""

from __future__ import annotations

from pathlib import Path

import pytest

from extractors.rag.knowledge import (
    KnowledgeError,
    build_docs,
    chunk_text,
    parse_medquad_xml,
    parse_mplus_xml,
    read_docs,
    read_topics,
    strip_html,
    write_docs,
)

MEDQUAD = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "realdata"
    / "medlineplus"
    / "medquad_mplus_topics"
)
if not MEDQUAD.exists():
    MEDQUAD = Path("/work/shared/realdata/medlineplus/medquad_mplus_topics")

# A tiny file in the official bulk format (https://medlineplus.gov/xml.html): the summary is
# HTML escaped inside the XML; Spanish topics sit beside the English ones; <site>, <group>,
# <mesh-heading> and friends are noise for the knowledge base. Text written for this test.
LONG = " ".join(
    f"Sentence number {i} explains one more aspect of chronic kidney disease care."
    for i in range(40)
)
MPLUS_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<health-topics total="3" date-generated="11/27/2026 02:30:12">
<health-topic meta-desc="Asthma affects the airways." title="Asthma" url="https://medlineplus.gov/asthma.html" id="23" language="English" date-created="10/22/1998">
<also-called>Bronchial asthma</also-called>
<also-called>Reactive airway disease</also-called>
<full-summary>&lt;p&gt;Asthma is a chronic disease of the &lt;a href="https://medlineplus.gov/lungs.html"&gt;airways&lt;/a&gt; that makes breathing hard.&lt;/p&gt;&lt;p&gt;Symptoms include&lt;/p&gt;&lt;ul&gt;&lt;li&gt;Wheezing&lt;/li&gt;&lt;li&gt;Coughing &amp;amp; chest tightness&lt;/li&gt;&lt;/ul&gt;</full-summary>
<group url="https://medlineplus.gov/lungsandbreathing.html" id="22">Lungs and Breathing</group>
<language-mapped-topic url="https://medlineplus.gov/spanish/asthma.html" id="1556" language="Spanish">Asma</language-mapped-topic>
<mesh-heading><descriptor id="D001249">Asthma</descriptor></mesh-heading>
<primary-institute url="https://www.nhlbi.nih.gov/">National Heart, Lung, and Blood Institute</primary-institute>
<site title="Asthma basics" url="https://example.org/asthma" language="English"><information-category>Learn More</information-category><standard-description>A site description that must not leak into the summary</standard-description></site>
</health-topic>
<health-topic meta-desc="Kidney disease." title="Chronic Kidney Disease" url="https://medlineplus.gov/chronickidneydisease.html" id="1011" language="English" date-created="01/01/2010">
<also-called>CKD</also-called>
<full-summary>&lt;p&gt;{LONG}&lt;/p&gt;</full-summary>
</health-topic>
<health-topic meta-desc="Asma." title="Asma" url="https://medlineplus.gov/spanish/asthma.html" id="1556" language="Spanish" date-created="10/22/1998">
<full-summary>&lt;p&gt;El asma es una enfermedad.&lt;/p&gt;</full-summary>
</health-topic>
</health-topics>
"""


@pytest.fixture()
def mplus_file(tmp_path: Path) -> Path:
    path = tmp_path / "mplus_topics_2026-11-27.xml"
    path.write_text(MPLUS_XML, encoding="utf-8")
    return path


def test_official_bulk_format(mplus_file: Path) -> None:
    topics = list(parse_mplus_xml(mplus_file))
    assert [t.title for t in topics] == ["Asthma", "Chronic Kidney Disease"]  # English only
    asthma = topics[0]
    assert asthma.topic_id == "mplus:23"
    assert asthma.url == "https://medlineplus.gov/asthma.html"
    assert asthma.synonyms == ["Bronchial asthma", "Reactive airway disease"]
    assert asthma.summary == (
        "Asthma is a chronic disease of the airways that makes breathing hard. "
        "Symptoms include. Wheezing. Coughing & chest tightness."
    )
    assert "<" not in asthma.summary and "site description" not in asthma.summary
    all_langs = list(parse_mplus_xml(mplus_file, language=None))
    assert [t.title for t in all_langs][-1] == "Asma"


def test_bulk_file_to_docs_chunks_long_summaries(mplus_file: Path) -> None:
    docs = build_docs(mplus_file, max_words=100)
    ckd = docs[docs["topic_id"] == "mplus:1011"]
    assert len(ckd) >= 4  # 40 sentences x 12 words, 100-word chunks
    assert ckd["doc_id"].tolist() == [f"mplus:1011#{i:02d}" for i in range(len(ckd))]
    assert all(len(t.split()) <= 100 for t in ckd["text"])
    assert " ".join(ckd["text"]) == LONG  # nothing lost, nothing duplicated
    assert all(t.endswith(".") for t in ckd["text"])  # cut at sentence boundaries
    assert set(ckd["title"]) == {"Chronic Kidney Disease"} and ckd["synonyms"].iloc[0] == ["CKD"]
    asthma = docs[docs["topic_id"] == "mplus:23"]
    assert len(asthma) == 1 and asthma["url"].iloc[0].endswith("asthma.html")


def test_medquad_real_folder() -> None:
    if not MEDQUAD.exists():
        pytest.skip(f"real MedQuAD topics not at {MEDQUAD}")
    topics = read_topics(MEDQUAD)
    assert len(topics) == 981
    by_title = {t.title: t for t in topics}
    a1c = by_title["A1C"]
    assert a1c.topic_id == "medquad:0000001"
    assert a1c.synonyms == ["Glycohemoglobin", "HbA1C", "Hemoglobin A1C test"]
    assert a1c.url == "https://www.nlm.nih.gov/medlineplus/a1c.html"
    assert a1c.summary.startswith(
        "A1C is a blood test for type 2 diabetes"
    )  # "Summary :" prefix dropped
    assert sum(len(t.synonyms) for t in topics) == 816
    one = parse_medquad_xml(MEDQUAD / "0000500.xml")
    assert (
        one is not None
        and one.title == "Immune System and Disorders"
        and "&quot;" not in one.summary
    )


def test_docs_roundtrip_and_validation(tmp_path: Path, mplus_file: Path) -> None:
    docs = build_docs(mplus_file)
    path = write_docs(docs, tmp_path / "docs.parquet", metadata={"source": "fixture"})
    back = read_docs(path)
    assert back["doc_id"].tolist() == docs["doc_id"].tolist()
    assert back["synonyms"].iloc[0] == ["Bronchial asthma", "Reactive airway disease"]
    with pytest.raises(KnowledgeError, match="duplicate doc ids"):
        write_docs(docs.iloc[[0, 0]], tmp_path / "dup.parquet")
    with pytest.raises(KnowledgeError, match="unknown topic ids"):
        build_docs(mplus_file, topic_ids=["mplus:999"])
    bad = tmp_path / "bad.xml"
    bad.write_text("<?xml version='1.0'?><other/>")
    with pytest.raises(KnowledgeError):
        read_topics(bad)


def test_shipped_demo_base_is_small_real_and_attributed() -> None:
    root = Path(__file__).resolve().parents[2] / "resources" / "knowledge" / "medlineplus-demo"
    docs = read_docs(root / "docs.parquet")
    assert (root / "docs.parquet").stat().st_size < 500_000
    assert 100 <= docs["topic_id"].nunique() <= 200
    assert docs["topic_id"].str.startswith("medquad:").all()
    assert "CC BY 4.0" in (root / "README.md").read_text()


def test_shipped_demo_base_rebuilds_from_its_source(tmp_path: Path) -> None:
    """The README's rebuild command gives the shipped file back: the same table, and the same
    bytes when the installed pyarrow is the one that wrote it (parquet stamps its writer)."""
    import pyarrow
    import pyarrow.parquet as pq

    from extractors.rag.__main__ import main

    if not MEDQUAD.exists():
        pytest.skip(f"real MedQuAD topics not at {MEDQUAD}")
    root = Path(__file__).resolve().parents[2] / "resources" / "knowledge" / "medlineplus-demo"
    assert (
        "--topics resources/knowledge/medlineplus-demo/topics.txt"
        in (root / "README.md").read_text()
    )
    out = tmp_path / "docs.parquet"
    assert (
        main(
            [
                "kb",
                "--source",
                str(MEDQUAD),
                "--topics",
                str(root / "topics.txt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    shipped, rebuilt = pq.read_table(root / "docs.parquet"), pq.read_table(out)
    assert rebuilt.equals(shipped) and rebuilt.schema.metadata == shipped.schema.metadata
    assert rebuilt.schema.metadata[b"source"] == b"medquad_mplus_topics"  # no local path leaks in
    writer = pq.ParquetFile(root / "docs.parquet").metadata.created_by
    if writer == f"parquet-cpp-arrow version {pyarrow.__version__}":
        assert out.read_bytes() == (root / "docs.parquet").read_bytes()
    ids = [
        line.split()[0]
        for line in (root / "topics.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert list(dict.fromkeys(read_docs(out)["topic_id"])) == ids


def test_strip_html_and_chunking_edge_cases() -> None:
    assert strip_html(None) == ""
    assert strip_html("plain text") == "plain text."
    assert strip_html("&lt;b&gt;bold&lt;/b&gt; and &amp;amp;") == "bold and &."
    assert chunk_text("") == []
    assert chunk_text("one two three", max_words=5) == ["one two three"]
    words = " ".join(["w"] * 25)  # one over-long "sentence" is cut at the word limit
    assert [len(c.split()) for c in chunk_text(words, max_words=10, min_words=1)] == [10, 10, 5]
    assert [len(c.split()) for c in chunk_text(words, max_words=10, min_words=6)] == [10, 15]
