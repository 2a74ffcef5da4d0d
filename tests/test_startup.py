"""What a CLI command imports before it does anything: a BM25 run must not pay for libraries
only other methods use (issue 20, item 6: BM25 took 57-111 s of CLI wall time for ~10 s of stages)."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_score_command_path_does_not_import_sklearn():
    mods = imported_after("import curation.runs.execute, curation.methods")
    assert "sklearn" not in mods and "scipy.stats" not in mods and "pandas" not in mods


# --- torch: 1-2 s and hundreds of MB per process, for the model methods only (issue 20 item 6) ---

def test_the_run_config_does_not_import_torch():
    assert "torch" not in imported_after("import curation.config, curation.engine.models")
