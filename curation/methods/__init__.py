"""Selection methods, registered by name (`get_method("rose")`); see `base.Method`. One module per
method; `gradient` is the shared base of ROSE, LESS and NICE, `rewards` NICE's metrics and
`ppo` RAISE's learned selector, `heldout` the held-out judge that `auto` (and `review.check`)
use. Method modules load on demand (`get_method`, `method_class`; `REGISTRY` loads them all), so a
model-free run never imports torch through the gradient methods.

May import: `curation.config`, `curation.data`, `curation.engine`, `curation.sandbox`,
`curation.runs.jobs` (the progress reporter) and itself.
"""

import importlib
from typing import Any

from curation.errors import CurationError
from curation.methods.base import METHOD_MODULES, Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, get_method
from curation.methods.base import REGISTRY as _LOADED

__all__ = ["REGISTRY", "Method", "ScoreInputs", "ScoreLabels", "ScoreOutput", "ValPair", "get_method", "method_class"]


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``, importing its module only (not every method's)."""
    if name not in _LOADED and name in METHOD_MODULES:
        importlib.import_module(f"{__name__}.{METHOD_MODULES[name]}")
    if name not in _LOADED:
        known = sorted(set(METHOD_MODULES) | set(_LOADED))
        raise CurationError(f"unknown method {name!r}; available: {', '.join(known)}")
    return _LOADED[name]


def _all_methods() -> dict[str, type[Method]]:
    """Every method, loaded, in the UI's order: a new dict each time, so a reader in another
    thread (Streamlit sessions) never sees the shared registry half rebuilt."""
    for name in METHOD_MODULES:
        method_class(name)
    return {n: _LOADED[n] for n in dict.fromkeys([*METHOD_MODULES, *_LOADED]) if n in _LOADED}


def __getattr__(name: str) -> Any:
    """`REGISTRY` (every method, which loads torch) only when someone asks for it."""
    if name == "REGISTRY":
        return _all_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
