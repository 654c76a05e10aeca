"""Near-duplicate documents (MinHash LSH, #14): planted copies cluster, unrelated texts do not,
the policy keeps one representative and records the others as `near-duplicate` exclusions."""

from __future__ import annotations

import dagster as dg
import pytest

from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features import pipeline
from retro_ops.governance.dedup import (
    REASON, DedupConfig, find_near_duplicates, near_duplicates_of, record_near_duplicates, shingles,
)

MOBY = CORPORA_DIR / "moby_dick"


def chapter(n: int) -> str:
    return (MOBY / f"chapter_{n}.txt").read_text()


def planted() -> dict[str, str]:
    """Two originals, three planted copies, and unrelated chapters of the same book."""
    one, two = chapter(3), chapter(9)
    paragraphs = one.split("\n\n")
    middle = len(paragraphs) // 2
    edited = "\n\n".join(paragraphs[:middle] + ["A whole new paragraph, written for this test, "
                                                 "about nothing Melville ever wrote."] + paragraphs[middle + 1:])
    return {"one": one, "one_edited": edited, "one_shouting": one.upper().replace(" ", " \t\n  "),
            "two": two, "two_spaced": "\n\n".join("   ".join(p.split()) for p in two.split("\n\n")),
            **{f"other_{n}": chapter(n) for n in (1, 4, 10, 16, 24, 32)}}


def test_planted_near_duplicates_cluster_and_unrelated_documents_do_not():
    docs = planted()
    report = find_near_duplicates(docs)
    groups = sorted(sorted([c.representative, *c.duplicates]) for c in report.clusters)
    assert groups == [["one", "one_edited", "one_shouting"], ["two", "two_spaced"]]
    assert report.documents == len(docs)
    dropped = report.duplicates
    assert set(dropped) == {"one", "one_edited", "one_shouting", "two", "two_spaced"} - {
        c.representative for c in report.clusters}
    assert all(0.7 <= score <= 1.0 for _, score in dropped.values())
    # a stricter threshold still sees formatting-only copies as the same text
    strict = find_near_duplicates({k: docs[k] for k in ("two", "two_spaced", "one", "one_shouting")},
                                  DedupConfig(threshold=0.95))
    assert len(strict.clusters) == 2


def test_near_duplicates_of_queries_find_only_copies():
    docs = planted()
    found = near_duplicates_of({"one": docs["one"]}, {k: v for k, v in docs.items() if k != "one"})
    assert found == {"one_edited": "one", "one_shouting": "one"}
    assert near_duplicates_of({"q": "   "}, {"x": docs["two"]}) == {}  # no words, no duplicate
    assert shingles("A b", 5) == {b"a b"}


def test_policy_records_document_exclusions_once(catalog, store, chunker, embedder, tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    for name, text in planted().items():
        (folder / f"{name}.txt").write_text(text)
    catalog.add_corpus("dups", str(folder))
    pipeline.ingest_documents(catalog, store, "dups")
    from retro_ops.governance.dedup import corpus_texts

    texts = corpus_texts(catalog, store, ["dups"])
    report = find_near_duplicates(texts)
    ids = record_near_duplicates(catalog, report, actor="test")
    assert len(ids) == 3 and record_near_duplicates(catalog, report, actor="test") == ids
    rows = [e for e in catalog.list_exclusions() if e.reason == REASON]
    assert {(e.scope, e.target) for e in rows} == {("document", d) for d in report.duplicates}
    assert catalog.active_exclusions().doc_ids == frozenset(report.duplicates)


def test_near_duplicates_asset_reports_and_records(home, catalog, store, tmp_path):
    from assets.dedup import near_duplicates
    from assets.resources import CatalogResource, FeatureStoreResource

    folder = tmp_path / "pair"
    folder.mkdir()
    docs = planted()
    for name in ("two", "two_spaced", "other_1"):
        (folder / f"{name}.txt").write_text(docs[name])
    catalog.add_corpus("pair", str(folder))
    pipeline.ingest_documents(catalog, store, "pair")
    result = dg.materialize([near_duplicates], resources={
        "catalog": CatalogResource(), "feature_store": FeatureStoreResource()})
    assert result.success
    metadata = result.asset_materializations_for_node("near_duplicates")[0].metadata
    assert metadata["documents"].value == 3 and metadata["clusters"].value == 1
    assert metadata["exclusions_recorded"].value == 1
    assert len([e for e in catalog.list_exclusions() if e.reason == REASON]) == 1


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.99, 1.5])
def test_dedup_config_refuses_a_bad_threshold(bad):
    with pytest.raises(ValueError, match=f"dedup threshold is a Jaccard similarity in \\(0, 0.95\\], got {bad}"):
        DedupConfig(threshold=bad)
