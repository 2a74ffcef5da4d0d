"""The database schema: pools, preference sets, runs, scores, decisions and exports.

Large arrays (gradient features) never live here; runs point at their folder on disk.
The schema is created and evolved only by the Alembic migrations in ``curation/migrations``;
`tests/test_store.py` checks that the migrations produce exactly these models.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
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
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


STAGING_PREFIX = "~importing~"  # a pool named so is an import in progress: filled, then renamed (hidden)


class Pool(Base):
    __tablename__ = "pool"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    n_examples: Mapped[int] = mapped_column(Integer, default=0)
    examples: Mapped[list["Example"]] = relationship(back_populates="pool", cascade="all, delete-orphan", passive_deletes=True)


class Example(Base):
    __tablename__ = "example"
    __table_args__ = (
        UniqueConstraint("pool_id", "uid", name="uq_example_uid"),
        UniqueConstraint("pool_id", "content_hash", name="uq_example_hash"),
        Index("ix_example_pool_source", "pool_id", "source"),
        Index("ix_example_pool_chars", "pool_id", "total_chars"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"))
    uid: Mapped[str] = mapped_column(String(300), doc="stable id: the record's own id, else source + content hash")
    content_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(200))
    fmt: Mapped[str] = mapped_column(String(40))
    line: Mapped[int] = mapped_column(Integer)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    original: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_turns: Mapped[int] = mapped_column(Integer)
    prompt_chars: Mapped[int] = mapped_column(Integer)
    response_chars: Mapped[int] = mapped_column(Integer)
    total_chars: Mapped[int] = mapped_column(Integer)
    pool: Mapped[Pool] = relationship(back_populates="examples")


class PreferenceSet(Base):
    __tablename__ = "preference_set"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    archived: Mapped[bool] = mapped_column(Boolean, default=False,
                                           doc="hidden from new runs and the default listing; kept for its runs")
    pairs: Mapped[list["PreferencePair"]] = relationship(
        back_populates="set", cascade="all, delete-orphan", passive_deletes=True, order_by="PreferencePair.position"
    )


class PreferencePair(Base):
    __tablename__ = "preference_pair"
    id: Mapped[int] = mapped_column(primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("preference_set.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_messages: Mapped[list[Any]] = mapped_column(JSON)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    subtask: Mapped[str] = mapped_column(String(200))
    author: Mapped[str] = mapped_column(String(100), default="import")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    set: Mapped[PreferenceSet] = relationship(back_populates="pairs")


class ImportReport(Base):
    """What an import did: counts and every bad line (file, line, field, reason)."""

    __tablename__ = "import_report"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # pool | prefs
    target: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    fmt: Mapped[str] = mapped_column(String(40))
    strict: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20))  # imported | rejected
    n_ok: Mapped[int] = mapped_column(Integer, default=0)
    n_bad: Mapped[int] = mapped_column(Integer, default=0)
    n_duplicate: Mapped[int] = mapped_column(Integer, default=0)
    n_tie: Mapped[int] = mapped_column(Integer, default=0)  # pairwise ties skipped (prefs)
    problems: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Run(Base):
    """A scoring run; its process reports stage, progress and heartbeat here."""

    __tablename__ = "run"
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"), index=True)
    prefs_id: Mapped[int | None] = mapped_column(ForeignKey("preference_set.id", ondelete="SET NULL"), nullable=True)
    method: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued|running|done|failed|cancelled
    stage: Mapped[str | None] = mapped_column(String(40), nullable=True)
    stage_done: Mapped[int] = mapped_column(Integer, default=0)
    stage_total: Mapped[int] = mapped_column(Integer, default=0)
    rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    stage_times: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    workdir: Mapped[str | None] = mapped_column(Text, nullable=True)
    n_selected: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="what the method recorded: projector, weights, subtasks")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Score(Base):
    __tablename__ = "score"
    __table_args__ = (Index("ix_score_run_rank", "run_id", "rank"),)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    example_id: Mapped[int] = mapped_column(ForeignKey("example.id", ondelete="CASCADE"), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    selected: Mapped[bool] = mapped_column(Boolean)
    subtask: Mapped[str | None] = mapped_column(String(200), nullable=True, doc="the subtask whose mean cosine is the max")
    components: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Decision(Base):
    """Append-only audit of pins and excludes; the latest decision per example wins."""

    __tablename__ = "decision"
    __table_args__ = (Index("ix_decision_pool_example", "pool_id", "example_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"))
    example_id: Mapped[int] = mapped_column(ForeignKey("example.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(10))  # pin | exclude | clear
    reason: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(100), default="curator")
    batch: Mapped[str] = mapped_column(String(40), index=True, doc="one id per user action, so undo reverts it whole")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Export(Base):
    __tablename__ = "export"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("run.id", ondelete="SET NULL"), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    fmt: Mapped[str] = mapped_column(String(20))
    n_examples: Mapped[int] = mapped_column(Integer)
    file_sha256: Mapped[str] = mapped_column(String(64))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
