"""Synthetic instruction data with verifiable answers: the project's own demo pool and prefs.

Ten task families (arithmetic word problems, unit conversion, sorting, word edits, counting,
dates, capitals, antonyms, sentiment, short explanations), each with several phrasings and a
short "working, so the answer is X." response that a tiny LM can learn on a CPU. Every example
can be answered wrongly in the same style, which gives planted noise and rejected responses.
Pure stdlib, seeded throughout: the same arguments always give the same records.
"""

from curation.synthetic.base import extract_answer
from curation.synthetic.build import (
                                      FAMILIES,
                                      TARGET_FAMILY,
                                      check_answer,
                                      make_heldout,
                                      make_pool,
                                      make_prefs,
                                      split_of,
                                      subtasks,
                                      to_jsonl,
)

__all__ = ["FAMILIES", "TARGET_FAMILY", "check_answer", "extract_answer", "make_heldout", "make_pool",
           "make_prefs", "split_of", "subtasks", "to_jsonl"]
