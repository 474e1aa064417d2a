"""Varied, real-looking caption text for tokenizer and metric tests (deterministic per seed)."""

from __future__ import annotations

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
