"""Shared fixtures: tiny random models and token items, built from configs (never downloaded)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

# Tiny test models are dominated by per-op overhead, and on a small shared CPU a second
# intra-op thread makes them up to 100x slower (OpenMP threads spin against other processes).
torch.set_num_threads(1)
os.environ["CURATION_THREADS"] = "1"
os.environ["CURATION_CPU_PROBE"] = "0"  # estimates would follow the machine's load (runs.progress.cpu_contention)  # runs' threads = "auto" would otherwise follow the machine's load



def pytest_collection_modifyitems(config, items):
    """The fast set first, then the long scenarios (marked ``slow`` or ``browser``), so a broken
    formula shows in the first minutes; CI still runs everything (`-m "not slow"` for a quick loop)."""
    items.sort(key=lambda item: any(item.get_closest_marker(m) for m in ("slow", "browser")))


VOCAB = 100
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_tiny_lora_model(dtype: torch.dtype = torch.float32, seed: int = 0, hidden: int = 32,
                         layers: int = 2, r: int = 4, vocab: int = VOCAB):
    """A random LlamaForCausalLM with a PEFT LoRA adapter on q, k, v, o, in eval mode.

    PEFT starts ``lora_B`` at zero, which would make every ``lora_A`` gradient zero and hide
    bugs: we randomise it, as a trained checkpoint would be.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules=LORA_TARGETS)
    with warnings.catch_warnings():  # PEFT calls a transformers API that v5 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    if dtype == torch.float64:
        for module in model.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.forward = _rms_norm_keeping_dtype(module)
    return model.to(dtype).eval()


def _rms_norm_keeping_dtype(norm):
    """HF's RMSNorm computes in float32, a *downcast* in a float64 model: its rounding breaks
    exact linearity of the backward at ~1e-7. This version keeps the input dtype."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return norm.weight * (hidden * torch.rsqrt(variance + norm.variance_epsilon))

    return forward


class ItemFactory:
    """Random token items of varied lengths: prompt tokens are labelled -100, response tokens not."""

    def __init__(self, seed: int = 0, vocab: int = VOCAB):
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = vocab

    def _int(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=self.gen))

    def sequence(self, prompt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` of a prompt (random unless given) plus a random response."""
        if prompt is None:
            prompt = torch.randint(1, self.vocab, (self._int(2, 9),), generator=self.gen)
        response = torch.randint(1, self.vocab, (self._int(2, 12),), generator=self.gen)
        ids = torch.cat([prompt, response])
        labels = torch.cat([torch.full_like(prompt, -100), response])
        return ids, labels

    def prompt(self) -> torch.Tensor:
        return torch.randint(1, self.vocab, (self._int(2, 9),), generator=self.gen)

    def sft(self, n: int):
        from curation.engine.objectives import sft_item
        return [sft_item(*self.sequence()) for _ in range(n)]

    def pairs(self, n: int):
        from curation.engine.objectives import pair_item
        out = []
        for _ in range(n):
            prompt = self.prompt()
            out.append(pair_item(self.sequence(prompt), self.sequence(prompt)))
        return out

    def sampled(self, n: int, m: int = 4):
        """NICE items: ``m`` responses per prompt, rewards in [-1, 1] (some negative)."""
        from curation.engine.objectives import sampled_item
        out = []
        for _ in range(n):
            prompt = self.prompt()
            rewards = (torch.rand(m, generator=self.gen) * 2 - 1).tolist()
            out.append(sampled_item([self.sequence(prompt) for _ in range(m)], rewards))
        return out


@pytest.fixture
def make_model():
    """Factory: ``make_model(dtype=torch.float32, seed=0, **sizes)`` -> tiny PEFT LoRA Llama."""
    return make_tiny_lora_model


@pytest.fixture
def tiny_model():
    return make_tiny_lora_model()


@pytest.fixture
def tiny_model64():
    return make_tiny_lora_model(torch.float64)


@pytest.fixture
def items() -> ItemFactory:
    return ItemFactory(seed=0)


MICRO_MODEL_CONFIG = dict(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                          block_size=64, batch_size=8, steps=20)


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory):
    """A micro causal LM + tokenizer built offline from the demo pool in seconds (a local HF model dir).

    It takes the same path as any user's local model, so end-to-end tests stay fast.
    """
    from curation.data.demo import DEMO_POOL
    from curation.engine.tiny import TinyConfig, build_tiny_model

    out = tmp_path_factory.mktemp("micro") / "model"
    build_tiny_model(DEMO_POOL, out, TinyConfig(**MICRO_MODEL_CONFIG))
    return out


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace (SQLite in tmp_path) that the library and the app pages both use."""
    from curation.workspace import Workspace

    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("CURATION_DB_URL", raising=False)
    return Workspace.from_env().ensure()


# --- databases: SQLite, and a throwaway PostgreSQL server ------------------------------------

def _pg_bindir():
    """The folder of Debian's (or the PATH's) PostgreSQL server binaries, or None."""
    import glob
    import shutil
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    return None if initdb is None else __import__("pathlib").Path(initdb).parent


class PostgresServer:
    """A private PostgreSQL cluster: `initdb` into a temp folder, listening only on a unix socket
    in that (0700) folder, trust auth for the one superuser `curation`. Root may not run the
    server, so as root it runs as the `postgres` user."""

    def __init__(self, bindir):
        import os
        import shutil
        import tempfile
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="curation-pg-")
        os.chmod(self.root, 0o700)
        self.prefix = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = 5432
        self._n = 0
        self._pg("initdb", "-D", f"{self.root}/data", "-A", "trust", "-U", "curation", "--no-sync", "-E", "UTF8")
        self._pg("pg_ctl", "-D", f"{self.root}/data", "-w", "-l", f"{self.root}/server.log", "-o",
                 f"-k {self.root} -p {self.port} -c listen_addresses='' -F -c max_connections=200", "start")

    def _pg(self, tool: str, *args: str) -> None:
        import subprocess
        subprocess.run([*self.prefix, str(self.bindir / tool), *args], check=True, capture_output=True)

    def url(self, database: str) -> str:
        """A plain ``postgresql://`` URL, as a user would write it (the store picks psycopg 3)."""
        return f"postgresql://curation@/{database}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        from sqlalchemy import create_engine
        self._n += 1
        name = f"t{self._n}"
        engine = create_engine(self.url("postgres").replace("postgresql://", "postgresql+psycopg://"),
                               isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        import shutil
        self._pg("pg_ctl", "-D", f"{self.root}/data", "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session (skips when its binaries are absent)."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; the README's "
                    "test command and CI install it)")
    server = PostgresServer(bindir)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    return request.getfixturevalue("postgres").new_database()
