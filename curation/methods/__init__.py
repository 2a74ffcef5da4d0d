"""Selection methods, registered by name (`get_method("rose")`); see `base.Method`."""

from curation.methods import less, rose  # noqa: F401  (registration side effects)
from curation.methods import nice  # noqa: F401
from curation.methods import bm25  # noqa: F401
from curation.methods import dsir  # noqa: F401
from curation.methods import random_  # noqa: F401
from curation.methods import raise_  # noqa: F401
from curation.methods import repsim  # noqa: F401
from curation.methods.base import REGISTRY, Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, get_method

__all__ = ["REGISTRY", "Method", "ScoreInputs", "ScoreLabels", "ScoreOutput", "ValPair", "get_method"]
