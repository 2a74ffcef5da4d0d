"""A closed server (issue 13, items 5 and 6): loopback only, server paths inside data roots,
user data rendered as text on every page."""

from __future__ import annotations

import base64
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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`streamlit run app.py` with no address flag, from the repository (where the config is)."""
    port = _free_port()
    env = {**os.environ, "CURATION_HOME": str(tmp_path_factory.mktemp("served") / "ws")}
    env.pop("CURATION_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not _connects("127.0.0.1", port):
            assert proc.poll() is None and time.time() < deadline, "streamlit did not start"
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_fresh_streamlit_run_listens_on_loopback_only(served):
    port = served
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")]
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only, not 0.0.0.0
    six = Path("/proc/net/tcp6")
    assert not six.exists() or not any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
                                       for line in six.read_text().splitlines()[1:])
    if (other := _other_address()) is not None:
        assert not _connects(other, port)


def _status(port: int, host: str, path: str, origin: str | None = None, upgrade: bool = False) -> int:
    """The HTTP status the server answers a request with this Host (and Origin, and WebSocket upgrade)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"] + ([f"Origin: {origin}"] if origin else [])
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                  f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Protocol: streamlit"]
    else:
        lines.append("Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(conn.recv(4096).split(b" ", 2)[1])


def test_a_dns_rebound_page_gets_no_websocket(served):
    """server.allowedHosts (loopback names): the WebSocket that carries every page's data and
    action is refused to a foreign Host. Before: Host and Origin evil.example got 101."""
    port = served
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}"):
        assert _status(port, host, "/_stcore/stream", f"http://{host}", upgrade=True) == 403, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert _status(port, host, "/_stcore/stream", f"http://{host}", upgrade=True) == 101, host
    assert _status(port, f"localhost:{port}", "/") == 200
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert set(cfg["server"]["allowedHosts"]) == {"localhost", "127.0.0.1", "::1"}


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



def test_a_nul_byte_in_a_server_path_is_a_clear_error(tmp_path, monkeypatch):
    """Before: Path.resolve raised an uncaught ValueError ("embedded null byte")."""
    monkeypatch.delenv("CURATION_DATA_ROOTS", raising=False)
    ws = Workspace.from_env(tmp_path / "ws").ensure()
    for bad in ("pool\0.jsonl", str(ws.home / "data" / "a\0b"), "\0"):
        with pytest.raises(CurationError, match="NUL character"):
            ws.server_path(bad)
    with pytest.raises(CurationError, match="must be inside a data folder"):  # an unknown ~user, too
        ws.server_path("~no-such-user-here/pool.jsonl")


def test_pool_page_reports_a_nul_byte_in_a_server_path(ws):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    next(t for t in at.text_input if t.label == "Server path").set_value("pool\0.jsonl")
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception
    assert any("NUL character" in e.value for e in at.error)
    assert catalog.list_pools(Store.open(ws)) == []


# --- workspace permissions -------------------------------------------------------------------

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_workspace_is_private_to_its_owner(ws):
    """Before: curation.db was 0644 and the folders 0755 (world-readable under the usual umask)."""
    store = Store.open(ws)
    import_small_pool(store, ws)
    db = ws.home / "curation.db"
    assert _mode(db) == 0o600
    side = list(ws.home.glob("curation.db-*"))  # the WAL and its index, while the store is open
    assert side and all(_mode(p) == 0o600 for p in side)
    assert _mode(ws.home) == 0o710 and _mode(ws.exports) == 0o750
    assert {p.name: _mode(p) for p in ws.home.iterdir() if p.is_dir() and p.name != "exports"} == {
        name: 0o700 for name in ("models", "runs", "uploads", "logs", "data")}


def test_an_older_world_readable_workspace_is_tightened(tmp_path, monkeypatch):
    monkeypatch.delenv("CURATION_DB_URL", raising=False)
    home = tmp_path / "old"
    (home / "runs").mkdir(parents=True, mode=0o755)
    (home / "curation.db").write_bytes(b"")
    for path in (home, home / "runs", home / "curation.db"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    ws = Workspace.from_env(home).ensure()
    assert (_mode(ws.home), _mode(ws.home / "runs"), _mode(ws.home / "curation.db")) == (0o710, 0o700, 0o600)


def import_small_pool(store: Store, ws: Workspace) -> None:
    from curation.data.imports import import_pool
    src = ws.home / "data" / "p.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Q{i}", "output": f"A{i}"}) + "\n" for i in range(3)))
    import_pool(store, src, name="p")


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
