"""One interface for every selection method, registered by name.

A method turns `ScoreInputs` (the pool, the validation pairs, the run config) into a
`ScoreOutput` (one score per example plus what explains it). The run machinery around it
(database, selection, progress) is the same for all methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from curation.config import ScoreConfig
from curation.errors import CurationError
from curation.runs.jobs import Reporter
from curation.workspace import Workspace

Messages = list[dict[str, str]]


@dataclass
class ValPair:
    """One validation item: a preference pair of the target task."""

    prompt: str
    prompt_messages: Messages
    chosen: str
    rejected: str
    subtask: str


@dataclass
class ScoreInputs:
    example_ids: list[int]  # database ids, in the row order of every output array
    fetch: Callable[[Sequence[int]], list[Messages]]  # messages of some ids (bounded memory for big pools)
    pairs: list[ValPair]
    config: ScoreConfig
    workdir: Path
    workspace: Workspace
    reporter: Reporter
    rank: tuple[int, int] = (0, 1)  # (i, N): this process computes train-feature shards i, i+N, ...
    pool: str = ""  # the pool's name (recorded by the feature store)
    content_hashes: list[str] = field(default_factory=list)  # aligned with example_ids
    # messages by content hash, from this pool first, then any pool (feature-store segments)
    fetch_hashes: Callable[[Sequence[str]], list[Messages]] | None = None
    # (example ids, scores) of another finished run, in id order (fusion reads its inputs)
    scores_of: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None
    # the stored feature set a re-score uses ({"set": id, "warmup": the base run's meta.warmup}):
    # with it a gradient method need not load the model to find its features
    feature_hint: dict | None = None


@dataclass
class ScoreOutput:
    scores: np.ndarray  # [n] float32, higher = more useful for the target task
    subtasks: list[str] = field(default_factory=list)
    subtask_means: np.ndarray | None = None  # [n, n_subtasks]
    per_checkpoint: np.ndarray | None = None  # [n, n_ckpt]; sums to scores
    driver: np.ndarray | None = None  # [n] index of the subtask whose mean is the max
    meta: dict[str, Any] = field(default_factory=dict)  # recorded on the run (timings, projector, ...)


@dataclass(frozen=True)
class ScoreLabels:
    """What a method's numbers are, in words: the inspector's titles and sentences come from
    here, so a BM25 score is never called a cosine (every method declares its own)."""

    name: str  # how people write the method: "ROSE", "BM25"
    score: str  # what the score measures, one sentence
    per_subtask: str | None = None  # the per-subtask value ("mean gradient cosine"); None: none
    per_pair: str | None = None  # the per-pair value ("BM25 score"); None: the method has none
    gradient: bool = False  # scores sum warmup checkpoints of gradient features (neighbours, map)

    @property
    def subtask_title(self) -> str | None:
        """The chart title of the per-subtask values, e.g. "Mean BM25 score per subtask"."""
        return f"{self.per_subtask[:1].upper()}{self.per_subtask[1:]} per subtask" if self.per_subtask else None

    @property
    def pairs_title(self) -> str | None:
        """The heading of the most aligned pairs, e.g. "Most aligned validation pairs (BM25 score)"."""
        return f"Most aligned validation pairs ({self.per_pair})" if self.per_pair else None


class Method(ABC):
    name: ClassVar[str]
    labels: ClassVar[ScoreLabels] = ScoreLabels("this method", "the method's score (no description)",
                                                per_subtask="mean score")
    needs_pairs: ClassVar[bool] = True
    # what the run's settings apply to (the Scoring form hides the rest, the dataset card says
    # "no model" when False): a language model at all, and a LoRA fine-tune (warmup or episodes)
    uses_model: ClassVar[bool] = True
    uses_lora: ClassVar[bool] = False
    shards_features: ClassVar[bool] = False  # True: `--shard i/N` ranks split its train features
    description: ClassVar[str] = ""
    # the options ``ScoreConfig.options`` may set: a dict of defaults, or an options dataclass
    # (NICE, RAISE); `parse_options` converts ``--option KEY=VALUE`` text by it
    option_spec: ClassVar[Any] = {}

    @abstractmethod
    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        """Score every example of `inputs.example_ids`."""

    def explain(self, workdir: Path, example_id: int, messages: Messages, pairs: Sequence[ValPair]) -> dict[str, Any]:
        """Method-specific evidence for one example's score, for the inspector.

        Returns {title: value} where value is text or a list of row dicts (drawn as a table),
        e.g. BM25's matching terms or NICE's sampled responses with their rewards.
        """
        return {}

    def run_labels(self, workdir: Path | None) -> ScoreLabels:
        """The labels of one run of this method: `labels`, unless the run's folder says more
        (an auto run's are its winner's, so Explore treats it as the method it chose)."""
        return self.labels

    def reason(self, workdir: Path, example_id: int) -> str | None:
        """One sentence for the why-selected text beyond the shared ones (subtask, checkpoint,
        pair), e.g. how much of a contrast score its rejected answers give; None: nothing more."""
        return None

    def pair_scores(self, workdir: Path, example_id: int, messages: Messages,
                    pairs: Sequence[ValPair]) -> np.ndarray | None:
        """``[n_pairs]``: the example's score against each validation pair (the row of S that
        its subtask means average), for "most aligned pairs"; None when the method has none.
        Gradient methods get theirs from the stored features (`explore.aligned_pairs`)."""
        return None

    def schedule(self, workdir: Path) -> np.ndarray | None:
        """A dynamic method's training schedule: ``[steps, batch]`` example ids, -1 for an empty
        slot (exported beside the selection); None for a static method."""
        return None


def method_options(method: str, config: ScoreConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """`defaults` overridden by `config.options`; an unknown key is refused, not ignored
    (a typo such as ``k_1`` must not silently run with the default)."""
    unknown = sorted(set(config.options) - set(defaults))
    if unknown:
        raise CurationError(f"method {method!r}: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(defaults)) or 'none'}")
    return {**defaults, **config.options}


def option_types(method: Method) -> dict[str, str]:
    """``{option: type}`` of a method's options, the type as written (``"int | None"``); an
    option whose default is None has type ``"None"`` (any number or text)."""
    spec = method.option_spec
    if dataclasses.is_dataclass(spec):
        return {f.name: str(f.type) for f in dataclasses.fields(spec)}
    return {k: "None" if v is None else type(v).__name__ for k, v in spec.items()}


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _convert(text: str, kind: str) -> Any:
    """``text`` as the first of ``kind``'s types it parses as (bool, int, float, str)."""
    kinds = [k.strip() for k in kind.split("|")]
    if text.lower() in ("none", "null") and "None" in kinds:
        return None
    if kinds == ["None"]:
        kinds = ["int", "float", "str"]
    for k in kinds:
        if k == "bool" and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if k in ("int", "float"):
            try:
                return int(text) if k == "int" else float(text)
            except ValueError:
                continue
        if k == "str":
            return text
    raise ValueError(f"expected {kind}")


def parse_options(method_name: str, items: Sequence[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` (the CLI's ``--option``) as typed method options; an unknown key
    or a value of the wrong type is refused, naming the method and its options."""
    method = get_method(method_name)
    types, out = option_types(method), {}
    known = ", ".join(f"{k} ({t})" for k, t in sorted(types.items())) or "none"
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CurationError(f"--option {item!r}: expected KEY=VALUE")
        if key not in types:
            raise CurationError(f"method {method_name!r} has no option {key!r}; its options: {known}")
        try:
            out[key] = _convert(text.strip(), types[key])
        except ValueError as e:
            raise CurationError(f"method {method_name!r}, option {key}={text!r}: {e}") from None
    return out


def output_from_means(means: np.ndarray, subtasks: list[str], meta: dict[str, Any]) -> ScoreOutput:
    """Max over subtasks of ``means [n, n_subtasks]`` (the ROSE aggregation, METHODS.md §0
    stage 4), keeping the means and the driving subtask for the inspector."""
    means = np.asarray(means, np.float32)
    driver = means.argmax(axis=1)
    return ScoreOutput(scores=means[np.arange(len(means)), driver], subtasks=subtasks,
                       subtask_means=means, driver=driver, meta=meta)


REGISTRY: dict[str, type[Method]] = {}  # filled as method modules load (`curation.methods.REGISTRY`: all)
# Each method's module under curation.methods, in the UI's order. `get_method` imports only the one
# it is asked for: the gradient methods import torch, which a BM25 or random run never needs.
METHOD_MODULES = {"less": "less", "rose": "rose", "nice": "nice", "bm25": "bm25", "dsir": "dsir",
                  "random": "random_", "raise": "raise_", "repsim": "repsim", "contrast": "contrast",
                  "fusion": "fusion", "auto": "auto"}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    from curation import methods  # the package loads the method's module on demand
    return methods.method_class(name)()
