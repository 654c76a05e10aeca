"""The catalog schema: what exists, which version of it, and where it came from.

Alembic owns the schema (`migrations/`); these SQLAlchemy tables mirror it (the module is `tables`,
not `models`: a "model" here is a trained RETRO checkpoint). Later issues add retrieval
sets, exclusions, index builds, models and deployments as new tables with their own migrations.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Corpus(Base):
    """A named source of documents (folder, glob or file); its versions are digests of doc_ids."""

    __tablename__ = "corpora"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    versions: Mapped[list[CorpusVersion]] = relationship(
        back_populates="corpus", order_by="CorpusVersion.id")


class CorpusVersion(Base):
    """One materialization of a corpus: the exact set of documents it held. `seq` numbers a
    corpus's versions 1, 2, ... (0013); unique per corpus, so two registrars of the same next
    version store one row."""

    __tablename__ = "corpus_versions"
    __table_args__ = (Index("uq_corpus_versions_corpus_id_seq", "corpus_id", "seq", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    n_documents: Mapped[int] = mapped_column(Integer)
    n_issues: Mapped[int] = mapped_column(Integer, default=0)
    documents_lance_version: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    corpus: Mapped[Corpus] = relationship(back_populates="versions")


class Document(Base):
    __tablename__ = "documents"
    doc_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    n_chars: Mapped[int] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DocumentSource(Base):
    """Every place a document was read from (duplicates collapse to one doc, many sources)."""

    __tablename__ = "document_sources"
    __table_args__ = (UniqueConstraint("doc_id", "corpus_id", "source_uri"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.doc_id"), index=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)


class CorpusVersionDocument(Base):
    """Membership of a document in a corpus version: the base of every lineage audit."""

    __tablename__ = "corpus_version_documents"
    corpus_version_id: Mapped[int] = mapped_column(
        ForeignKey("corpus_versions.id", ondelete="CASCADE"), primary_key=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.doc_id"), primary_key=True, index=True)
    n_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # UTF-8, NULL before 0006


class CorpusVersionSource(Base):
    """Where each document of one corpus version was read from, relative to the corpus root: a
    file renamed between versions shows its old path under the old version only."""

    __tablename__ = "corpus_version_sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    corpus_version_id: Mapped[int] = mapped_column(
        ForeignKey("corpus_versions.id", ondelete="CASCADE"), index=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.doc_id"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)


class EmbeddingSpaceRow(Base):
    """An embedder's identity; its vectors live in LanceDB table `embeddings_<id>`."""

    __tablename__ = "embedding_spaces"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(256))
    model_path: Mapped[str] = mapped_column(Text)
    weights_digest: Mapped[str] = mapped_column(String(64))
    pooling: Mapped[str] = mapped_column(String(16))
    normalize: Mapped[bool] = mapped_column()
    dim: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureVersion(Base):
    """Which LanceDB table version an asset materialization produced, for which corpus version."""

    __tablename__ = "feature_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset: Mapped[str] = mapped_column(String(64), index=True)
    corpus_version_id: Mapped[int] = mapped_column(
        ForeignKey("corpus_versions.id", ondelete="CASCADE"), index=True)
    table_name: Mapped[str] = mapped_column(String(128))
    lance_version: Mapped[int] = mapped_column(BigInteger)
    embedding_space_id: Mapped[str | None] = mapped_column(
        ForeignKey("embedding_spaces.id"), nullable=True)
    rows_written: Mapped[int] = mapped_column(BigInteger, default=0)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RetrievalSet(Base):
    """A named selection of chunks: the chunks of some corpora, minus exclusions."""

    __tablename__ = "retrieval_sets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    corpora: Mapped[list] = mapped_column(JSON)  # corpus names, in the order given
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RetrievalSetVersion(Base):
    """One exact content of a retrieval set: pins the corpus versions, the LanceDB versions read
    and the digest of its chunk ids (members are in LanceDB `retrieval_set_chunks`)."""

    __tablename__ = "retrieval_set_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    retrieval_set_id: Mapped[int] = mapped_column(
        ForeignKey("retrieval_sets.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    n_chunks: Mapped[int] = mapped_column(BigInteger)
    n_excluded: Mapped[int] = mapped_column(BigInteger, default=0)
    corpus_version_ids: Mapped[list] = mapped_column(JSON)
    embedding_space_id: Mapped[str] = mapped_column(ForeignKey("embedding_spaces.id"))
    chunks_lance_version: Mapped[int] = mapped_column(BigInteger)
    embeddings_table: Mapped[str] = mapped_column(String(128))
    embeddings_lance_version: Mapped[int] = mapped_column(BigInteger)
    members_lance_version: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Exclusion(Base):
    """An audited decision that text must never be retrieved (toxicity, PII, takedown...).

    `scope` says what `target` names: a chunk id, a content hash (that text in every document
    and corpus, now and later) or a doc_id (a takedown). Rows are never deleted: a revoke fills
    the `revoked_*` columns, so who excluded and who brought back what stays on record."""

    __tablename__ = "exclusions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), default="chunk", index=True)  # chunk|content_hash|document
    target: Mapped[str] = mapped_column(String(128), index=True)
    chunk_id: Mapped[int | None] = mapped_column(BigInteger, index=True, nullable=True)  # scope chunk
    reason: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(String(128))
    scorer: Mapped[str | None] = mapped_column(String(128), nullable=True)  # id@version
    score: Mapped[float | None] = mapped_column(nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))  # the actor
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ExclusionRead(Base):
    """Excluded text shown to a person on request (`--include-excluded`, 0010): who, when, which
    chunk, through which command. Showing excluded text is audited like excluding it."""

    __tablename__ = "exclusion_reads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exclusion_id: Mapped[int] = mapped_column(ForeignKey("exclusions.id"), index=True)
    chunk_id: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(Text)  # the command that showed it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexBuild(Base):
    """A FAISS index built from one retrieval-set version. A reader trusts a build only when the
    index's `sha256` and its manifest's `manifest_sha256` match a record of the set it is
    published under (NULL: recorded before migration 0005; such a build must be rebuilt)."""

    __tablename__ = "index_builds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    retrieval_set_version_id: Mapped[int] = mapped_column(
        ForeignKey("retrieval_set_versions.id", ondelete="CASCADE"), index=True)
    build_dir: Mapped[str] = mapped_column(Text)
    factory: Mapped[str] = mapped_column(String(256))
    ntotal: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest: Mapped[dict] = mapped_column(JSON)
    published: Mapped[bool] = mapped_column(default=False)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelRecord(Base):
    """A trained checkpoint and every input version that made it; mirrors its MLflow run and
    registered model version so lineage audits need no scan of MLflow."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # retro | baseline | retrofit
    key: Mapped[str] = mapped_column(String(64), index=True)  # hash of config + input versions
    checkpoint_dir: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON)
    corpus_version_id: Mapped[int] = mapped_column(ForeignKey("corpus_versions.id"))
    retrieval_set_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrieval_set_versions.id"), nullable=True)
    index_build_id: Mapped[int | None] = mapped_column(ForeignKey("index_builds.id"), nullable=True)
    parent_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    embedding_space_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    tokenizer_id: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mlflow_model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    mlflow_model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # what it read (0006): training and neighbour chunk ids live in LanceDB `reads_table` at
    # `reads_lance_version`; `reads_digest` pins their content; NULL for older models
    neighbours_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    vocabulary_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reads_table: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reads_lance_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reads_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_training_chunks: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    n_neighbour_chunks: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # its train / held-out split (0009): evaluation re-derives the held-out documents from it;
    # NULL for older models (their training documents are still refused)
    split_seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    split_heldout_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    split_min_heldout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    split_validation_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    split_group_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # the checkpoint (0012): sha256 of each file a model is loaded from (`checkpoint_manifest`)
    # and of that manifest (`checkpoint_sha256`); NULL for older models (weights_sha256 only)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    checkpoint_manifest: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelTrainingDocument(Base):
    """Which documents a model was trained on ("which models ever saw this document?")."""

    __tablename__ = "model_training_documents"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.doc_id"), primary_key=True, index=True)


class EvaluationRecord(Base):
    """One evaluation of a model on held-out text with a given retrieval setting."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    setting: Mapped[str] = mapped_column(String(128))  # e.g. "no retrieval", "set sotu"
    retrieval_set_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrieval_set_versions.id"), nullable=True)
    eval_corpus_version_id: Mapped[int] = mapped_column(ForeignKey("corpus_versions.id"))
    bits_per_byte: Mapped[float] = mapped_column()
    loss_per_token: Mapped[float] = mapped_column()
    tokens: Mapped[int] = mapped_column(BigInteger)
    n_bytes: Mapped[int] = mapped_column(BigInteger)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentRecord(Base):
    """Which model served with which retrieval-set version, from when, changed by whom."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    retrieval_set_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrieval_set_versions.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(16))  # start | swap
    endpoint: Mapped[str] = mapped_column(String(256))
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # hash prefix, never the token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # closed when the server stops or swaps to another set (0006); NULL: still serving, or killed
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PurgedDocument(Base):
    """A document erased from every store (0008): its text is gone, its hash stays, so a copy
    still in (or back in) a corpus folder is refused at the next materialization.

    Written with status `pending` before anything is deleted (crash-safe intent), `done` when
    every store is clean. Holds hashes and ids only: `source_hashes` are sha256 of its source
    paths (the paths themselves are scrubbed), `chunks` its [chunk_id, position, content_hash]
    rows, `held_by` {set digest: [chunk ids]} of the retrieval-set versions that held it."""

    __tablename__ = "purged_documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    exclusion_id: Mapped[int | None] = mapped_column(ForeignKey("exclusions.id"), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    source_hashes: Mapped[list] = mapped_column(JSON, default=list)
    chunks: Mapped[list] = mapped_column(JSON, default=list)
    held_by: Mapped[dict] = mapped_column(JSON, default=dict)
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
