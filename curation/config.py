"""The configuration of a scoring run: one dataclass per stage, nested in `ScoreConfig`.

It round-trips through a dict (stored on the Run row and in every manifest) and can be read
from a JSON or TOML file (`score --config FILE`); unknown keys are refused, not ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.engine.settings import ModelConfig, WarmupConfig, config_from_dict
from curation.errors import CurationError

PROJECTORS = ("auto", "identity", "sparse_jl", "dense_rademacher")
THREADS_AUTO = "auto"
THREADS_ENV = "CURATION_THREADS"  # an operator's fixed count for "auto" (the tests pin 1)
AUTOCAST = ("auto", "off", "bfloat16")


@dataclass
class FeatureConfig:
    """Stage 2-3: per-example gradients, projection and the on-disk feature store."""

    k: int = 8192  # projection dimension (published: 8192); unused when features are exact
    # auto: exact features (identity, k = d) when the LoRA gradient has at most `exact_max_dim`
    # coordinates, else sparse_jl at k. identity | sparse_jl (CountSketch-style) | dense_rademacher
    projector: str = "auto"
    exact_max_dim: int = 65536  # 65,536 fp16 coordinates = 128 KB per example and checkpoint
    seed: int = 0  # projection seed: identical matrix in every process and on every device
    batch_size: int = 32  # examples per batched backward (32: +20% examples/s on the tiny model vs 16)
    dtype: str = "float16"  # stored feature dtype
    # Forward precision while extracting: auto = bfloat16 autocast on CUDA (tensor cores; the
    # per-item gradients are still formed in float32), none on CPU (no bf16 units on most
    # CPUs: slower, not faster) | off | bfloat16 (also on CPU, where it is supported)
    autocast: str = "auto"
    shard_size: int = 1024  # rows per shard file: the unit of resume
    # A pool that grew keeps the warmup its stored features were made with (when that warmup
    # is at least half the size the grown pool's share would be), so only new rows are
    # extracted. False: always warm up on the pool's own seeded share.
    reuse_warmup: bool = True
    # Cheaper features (combinable; each is part of the feature-set key, see `cheap_options`):
    # the last N warmup checkpoints only (0: all), each with its own Adam moments and its lr
    # weight renormalised over the ones used;
    checkpoints: int = 0
    # LoRA gradients of the top L decoder layers only (0: all), no backward below them
    # (`grads.top_layers`);
    lora_layers: int = 0
    # the max length from the pool's token lengths: this quantile rounded up to a multiple of
    # 32, capped by model.max_length (0: model.max_length); the run records how many are cut.
    length_quantile: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise CurationError("FeatureConfig: k, batch_size and shard_size must be >= 1")
        if self.checkpoints < 0 or self.lora_layers < 0 or not 0 <= self.length_quantile <= 1:
            raise CurationError("FeatureConfig: checkpoints and lora_layers must be >= 0 and "
                                f"length_quantile in [0, 1], got {self.checkpoints}, {self.lora_layers}, "
                                f"{self.length_quantile}")
        if self.projector not in PROJECTORS:
            raise CurationError(f"FeatureConfig.projector must be one of {', '.join(PROJECTORS)}, "
                                f"got {self.projector!r}")
        if self.dtype not in ("float16", "float32"):
            raise CurationError(f"FeatureConfig.dtype must be float16 or float32, got {self.dtype!r}")
        if self.autocast not in AUTOCAST:
            raise CurationError(f"FeatureConfig.autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")

    def autocast_for(self, device_type: str) -> str | None:
        """The autocast dtype name extraction uses on this device, or None (full precision)."""
        if self.autocast == "auto":
            return "bfloat16" if device_type == "cuda" else None
        return None if self.autocast == "off" else self.autocast

    def cheap_options(self) -> dict[str, Any]:
        """The cheaper-feature options that differ from the full default (part of the key)."""
        full = FeatureConfig()
        return {name: getattr(self, name) for name in CHEAP_OPTIONS if getattr(self, name) != getattr(full, name)}


CHEAP_OPTIONS = ("checkpoints", "lora_layers", "length_quantile")


@dataclass(frozen=True)
class Preset:
    """A named set of cheaper-feature options (`FeatureConfig` fields) and why it exists."""

    name: str
    options: dict[str, Any]
    what: str


# Chosen by `bench speed --presets` and `bench fidelity --presets` on smollm2 (README "Presets").
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("default", {}, "every warmup checkpoint, LoRA on every layer, the model's max length"),
    Preset("fast", {"checkpoints": 1},
           "the last warmup checkpoint only (measured on smollm2: ~4-4.7x, ROSE and LESS Spearman 0.99 / 0.97)"),
    Preset("faster", {"checkpoints": 1, "lora_layers": 8, "length_quantile": 0.95},
           "the last checkpoint, the top 8 layers' LoRA gradients, the pool's 95th-percentile length "
           "(measured: 7.4x, but ROSE Spearman 0.2-0.4: a quick look only)"),
)}


def preset(name: str) -> Preset:
    """A preset by name; an unknown name is refused with the known ones."""
    if name not in PRESETS:
        raise CurationError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class SelectConfig:
    """Stage 5: the budget. Exactly one of `percent` and `n`."""

    percent: float | None = 5.0
    n: int | None = None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.n is None):
            raise CurationError("select: give exactly one of percent and n")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise CurationError(f"select.percent must be in (0, 100], got {self.percent}")
        if self.n is not None and self.n < 1:
            raise CurationError(f"select.n must be >= 1, got {self.n}")


def free_threads(cores: int, load1: float) -> int:
    """Threads for a run: the cores the 1-minute load average leaves free, rounded, 1 to ``cores``
    (2 cores at load 0.3 -> 2; at 0.6 -> 1: a half-busy core makes a spinning thread wait)."""
    return max(1, min(cores, round(cores - max(load1, 0.0))))


def machine_load() -> tuple[int, float]:
    """(cores this process may run on, 1-minute load average)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return cores, load


@dataclass
class ScoreConfig:
    method: str = "rose"
    beta: float = 0.1  # DPO temperature of the ROSE validation objective
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    options: dict[str, Any] = field(default_factory=dict)  # method-specific settings, parsed by the method
    # CPU threads for torch in the run's process. "auto": the cores the 1-minute load average
    # leaves free (`free_threads`), so an idle 2-core machine uses both and a loaded one keeps
    # to 1 (on small shared CPUs extra intra-op threads spin against other processes: measured
    # 3-30x slower on 2 loaded cores). What a run used is recorded in its meta.threads.
    threads: int | str = THREADS_AUTO
    preset: str = "default"  # the `PRESETS` entry whose feature options `apply_preset` set

    def __post_init__(self) -> None:
        preset(self.preset)
        if self.threads == THREADS_AUTO:
            return
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise CurationError(f"threads must be 'auto' or an integer >= 1, got {self.threads!r}")

    def thread_plan(self) -> dict[str, Any]:
        """The thread count this process should use now, with what decided it (stored on the run)."""
        if self.threads != THREADS_AUTO:
            return {"setting": self.threads, "threads": int(self.threads)}
        if (env := os.environ.get(THREADS_ENV, "").strip()).isdigit() and int(env) >= 1:
            return {"setting": THREADS_AUTO, "threads": int(env), "from": THREADS_ENV}
        cores, load = machine_load()
        return {"setting": THREADS_AUTO, "threads": free_threads(cores, load), "cores": cores, "load1": round(load, 2)}

    def apply_preset(self, name: str) -> "ScoreConfig":
        """Set a preset's feature options (the others back to the full default); recorded."""
        chosen, full = preset(name), FeatureConfig()
        for option in CHEAP_OPTIONS:
            setattr(self.features, option, chosen.options.get(option, getattr(full, option)))
        self.preset = name
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "beta": self.beta, "model": self.model.to_dict(),
                "warmup": self.warmup.to_dict(), "features": dataclasses.asdict(self.features),
                "select": dataclasses.asdict(self.select), "options": dict(self.options),
                "threads": self.threads, "preset": self.preset}

    def for_method(self, method: str) -> "ScoreConfig":
        """The same settings for another method: ``options`` belong to a method (NICE's reward,
        ROSE's logp) and are dropped, since other methods refuse unknown options."""
        if method == self.method:
            return self
        return dataclasses.replace(self, method=method, options={})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScoreConfig":
        data = dict(data)
        parts = {"model": ModelConfig, "warmup": WarmupConfig, "features": FeatureConfig, "select": SelectConfig}
        for key, kind in parts.items():
            if key in data:
                data[key] = config_from_dict(kind, data[key] or {})
        return config_from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path) -> "ScoreConfig":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CurationError(f"{path}: cannot read config: {e}") from None
        return cls.from_dict(raw)
