"""What a CLI command imports before it does anything: a BM25 run must not pay for libraries
only other methods use (issue 20, item 6: BM25 took 57-111 s of CLI wall time for ~10 s of stages)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_score_command_path_does_not_import_sklearn():
    mods = imported_after("import curation.runs.execute, curation.methods")
    assert "sklearn" not in mods and "scipy.stats" not in mods and "pandas" not in mods


# --- torch: 1-2 s and hundreds of MB per process, for the model methods only (issue 20 item 6) ---

REPO = Path(__file__).resolve().parents[1]
PAGES_WITHOUT_A_MODEL = ("explore", "curate", "pool", "preferences", "compare")  # scoring lists every method
# Run `python -m curation ARGS...` for each ARGS in turn in one process (each must exit 0), then say
# whether torch was ever imported.
CLI = ("import atexit, json, runpy, sys\n"
       "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
       "for args in json.loads(sys.argv[1]):\n"
       "    sys.argv = ['curation', *args]\n"
       "    try:\n"
       "        runpy.run_module('curation', run_name='__main__', alter_sys=True)\n"
       "    except SystemExit as stop:\n"
       "        assert not stop.code, (args, stop.code)\n")


def run_cli(*commands: tuple[str, ...]) -> subprocess.CompletedProcess:
    """CLI commands in one fresh process (CURATION_HOME from the `ws` fixture); asserts they succeeded."""
    done = subprocess.run([sys.executable, "-c", CLI, json.dumps(commands)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def library_imports(page: Path) -> list[str]:
    """The `curation` modules a page imports at its top (``from curation.x import y``: x.y when a module)."""
    out: list[str] = []
    for node in ast.parse(page.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "curation":
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names
                    if (REPO / node.module.replace(".", "/") / a.name).with_suffix(".py").is_file()
                    or (REPO / node.module.replace(".", "/") / a.name / "__init__.py").is_file()]
    return out


def test_the_run_config_does_not_import_torch():
    assert "torch" not in imported_after("import curation.config, curation.engine.models")


def test_the_pair_readiness_does_not_import_torch():
    mods = imported_after("from curation.methods.heldout import label_contrast, readiness; "
                          "assert readiness(['a', 'a', 'b', 'b', 'c', 'c'])['ready']")
    assert "torch" not in mods


@pytest.mark.parametrize("page", PAGES_WITHOUT_A_MODEL)
def test_a_page_without_a_model_imports_a_library_free_of_torch(page):
    modules = library_imports(REPO / "pages" / f"{page}.py")
    assert modules
    assert "torch" not in imported_after("import " + ", ".join(modules))


def small_workspace(ws, tmp_path):
    """The first 40 demo examples as pool `small` and the demo pairs as set `demo`."""
    from curation.data.demo import DEMO_POOL, DEMO_PREFS
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Store

    store, pool = Store.open(ws), tmp_path / "small.jsonl"
    pool.write_text("".join(DEMO_POOL.read_text().splitlines(True)[:40]))
    import_pool(store, pool, name="small")
    import_prefs(store, DEMO_PREFS, name="demo")
    return store


def bm25_run(store, ws) -> int:
    from curation.config import ScoreConfig
    from curation.runs.execute import create_run, execute_run
    run_id = create_run(store, "small", "demo", ScoreConfig(method="bm25"), ws=ws)
    execute_run(store, run_id)
    return run_id


def test_a_bm25_score_and_its_worker_never_import_torch(ws, tmp_path):
    from curation.config import ScoreConfig
    from curation.runs.execute import create_run, show_run

    store = small_workspace(ws, tmp_path)
    done = run_cli(("score", "--pool", "small", "--prefs", "demo", "--method", "bm25"))
    assert "torch imported: False" in done.stderr
    run_id = int(done.stdout.split()[-1])
    assert show_run(store, run_id, top=0)["status"] == "done"
    queued = create_run(store, "small", "demo", ScoreConfig(method="bm25"), ws=ws)  # what the app's worker runs
    assert "torch imported: False" in run_cli(("worker", str(queued))).stderr
    assert show_run(store, queued, top=0)["status"] == "done"


def test_listing_showing_and_exporting_a_bm25_run_never_import_torch(ws, tmp_path):
    run_id = bm25_run(small_workspace(ws, tmp_path), ws)
    done = run_cli(("list",), ("show", str(run_id)), ("prefs", "list"), ("export", str(run_id), "--name", "sel"))
    assert "torch imported: False" in done.stderr
    assert (ws.home / "exports" / "sel" / "sel.jsonl").is_file()


def test_the_pages_without_a_model_open_on_a_bm25_run_without_torch(ws, tmp_path):
    """Their first visits, run as the app runs them (AppTest), not only their imports: Curate's
    dataset card asked every method whether it uses a model."""
    bm25_run(small_workspace(ws, tmp_path), ws)
    code = ("import sys\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=120)\n"
            "at.run()\n"
            f"for page in {PAGES_WITHOUT_A_MODEL!r}:\n"
            "    at.switch_page(f'pages/{page}.py')\n"
            "    at.run()\n"
            "    assert not at.exception, (page, [e.value for e in at.exception])\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout


def test_asking_why_a_bm25_run_cannot_be_rescored_never_imports_torch(ws, tmp_path):
    """Explore asks `rescore.refusal` for a run scored with an earlier version of its pairs; for a
    model-free run the answer must not load the gradient methods (and torch) to say no."""
    run_id = bm25_run(small_workspace(ws, tmp_path), ws)
    mods = imported_after("from curation.data.store import Store; from curation.runs.rescore import refusal; "
                          "from curation.workspace import Workspace; "
                          f"assert 'gradient method' in refusal(Store.open(Workspace.from_env()), {run_id})")
    assert "torch" not in mods
