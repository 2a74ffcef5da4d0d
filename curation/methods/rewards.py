"""Reward functions R(x, y) for NICE's policy-gradient objective (METHODS.md §3).

NICE needs a scalar reward for every sampled response: a check against a label (exact match,
the final number, a unit-test pass rate), a pattern, a reward model's score, or any user
function. A reward is named by a spec string so it fits in a run's options:

    exact_match              normalised text equality with the label
    number                   last number of the response == last number of the label
    regex:<pattern>          1 when re.search(pattern, response) matches (no label)
    reward_model:<path|id>   a sequence-classification model's score (no label)
    unit_tests               pass rate of the response's code on the label's tests (sandboxed)
    plugin:<module>:<func>   func(prompt, response, label) -> float

`needs_label` says whether a reward reads the label; NICE's label-free mode refuses those.
For the demo the label of a validation pair is its chosen response, so "number" compares
final answers.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Any, Callable, ClassVar

from curation.errors import CurationError


class Reward(ABC):
    """``R(prompt, response, label) -> float``; ``label`` is None in label-free use."""

    name: ClassVar[str]
    needs_label: ClassVar[bool] = True

    def __init__(self, arg: str | None = None):
        if arg is not None:
            raise CurationError(f"reward {self.name!r} takes no argument (got {arg!r})")

    @classmethod
    def build(cls, arg: str | None, allow_download: bool = False) -> Reward:
        """Construct from the spec's argument; only rewards that load models use ``allow_download``."""
        return cls(arg)

    @abstractmethod
    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        """The reward of ``response`` to ``prompt``."""

    @property
    def spec(self) -> str:
        """The spec string that rebuilds this reward (recorded in the run's metadata)."""
        return self.name

    def _label(self, label: str | None) -> str:
        if label is None:
            raise CurationError(f"reward {self.spec!r} needs a label (the validation pair's chosen response)")
        return label


REWARDS: dict[str, type[Reward]] = {}


def register_reward(cls: type[Reward]) -> type[Reward]:
    REWARDS[cls.name] = cls
    return cls


def make_reward(spec: str, allow_download: bool = False) -> Reward:
    """Build a reward from its spec: ``name`` or ``name:argument`` (the argument may hold colons).

    ``allow_download`` lets a reward model be fetched from the hub (off, like base models).
    """
    name, sep, arg = spec.partition(":")
    if name not in REWARDS:
        raise CurationError(f"unknown reward {spec!r}; available: {', '.join(sorted(REWARDS))}")
    return REWARDS[name].build(arg if sep else None, allow_download=allow_download)


def normalise_text(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding quotes and final punctuation dropped."""
    text = " ".join(text.casefold().split())
    return text.strip("\"'`").rstrip(".!?;:").strip()


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")


def last_number(text: str) -> Fraction | None:
    """The last number of ``text`` as an exact value ("1,000" == "1000.0", "3/4" == "0.75")."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Fraction(found[-1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


@register_reward
class ExactMatch(Reward):
    """1 when the normalised response equals the normalised label."""

    name = "exact_match"

    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        return float(normalise_text(response) == normalise_text(self._label(label)))


@register_reward
class NumberMatch(Reward):
    """1 when the last number of the response equals the label's (the demo's final answers)."""

    name = "number"

    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        want = last_number(self._label(label))
        if want is None:
            raise CurationError(f"reward 'number': the label has no number: {label!r}")
        return float(last_number(response) == want)


@register_reward
class RegexMatch(Reward):
    """1 when the pattern occurs in the response: label-free format or content checks."""

    name = "regex"
    needs_label = False

    def __init__(self, arg: str | None = None):
        if not arg:
            raise CurationError("reward 'regex' needs a pattern: regex:<pattern>")
        try:
            self.pattern = re.compile(arg)
        except re.error as e:
            raise CurationError(f"reward 'regex': bad pattern {arg!r}: {e}") from None

    @property
    def spec(self) -> str:
        return f"regex:{self.pattern.pattern}"

    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        return float(self.pattern.search(response) is not None)


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The first fenced code block of a response, or the whole response when it has none."""
    found = _FENCE.search(response)
    return found.group(1) if found else response


@register_reward
class UnitTests(Reward):
    """Pass rate of the response's code on the label's tests, run in :mod:`curation.sandbox.isolate`."""

    name = "unit_tests"
    timeout_s: ClassVar[float] = 5.0
    memory_mb: ClassVar[int] = 256

    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        from curation.sandbox.isolate import run_python  # lazy: only code rewards start processes

        return run_python(extract_code(response), self._label(label), self.timeout_s, self.memory_mb).pass_rate


@register_reward
class RewardModel(Reward):
    """A sequence-classification model's score: the logit of its last (often only) label.

    The (prompt, response) pair is formatted as a conversation with the reward model's own
    chat template (tulu format without one). Loaded from local files only, like base models.
    """

    name = "reward_model"
    needs_label = False
    max_length: ClassVar[int] = 2048

    def __init__(self, arg: str | None = None, allow_download: bool = False):
        if not arg:
            raise CurationError("reward 'reward_model' needs a model: reward_model:<path or hub id>")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from curation.engine.model import resolve_device

        self.source = arg
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(arg, local_files_only=not allow_download)
            self.model = AutoModelForSequenceClassification.from_pretrained(arg, local_files_only=not allow_download)
        except (OSError, ValueError) as exc:
            raise CurationError(f"cannot load reward model {arg!r} (local files only): {exc}") from exc
        self.model.to(resolve_device("auto")).eval()

    @classmethod
    def build(cls, arg: str | None, allow_download: bool = False) -> Reward:
        return cls(arg, allow_download)

    @property
    def spec(self) -> str:
        return f"reward_model:{self.source}"

    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        import torch

        from curation.engine.model import format_conversation

        text = format_conversation(self.tokenizer, [{"role": "user", "content": prompt},
                                                    {"role": "assistant", "content": response}])
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_length,
                             add_special_tokens=not self.tokenizer.chat_template)
        with torch.no_grad():
            logits = self.model(**enc.to(self.model.device)).logits
        return float(logits[0, -1])


@register_reward
class Plugin(Reward):
    """A user function ``module:function``; set ``function.needs_label = False`` for label-free use."""

    name = "plugin"

    def __init__(self, arg: str | None = None):
        module, _, func = (arg or "").rpartition(":")
        if not module or not func:
            raise CurationError(f"reward 'plugin' needs module:function, got {arg!r}")
        self.target = arg
        self.fn = _import_callable(module, func)
        self._needs_label = bool(getattr(self.fn, "needs_label", True))

    @property
    def needs_label(self) -> bool:  # type: ignore[override]  (per instance: the plugin decides)
        return self._needs_label

    @property
    def spec(self) -> str:
        return f"plugin:{self.target}"

    def __call__(self, prompt: str, response: str, label: str | None) -> float:
        value = self.fn(prompt, response, label)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CurationError(f"reward plugin {self.target!r} returned {value!r}, not a number") from None


def _import_callable(module: str, func: str) -> Callable[..., Any]:
    try:
        fn = getattr(importlib.import_module(module), func)
    except ImportError as e:
        raise CurationError(f"reward plugin: cannot import module {module!r}: {e}") from None
    except AttributeError:
        raise CurationError(f"reward plugin: module {module!r} has no attribute {func!r}") from None
    if not callable(fn):
        raise CurationError(f"reward plugin: {module}.{func} is not callable")
    return fn
