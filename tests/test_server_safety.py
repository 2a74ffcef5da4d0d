"""A closed server (issue 13, items 5 and 6): loopback only, server paths inside data roots,
user data rendered as text on every page."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest
from test_app import PAGES, run_page

from curation.data import catalog
from curation.data.store import Store
from curation.errors import CurationError
from curation.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
IMG = "![x](http://127.0.0.1:9/leak.png)"
NAME_IMG = "![x](leak.png) [y](javascript:alert(1))"  # names may hold no '/' (`names.check_name`)
PAYLOADS = [IMG, "[click](javascript:alert(1))", "**bold** _it_ `code`", "<img src=x onerror=alert(1)>",
            ":red[red] :material/home: $x^2$", "# heading\n- item", "a\\*b <b>", "http://127.0.0.1:9/auto"]


# --- loopback only ---------------------------------------------------------------------------

def test_shipped_streamlit_config_binds_loopback_without_usage_stats():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["browser"]["gatherUsageStats"] is False


def _other_address() -> str | None:
    """A non-loopback address of this machine (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_fresh_streamlit_run_listens_on_loopback_only(tmp_path):
    """`streamlit run app.py` with no address flag, from the repository (where the config is)."""
    port = _free_port()
    env = {**os.environ, "CURATION_HOME": str(tmp_path / "ws")}
    env.pop("CURATION_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not _connects("127.0.0.1", port):
            assert proc.poll() is None and time.time() < deadline, "streamlit did not start"
            time.sleep(0.2)
        listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")]
        assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only, not 0.0.0.0
        six = Path("/proc/net/tcp6")
        assert not six.exists() or not any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
                                           for line in six.read_text().splitlines()[1:])
        if (other := _other_address()) is not None:
            assert not _connects(other, port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- server paths ----------------------------------------------------------------------------

def test_server_paths_must_be_inside_a_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("CURATION_DATA_ROOTS", raising=False)
    ws = Workspace.from_env(tmp_path / "ws").ensure()
    inside = ws.home / "data" / "pool.jsonl"
    inside.write_text("{}\n")
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    secret.chmod(0o600)
    (ws.home / "data" / "link.json").symlink_to(secret)
    assert ws.server_path(str(inside)) == inside.resolve()
    assert ws.server_path("pool.jsonl") == inside.resolve()  # relative: in the first root
    messages = set()
    for bad in (str(secret), str(tmp_path / "missing.json"), str(ws.home / "data" / ".." / ".." / "secret.json"),
                str(ws.home / "data" / "link.json"), "/etc/passwd", ""):
        with pytest.raises(CurationError) as err:
            ws.server_path(bad)
        messages.add(str(err.value))
    assert len(messages) == 1 and "hunter2" not in messages.pop()  # the same words: nothing to probe with
    monkeypatch.setenv("CURATION_DATA_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path}")
    assert Workspace.from_env(tmp_path / "ws").server_path(str(secret)) == secret.resolve()


def test_pool_page_refuses_a_path_outside_the_data_roots(ws, tmp_path):
    secret = tmp_path / "creds.jsonl"
    secret.write_text('{"instruction": "key", "output": "AKIA-SECRET"}\n')
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    next(t for t in at.text_input if t.label == "Server path").set_value(str(secret))
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception
    assert any("must be inside a data folder" in e.value for e in at.error)
    assert catalog.list_pools(Store.open(ws)) == []


# --- user data as text -----------------------------------------------------------------------

def _html(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("strikethrough").render(markdown)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_md_text_renders_as_typed(payload):
    from pages._shared import md_text
    html = _html(md_text(payload))
    assert "<img" not in html and "<a " not in html and "<strong" not in html and "<em" not in html
    assert "<code" not in html and "<h1" not in html and "<li" not in html
    text = MarkdownIt("commonmark").enable("strikethrough").parseInline(md_text(payload))[0].children
    shown = "".join(t.content for t in text if t.type in ("text", "softbreak") or t.type == "html_inline")
    assert shown.replace("\n", "") == payload.replace("\n", "")


@pytest.fixture
def hostile(ws, tmp_path):
    """A pool, preference set and finished run whose names, ids, sources and subtasks are payloads."""
    from curation.bench.reliability import make_done_run
    from curation.data.imports import import_pool, import_prefs
    store = Store.open(ws)
    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(json.dumps({"id": f"{IMG} {i}", "source": PAYLOADS[i % len(PAYLOADS)],
                                        "instruction": f"Q{i}", "output": f"A{i}"}) + "\n" for i in range(12)))
    import_pool(store, pool, name=NAME_IMG)
    prefs = tmp_path / "q.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"P{i}", "chosen": "good", "rejected": "bad",
                                         "subtask": PAYLOADS[i % 3]}) + "\n" for i in range(4)))
    import_prefs(store, prefs, name=f"prefs {NAME_IMG}", subtask_field="subtask")
    make_done_run(store, NAME_IMG, 4, tmp_path)
    return store


def _markdown_bodies(at: AppTest) -> list[str]:
    kinds = ("markdown", "caption", "error", "success", "warning", "info", "subheader", "title", "header")
    return [e.value for k in kinds for e in getattr(at, k)]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_user_data_as_text(hostile, page):
    at = run_page(page)
    bodies = _markdown_bodies(at)
    assert bodies
    for body in bodies:
        html = _html(body)
        assert "<img" not in html and "<a " not in html, body
