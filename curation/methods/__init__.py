"""Selection methods, registered by name (`get_method("rose")`); see `base.Method`. One module per
method; `gradient` is the shared base of ROSE, LESS and NICE, `rewards` NICE's metrics and
`ppo` RAISE's learned selector, `heldout` the held-out judge that `auto` (and `review.check`)
use.

May import: `curation.config`, `curation.data`, `curation.engine`, `curation.sandbox`,
`curation.runs.jobs` (the progress reporter) and itself.
"""

from curation.methods import less, rose  # noqa: F401  (registration side effects; order is the UI's)
from curation.methods import nice  # noqa: F401  # isort: skip
from curation.methods import bm25  # noqa: F401  # isort: skip
from curation.methods import dsir  # noqa: F401  # isort: skip
from curation.methods import random_  # noqa: F401  # isort: skip
from curation.methods import raise_  # noqa: F401  # isort: skip
from curation.methods import repsim  # noqa: F401  # isort: skip
from curation.methods import contrast  # noqa: F401  # isort: skip
from curation.methods import fusion  # noqa: F401  # isort: skip
from curation.methods import auto  # noqa: F401  # isort: skip
from curation.methods.base import REGISTRY, Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, get_method

__all__ = ["REGISTRY", "Method", "ScoreInputs", "ScoreLabels", "ScoreOutput", "ValPair", "get_method"]
