"""Families that look things up or judge text: capitals, antonyms, sentiment, explanations.

Each wrong attempt is the confusion a real writer makes (a country's biggest city for its
capital, a synonym for an antonym, the flipped label, a common misconception).
"""

from __future__ import annotations

import random

from curation.synthetic.base import Attempt, Family, Generator, Problem, fill, solved
from curation.synthetic.lexicon import ANTONYMS, CAPITALS, CONCEPTS, NEGATIVE, POSITIVE, REVIEW_DOMAINS

CAPITAL_OF = ("What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?",
              "Tell me the capital of {c}.", "What city serves as the capital of {c}?")
COUNTRY_OF = ("{k} is the capital of which country?", "Which country has {k} as its capital?",
              "Name the country whose capital is {k}.", "Of which country is {k} the capital?")


def _decoy_capital(rng: random.Random, entry: tuple[str, str, str | None]) -> str:
    """The city most often mistaken for this capital, or another capital when there is none."""
    return entry[2] or rng.choice([cap for _, cap, _ in CAPITALS if cap != entry[1]])


def _country_name(country: str) -> str:
    """'the Philippines' reads 'The Philippines' at the start of a sentence."""
    return country[0].upper() + country[1:]


def _capital(rng: random.Random) -> Problem:
    entry = rng.choice(CAPITALS)
    country, capital, decoy = entry[0], entry[1], _decoy_capital(rng, entry)
    say = "The capital of {} is {}"
    return Problem(fill(rng, CAPITAL_OF, c=country), solved(say.format(country, capital), capital),
                   solved(say.format(country, decoy), decoy))


def _country(rng: random.Random) -> Problem:
    country, capital, _ = rng.choice(CAPITALS)
    other = rng.choice([c for c, _, _ in CAPITALS if c != country])
    say = "{} is the capital of {}"
    return Problem(fill(rng, COUNTRY_OF, k=capital), solved(say.format(capital, country), _country_name(country)),
                   solved(say.format(capital, other), _country_name(other)))


OPPOSITE = ("What is the opposite of '{w}'?", "Give an antonym for the word {w}.",
            "What word means the opposite of {w}?", "Name a word that is opposite in meaning to '{w}'.",
            "What is an antonym of '{w}'?")
PAIR_CHECK = ("Are '{w}' and '{v}' opposites? Answer yes or no.", "Is {v} the opposite of {w}? Answer yes or no.",
              "Do the words {w} and {v} have opposite meanings? Answer yes or no.")


def _antonym(rng: random.Random) -> Problem:
    """The wrong attempt gives the synonym, the usual slip on antonym questions."""
    word, antonym, synonym = rng.choice(ANTONYMS)
    say = "The opposite of {} is {}"
    return Problem(fill(rng, OPPOSITE, w=word), solved(say.format(word, antonym), antonym),
                   solved(say.format(word, synonym), synonym))


def _opposite_check(rng: random.Random) -> Problem:
    """Yes/no on a word pair that is either an antonym pair or a synonym pair."""
    word, antonym, synonym = rng.choice(ANTONYMS)
    is_opposite = rng.random() < 0.5
    other = antonym if is_opposite else synonym
    relation = "opposite" if is_opposite else "similar"
    say = f"{word.capitalize()} and {other} have {relation} meanings"
    answer = "yes" if is_opposite else "no"
    return Problem(fill(rng, PAIR_CHECK, w=word, v=other), solved(say, answer),
                   solved(say, "no" if is_opposite else "yes"))


REVIEW = ("The {t1} was {a1} and the {t2} was {a2}. {closer}", "What a {a1} {product}! The {t2} was {a2} too.",
          "I thought the {t1} was {a1}. {closer}", "{A1} {t1} and {a2} {t2}. {closer}")
ASK = ("Classify the sentiment of this review as positive or negative: \"{r}\"",
       "Is the following review positive or negative? \"{r}\"",
       "Review: \"{r}\" Is this review positive or negative?",
       "Decide whether this customer review is positive or negative. \"{r}\"")


def _sentiment(domain: int) -> Generator:
    """Templated reviews from one domain; the label follows the adjectives, which all agree."""
    _, products, aspects, closers = REVIEW_DOMAINS[domain]

    def generate(rng: random.Random) -> Problem:
        label = rng.choice(("positive", "negative"))
        a1, a2 = rng.sample(POSITIVE if label == "positive" else NEGATIVE, 2)
        t1, t2 = rng.sample(aspects, 2)
        review = fill(rng, REVIEW, t1=t1, t2=t2, a1=a1, a2=a2, A1=a1.capitalize(),
                      product=rng.choice(products), closer=rng.choice(closers[label]))
        cited = [a for a in (a1, a2) if a in review.lower()]
        say = f"The review uses the word{'s' * (len(cited) > 1)} {' and '.join(cited)}, which sounds {{}}"
        flipped = "negative" if label == "positive" else "positive"
        return Problem(fill(rng, ASK, r=review), solved(say.format(label), label),
                       solved(say.format(flipped), flipped))
    return generate


EXPLAIN = ("Explain what {c} is in one sentence.", "What is {c}? Keep it short.", "Briefly describe {c}.",
           "In simple words, what is {c}?", "Give a one sentence explanation of {c}.",
           "Define {c} for a young student.", "Can you tell me what {c} means?",
           "Describe {c} in plain language.", "Tell me briefly what {c} is.")


def _explain(rng: random.Random) -> Problem:
    """Free-text answers: the whole canned explanation is the answer, compared exactly."""
    concept, text, misconception = rng.choice(CONCEPTS)
    return Problem(fill(rng, EXPLAIN, c=concept), Attempt(text, text), Attempt(misconception, misconception))


FAMILIES = (
    Family("capitals", "text", (("capital_of_country", _capital), ("country_of_capital", _country))),
    Family("antonyms", "text", (("antonym", _antonym), ("opposite_check", _opposite_check))),
    Family("sentiment", "text", (("restaurant_review", _sentiment(0)), ("product_review", _sentiment(1)))),
    Family("explain", "text", (("concept", _explain),), weight=0.4),
)
