"""Varied, real-looking caption text for tokenizer and metric tests (deterministic per seed)."""

from __future__ import annotations

import bisect
import itertools
import random

SUBJECTS = ["a man", "A woman", "two dogs", "the cat", "a young boy", "three people", "A little girl", "an old man",
            "the chef", "a skier", "two zebras", "a café owner", "Zoë", "a group of kids", "the baseball player"]
POSSESSORS = ["dog's", "man's", "woman's", "children's", "cats'", "James'", "boys'", "chef’s", "girl's"]
OBJECTS = ["frisbee", "ball", "hat", "bike", "pizza", "umbrella", "skateboard", "kite", "laptop", "t-shirt", "x-ray"]
VERBS = ["is holding", "holds", "is riding", "rides", "is eating", "looks at", "sits next to", "stands near",
         "is playing with", "throws", "carries", "doesn't like", "can't reach", "won't drop", "isn't touching",
         "is gonna throw", "cannot see", "wanna catch", "they're watching", "it's near", "I'm holding", "we've got"]
PLACES = ["on the beach", "in a kitchen", "at the park", "on a busy street", "near St. Mary's church",
          "in the U.S. flag colors", "at 5 p.m.", "at 10:30 a.m.", "next to Mt. Fuji", "on 5th Ave.",
          "in front of a well-known building", "on a 3-way stop", "in the 1990's style", "under a bright-blue sky"]
EXTRAS = ["with 2 friends", "with 1,000 balloons", "holding a 3.5-inch phone", "with a 12-year-old boy",
          "(in the rain)", "[blurry]", "{odd}", "– very happy –", "— smiling", "with $5 in hand", "at 50% speed",
          "with #1 jersey", "and a +1 guest", "with his dog(s)", "and/or a cat", "rock 'n' roll style",
          "in the '80s", "with Dr. Smith", "vs. a robot", "and so on etc.", "with a 10x zoom", "at 9am"]
ENDINGS = ["", ".", " .", "!", "?", "?!", "...", "…", "..", "!!", ". ", "  "]


def caption(rng: random.Random) -> str:
    """One caption mixing possessives, contractions, numbers, quotes, brackets and punctuation."""
    parts = [rng.choice(SUBJECTS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(VERBS))
    if rng.random() < 0.4:
        parts.append(f"a {rng.choice(POSSESSORS)} {rng.choice(OBJECTS)}")
    else:
        parts.append(f"a {rng.choice(OBJECTS)}")
    if rng.random() < 0.6:
        parts.append(rng.choice(PLACES))
    if rng.random() < 0.4:
        parts.append(rng.choice(EXTRAS))
    text = " ".join(parts)
    roll = rng.random()
    if roll < 0.1:
        text = f'"{text}"'
    elif roll < 0.15:
        text = f"“{text}”"
    elif roll < 0.2:
        words = text.split(" ")
        i = rng.randrange(len(words))
        words[i] = f"'{words[i]}'"
        text = " ".join(words)
    elif roll < 0.25:
        text = text.replace(" a ", " a,  ", 1)
    elif roll < 0.3:
        text = text.replace(" ", "   ", 2)
    elif roll < 0.35:
        text = text.upper()
    if rng.random() < 0.1:
        text = text.replace(" ", ", ", 1) + "; really: yes"
    return text + rng.choice(ENDINGS)


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [caption(rng) for _ in range(n)]


# A caption set with the statistics of a real one (Flickr8k: 8,092 images x 5 captions, about 11
# words each, about 8,900 distinct words, word frequencies close to Zipf's law): pseudo-words from
# syllables stand in for the open-class words, the closed class is English.
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ay", "ee", "oo")]
DETERMINERS = ["a", "the", "two", "three", "an", "some", "a", "a", "the"]
PREPOSITIONS = ["in", "on", "at", "near", "with", "under", "behind", "next to", "in front of", "on top of"]
TEMPLATES = ["{d1} {a1} {s} {v} {d2} {o} {p} {d3} {l}", "{d1} {s} {v} {d2} {a2} {o}",
             "{d1} {a1} {s} is {v} {p} {d3} {l}", "{d1} {s} and {d2} {o} {p} {d3} {a2} {l}",
             "{d1} {s} {v} {p} {d3} {l} while {d2} {o} watches", "{d1} {a1} {s} {v}"]


def _lexicon(rng: random.Random, size: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3))))] = None
    return list(words)


class _Zipf:
    """Draws from a word list with probability proportional to 1 / rank."""

    def __init__(self, words: list[str], rng: random.Random):
        self.words, self.rng = words, rng
        self.cumulative = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(words))))

    def __call__(self) -> str:
        x = self.rng.random() * self.cumulative[-1]
        return self.words[bisect.bisect_left(self.cumulative, x)]


def caption_set(images: int, refs: int = 5, seed: int = 0, vocabulary: int = 9000) -> tuple[list[str], list[list[str]]]:
    """(one hypothesis per image, ``refs`` references per image): the references of an image describe
    one scene in different words and templates; the hypothesis is a noisier description (a fifth of
    the time one of the references, as a good model's caption sometimes is)."""
    rng = random.Random(seed)
    lexicon = _lexicon(rng, vocabulary)
    nouns, verbs, adjectives = (_Zipf(lexicon[i::3], rng) for i in range(3))

    def describe(scene: dict[str, str], noise: float) -> str:
        words = {k: (v() if rng.random() < noise else scene[k]) for k, v in
                 (("s", nouns), ("o", nouns), ("l", nouns), ("v", verbs), ("a1", adjectives), ("a2", adjectives))}
        words.update(d1=rng.choice(DETERMINERS), d2=rng.choice(DETERMINERS), d3=rng.choice(DETERMINERS),
                     p=rng.choice(PREPOSITIONS))
        text = rng.choice(TEMPLATES).format(**words)
        if rng.random() < 0.5:
            text = f"{text} {rng.choice(PREPOSITIONS)} {rng.choice(DETERMINERS)} {adjectives()} {nouns()}"
        if rng.random() < 0.15:
            text = f"{text} {caption(rng)}"  # possessives, contractions, numbers, quotes, brackets
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        return text + rng.choice(("", " .", ".", "", ""))

    hypotheses, references = [], []
    for _ in range(images):
        scene = {"s": nouns(), "o": nouns(), "l": nouns(), "v": verbs(), "a1": adjectives(), "a2": adjectives()}
        references.append([describe(scene, 0.25) for _ in range(refs)])
        hypotheses.append(rng.choice(references[-1]) if rng.random() < 0.2 else describe(scene, 0.5))
    return hypotheses, references
