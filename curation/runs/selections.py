"""A run's saved selection: one named budget that Explore, Curate, export and check all use.

The overrides (pins, excludes) already live once per pool in the audit trail; what differed
between pages was the budget. A run keeps one saved selection in its metadata
(``run.meta["selection"]``): a name, exactly one of ``percent`` / ``n``, and when it was saved.
Without one, the budget the run was scored with (``config.select``) applies, so a fresh run
reads the same everywhere and nothing needs a migration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from curation.data.store import Run, Store
from curation.data.store.models import utcnow
from curation.data.users import Actor, require
from curation.engine.select import budget_from
from curation.errors import CurationError


@dataclass(frozen=True)
class SavedSelection:
    """The budget every page and export of a run starts from."""

    name: str
    percent: float | None
    n: int | None
    saved_at: str | None = None  # None: not saved, the run's scoring budget

    @property
    def saved(self) -> bool:
        return self.saved_at is not None

    def budget(self) -> tuple[float | None, int | None]:
        return self.percent, self.n

    def label(self) -> str:
        return budget_label(self.percent, self.n)


def budget_label(percent: float | None, n: int | None) -> str:
    """'top 5%' or 'top 1,500', as people say a budget."""
    return f"top {percent:g}%" if percent is not None else f"top {n:,}"


def default_name(run_id: int, percent: float | None, n: int | None) -> str:
    return f"run {run_id} {budget_label(percent, n)}"


def selection_of(run: Run) -> SavedSelection:
    """The run's saved selection, or its scoring budget under a default name."""
    saved = (run.meta or {}).get("selection")
    if saved:
        return SavedSelection(saved["name"], saved.get("percent"), saved.get("n"), saved.get("saved_at"))
    sel = (run.config or {}).get("select") or {}
    percent, n = (sel.get("percent", 5.0), None) if sel.get("n") is None else (None, int(sel["n"]))
    return SavedSelection(default_name(run.id, percent, n), percent, n)


def saved_selection(store: Store, run_id: int) -> SavedSelection:
    """`selection_of` for a run id (CurationError for an unknown run)."""
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        return selection_of(run)


def save_selection(store: Store, run_id: int, percent: float | None = None, n: int | None = None,
                   name: str | None = None, actor: Actor | None = None) -> SavedSelection:
    """Save the run's budget (exactly one of percent/n) under a name; returns what was stored.

    The budget is validated here (not clamped later in silence): percent in (0, 100], n >= 1.
    """
    require(actor, "select")
    if (percent is None) == (n is None):
        raise CurationError("give exactly one of percent and n for the selection's budget")
    try:
        budget_from(percent, n, 1)
    except ValueError as e:
        raise CurationError(f"budget: {e}") from None
    if n is not None and n < 1:
        raise CurationError(f"budget: n must be at least 1, got {n}")
    name = (name or "").strip() or default_name(run_id, percent, n)
    if len(name) > 120:
        raise CurationError(f"selection name is {len(name)} characters long; keep it under 120")
    saved = SavedSelection(name, None if percent is None else float(percent), None if n is None else int(n),
                           utcnow().isoformat(timespec="seconds"))
    with store.session(write=True) as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        run.meta = {**(run.meta or {}), "selection": asdict(saved)}
    return saved


def budget_warning(percent: float | None, n: int | None, n_pool: int) -> str | None:
    """Say so when a budget asks for more than the run scored (instead of clamping in silence)."""
    if n is not None and n > n_pool:
        return (f"The budget asks for {n:,} examples but the run scored {n_pool:,}: "
                f"all {n_pool:,} are kept. Lower the budget to select anything.")
    if percent is not None and percent >= 100:
        return f"A budget of {percent:g}% keeps the whole pool ({n_pool:,} examples): nothing is left out."
    return None
