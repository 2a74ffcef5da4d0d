"""Small helpers the pages share: the store handle, safe text rendering, error display.

User data (ids, sources, subtasks, pool and set names, file paths, error messages quoting
them) never reaches a Markdown-rendering element as is: `md_text` escapes it, so
``![x](http://host/...)`` in an id shows as typed instead of making the browser fetch a URL.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import streamlit as st

from curation.data.store import Store
from curation.data.users import SESSION_IDLE_S, Actor, SignIn, auth_mode, get_user, require
from curation.errors import CurationError, DiskFullError, disk_full_path, is_disk_full
from curation.review.mdsafe import escape
from curation.workspace import Workspace


def md_text(value) -> str:
    """`value` as literal text inside Markdown: every character Markdown, Streamlit's directives
    (``:red[...]``, ``:material/...:``), LaTeX or HTML could act on is backslash-escaped
    (`mdsafe.escape`, which the library's dataset card uses too)."""
    return escape(value)


@st.cache_resource
def _store(db_url: str) -> Store:
    return Store(db_url)


def store() -> Store:
    """The workspace's store, migrated once per server process and shared by sessions."""
    return _store(workspace().db_url)


def workspace() -> Workspace:
    return Workspace.from_env().ensure()


# --- sign-in ---------------------------------------------------------------------------------

@st.cache_resource
def _sign_in(home: str) -> SignIn:
    """One per server process: its failure counts (the rate limit) are shared by every session."""
    return SignIn(workspace())


def actor() -> Actor | None:
    """Who this browser session acts as (None while sign-in is off: the local user)."""
    return st.session_state.get("actor")


def can(action: str) -> bool:
    """Whether this session's user may do `action` (buttons they may not use are not shown;
    the library refuses the call anyway)."""
    try:
        require(actor(), action)
        return True
    except CurationError:
        return False


def signed_in() -> bool:
    """True when pages may be drawn: sign-in is off, or this session's user signed in within
    `SESSION_IDLE_S` and still exists. Otherwise draws the sign-in form and returns False."""
    if auth_mode() == "off":
        return True
    who, seen, now = st.session_state.get("actor"), st.session_state.get("actor_seen", 0.0), time.time()
    if who is not None and now - seen < SESSION_IDLE_S:
        try:
            st.session_state.actor = get_user(workspace(), who.name)  # removed or re-roled since
            st.session_state.actor_seen = now
            st.sidebar.caption(md_text(f"Signed in as {who.name} ({st.session_state.actor.role})"))
            st.sidebar.button("Sign out", on_click=lambda: st.session_state.pop("actor", None))
            return True
        except CurationError:
            pass
    st.session_state.pop("actor", None)
    st.title("Sign in")
    with st.form("sign_in"):
        name = st.text_input("User name")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            try:
                st.session_state.actor = _sign_in(str(workspace().home)).verify(name.strip(), password)
                st.session_state.actor_seen = time.time()
                st.rerun()
            except CurationError as e:
                st.error(md_text(e))
    return False


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a user mistake (or a full disk) as a red message instead of a traceback."""
    try:
        yield
    except CurationError as e:
        st.error(md_text(e))
    except Exception as e:
        if not is_disk_full(e):
            raise
        st.error(md_text(DiskFullError(disk_full_path(e) or workspace().home)))


def render_messages(messages: list[dict]) -> None:
    """A conversation as plain text: HTML or script in the data is shown, never executed."""
    for m in messages:
        with st.chat_message("user" if m["role"] != "assistant" else "assistant"):
            st.caption(m["role"])
            st.text(m["content"])


def save_upload(upload) -> Path:
    """Keep an uploaded file in the workspace (its own folder) so imports read it like any server path."""
    return workspace().save_upload(upload.name, upload.getvalue())


def import_source(placeholder: str, types: list[str]):
    """Server path and upload fields (inside a form); call the result on submit to get the path.

    A server path must lie inside a data root (`Workspace.server_path`)."""
    roots = ", ".join(str(r) for r in workspace().data_roots)
    path = st.text_input("Server path", placeholder=placeholder, help=md_text(f"a file inside {roots}"))
    upload = st.file_uploader("…or upload", type=types)
    return lambda: save_upload(upload) if upload else workspace().server_path(path)


def show_import(res) -> None:
    """An import's summary (green only when no line was bad, amber with the counts when some
    were, red when nothing was imported) and every bad line, as a table."""
    {"success": st.success, "warning": st.warning, "error": st.error}[res.level()](md_text(res.message()))
    if res.problems:
        st.dataframe(pd.DataFrame([p.__dict__ for p in res.problems]), hide_index=True)


def remembered_choice(label: str, options: list[str], key: str, fallback: str | None = None, **kw) -> str:
    """A selectbox that stays on the user's last choice when its options change (an import adds a
    pool: Streamlit would otherwise rebuild the widget on its default). The choice lives in
    ``st.session_state[key]``, not in the widget's state, so it also survives a visit to another page."""
    last = st.session_state.get(key)
    default = last if last in options else (fallback if fallback in options else options[0])
    choice = st.selectbox(label, options, index=options.index(default), **kw)
    st.session_state[key] = choice
    return choice


def feature_line(status: list[dict], n: int) -> str:
    """One line on whether a pool's gradient features are stored (re-scoring takes seconds)."""
    if not status:
        return "Gradient features: none stored for this pool yet (the first ROSE/LESS/NICE run computes them)."
    parts = [f"{d['model']} k={d['k']}: {d['covered']:,} of {n:,} examples ({d['bytes'] / 1e6:,.0f} MB, "
             f"set {d['id'][:8]})" for d in status]
    return "Gradient features stored for " + "; ".join(parts) + ". Runs on these reuse them."


def show_rescored(res) -> None:
    """The outcome of a re-score: the new run and how the selection moved."""
    st.session_state["explore_run"] = res.run_id
    st.session_state["rescored_msg"] = f"Selection updated: {res.summary()}."
    st.success(md_text(st.session_state["rescored_msg"]))


def check_panel(run_id: int, key: str):
    """The run's held-out check: its verdict (warning unless better than random), a running
    check's progress, and a button that launches one in the background; returns its state."""
    from curation.review.check import check_state, estimate_check, launch_check
    from curation.runs.progress import approx_duration

    state = check_state(store(), run_id, workspace())
    if state.summary:
        s = state.summary
        show = st.success if s["label"] == "better than random" else st.warning
        flags = f" {s['flags']} selected examples have an answer that contradicts their label." if s["flags"] else ""
        show(md_text(f"Held-out check ({s['finished']}): {s['verdict']}{flags}"))
        if stale := state.stale_budget(store(), run_id):
            st.caption(md_text(stale))
    elif not state.running:
        st.info("No held-out check of this run yet: it fine-tunes on the selection and on random "
                "selections of the same size, and tells whether the selection helps on pairs it never saw.")
    if line := state.progress_line():
        st.caption(line)
    cost = None if state.running else estimate_check(store(), run_id)
    if cost:
        st.caption(f"A check of this run: {approx_duration(cost['seconds'])} (its {cost['budget']:,}-example selection "
                   "and random selections of the same size, fine-tuned per seed; estimated from this run's own "
                   "stage times" + (f" and {cost['calibrated_on']} earlier check(s)" if cost["calibrated_on"] else "")
                   + ").")
    if st.button("Run a held-out check", key=f"check-{key}", disabled=state.running,
                 help="Background job: fine-tunes on the selection and on random selections, per seed."):
        with user_errors():
            launch_check(store(), run_id, workspace(), actor=actor())
            st.rerun()
    return state


def selection_editor(run_id: int, n_pool: int, key: str, slider: bool = False):
    """The run's one saved selection (name + budget) as widgets. Every change is saved at once
    (`selections.save_selection`), so Explore, Curate, export and check always use the same
    budget; a budget above the pool is kept whole and said so. Returns the saved selection."""
    from curation.engine.select import budget_from
    from curation.runs import selections

    saved = selections.saved_selection(store(), run_id)
    k = f"{key}_selection_{run_id}"
    as_percent = saved.percent if saved.percent is not None else max(0.01, round(100 * saved.n / max(n_pool, 1), 2))
    as_count = saved.n if saved.n is not None else max(1, budget_from(saved.percent, None, n_pool))

    def save() -> None:
        by = st.session_state[f"{k}_by"]
        pct, cnt = st.session_state.get(f"{k}_percent"), st.session_state.get(f"{k}_count")
        try:
            if by == "percent":  # a switch from count starts at the equivalent share
                selections.save_selection(store(), run_id, percent=float(pct if pct is not None else min(as_percent, 100.0)),
                                          name=st.session_state[f"{k}_name"], actor=actor())
            else:
                selections.save_selection(store(), run_id, n=int(cnt if cnt is not None else as_count),
                                          name=st.session_state[f"{k}_name"], actor=actor())
        except CurationError as e:
            st.session_state[f"{k}_error"] = str(e)

    c1, c2, c3 = st.columns([2, 1, 2])
    c1.text_input("Selection name", value=saved.name, key=f"{k}_name", on_change=save,
                  help="Explore, Curate and export share this selection; changes are saved at once")
    by = c2.radio("Budget by", ["percent", "count"], index=0 if saved.percent is not None else 1, key=f"{k}_by",
                  horizontal=True, on_change=save)
    if by == "percent":
        widget = c3.slider if slider else c3.number_input
        widget("Keep the top … % (pins count, excludes never)", 0.01 if not slider else 0.1, 100.0,
               float(max(as_percent, 0.1) if slider else as_percent), key=f"{k}_percent", on_change=save)
    else:
        c3.number_input("Number of examples", 1, value=int(as_count), step=10, key=f"{k}_count", on_change=save)
    if err := st.session_state.pop(f"{k}_error", None):
        st.error(md_text(err))
    if warning := selections.budget_warning(saved.percent, saved.n, n_pool):
        st.warning(warning)
    st.caption(md_text(f"Selection '{saved.name}' ({saved.label()}) · "
                       + (f"saved {saved.saved_at} UTC" if saved.saved else "the run's scoring budget")
                       + " · Explore, Curate and export use it"))
    return saved
