"""Does the model fit the pool? The `tiny` model's 2,048-token BPE was learned from the demo
pool only, so on any other pool it splits ordinary words into byte-level fragments ("formal"
becomes `for` + `mal`) and its gradients describe nothing (issue 20: on Alpaca its ROSE top
120 held 4.2% on-task examples against BM25's 50%). The why-selected text still reads
fluently, so the curator has to be told: this module measures how badly the tiny tokenizer
fragments a pool's words against the demo's, and picks `smollm2` for a foreign pool when it
is fetched (`default_model`).

A pool is *foreign* when its words take at least `FOREIGN_RATIO` times the demo's tokens per
word (measured: demo 1.14, a T0 sample 2.5, the page test's two-line pool 1.8).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from sqlalchemy import select

from curation.errors import CurationError

FOREIGN_RATIO = 1.3
SAMPLE_EXAMPLES = 300  # examples read from the pool
SAMPLE_WORDS = 3000  # words tokenised (seeded sample): ~0.1 s
WORD = re.compile(r"[^\W\d_]+")  # letters only: numbers and punctuation say nothing about the vocabulary
FETCH_HINT = "`python -m curation model fetch smollm2`"


@dataclass
class PoolFit:
    """How the tiny tokenizer splits a pool's words, next to how it splits the demo's."""

    pool: str
    tokens_per_word: float
    split3_share: float  # share of words cut into 3 or more pieces
    demo_tokens_per_word: float
    demo_split3_share: float
    words: int  # words measured in the pool sample

    @property
    def ratio(self) -> float:
        return self.tokens_per_word / max(self.demo_tokens_per_word, 1e-9)

    @property
    def foreign(self) -> bool:
        return self.words > 0 and self.ratio >= FOREIGN_RATIO

    def warning(self) -> str:
        """Why `tiny` will not describe this pool, in numbers, and what to do instead."""
        return (f"The tiny model does not know this pool's language: its 2,048-token vocabulary was learned "
                f"from the demo pool only, and it splits this pool's words into {self.tokens_per_word:.1f} tokens "
                f"on average ({100 * self.split3_share:.0f}% into 3+ pieces) against "
                f"{self.demo_tokens_per_word:.1f} ({100 * self.demo_split3_share:.0f}%) on the demo, so its "
                f"gradients will not describe these examples and the ranking is close to noise. Score with "
                f"smollm2 (fetch it once: {FETCH_HINT}).")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3), "foreign": self.foreign}


def fragmentation(tokenizer, texts: Iterable[str], max_words: int = SAMPLE_WORDS) -> tuple[float, float, int]:
    """(tokens per word, share of words in 3+ tokens, words measured) over a seeded word sample.
    Each word is tokenised with a leading space, as it appears inside a sentence."""
    words = [w for t in texts for w in WORD.findall(t)]
    random.Random(0).shuffle(words)
    words = words[:max_words]
    if not words:
        return 0.0, 0.0, 0
    counts = [len(ids) for ids in tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]]
    return sum(counts) / len(counts), sum(c >= 3 for c in counts) / len(counts), len(counts)


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(home: str):
    """The tiny model's tokenizer: from the built model when there is one, else trained again
    (deterministic, a few seconds: the same BPE the build trains first)."""
    from curation.engine.tiny import BUILD_INFO, DEFAULT_CORPUS, TinyConfig, fingerprint

    if not DEFAULT_CORPUS.is_file():
        raise CurationError(f"tiny model corpus {DEFAULT_CORPUS} not found")
    built = Path(home) / "models" / f"tiny-{fingerprint(DEFAULT_CORPUS, TinyConfig())}"
    if (built / BUILD_INFO).is_file():
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(built)
    return _trained_tokenizer()


@functools.lru_cache(maxsize=1)
def _trained_tokenizer():
    """Once per process: it depends on the corpus only."""
    from curation.engine.tiny import DEFAULT_CORPUS, TinyConfig, read_conversations, train_tokenizer

    return train_tokenizer(read_conversations(DEFAULT_CORPUS), TinyConfig())


@functools.lru_cache(maxsize=4)
def demo_fragmentation(home: str) -> tuple[float, float, int]:
    from curation.engine.tiny import DEFAULT_CORPUS, read_conversations

    convs = read_conversations(DEFAULT_CORPUS)[:SAMPLE_EXAMPLES]
    return fragmentation(tiny_tokenizer(home), (m["content"] for c in convs for m in c))


def pool_texts(store, pool: str, limit: int = SAMPLE_EXAMPLES) -> list[str]:
    """Message contents of the pool's first ``limit`` examples."""
    from curation.data.catalog import get_pool
    from curation.data.store import Example

    with store.session() as s:
        p = get_pool(s, pool)
        rows = s.scalars(select(Example.messages).where(Example.pool_id == p.id).order_by(Example.id)
                         .limit(limit)).all()
    return [m.get("content", "") for msgs in rows for m in msgs]


def tiny_pool_fit(store, pool: str, home: Path) -> PoolFit:
    """How the tiny tokenizer fragments ``pool`` against the demo (see the module doc)."""
    tok = tiny_tokenizer(str(home))
    per_word, split3, n = fragmentation(tok, pool_texts(store, pool))
    demo_per_word, demo_split3, _ = demo_fragmentation(str(home))
    return PoolFit(pool=pool, tokens_per_word=round(per_word, 3), split3_share=round(split3, 3),
                   demo_tokens_per_word=round(demo_per_word, 3), demo_split3_share=round(demo_split3, 3), words=n)


def default_model(store, pool: str, home: Path) -> tuple[str, PoolFit | None]:
    """The model a run on ``pool`` should use when none is named, and the fit that decided it:
    `tiny` on the demo (or a pool whose words it knows), `smollm2` on a foreign pool when it is
    fetched; `tiny` with the fit (its warning) when smollm2 is not on this machine."""
    from curation.engine.models import is_installed

    try:
        fit = tiny_pool_fit(store, pool, home)
    except CurationError:
        return "tiny", None  # no corpus: the tiny model cannot load either, and says so itself
    if fit.foreign and is_installed(home, "smollm2"):
        return "smollm2", fit
    return "tiny", fit


def model_warning(store, pool: str, model: str, home: Path) -> str | None:
    """The warning a run of ``model`` on ``pool`` carries (stored in its meta), or None."""
    if model != "tiny":
        return None
    try:
        fit = tiny_pool_fit(store, pool, home)
    except CurationError:
        return None
    return fit.warning() if fit.foreign else None
