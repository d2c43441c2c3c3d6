"""Shared helpers of the sample data: seeded random streams, pseudo-text and timestamps.

Text is made of a seeded vocabulary (English function words, then made-up words) with Zipf word
frequencies, so it compresses like real prose. Every generator is derived from the seed and a
stream key, so changing one part of the sample does not shift the others.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

DAY = 86_400
# The sample's "now" when generate() runs (2024-01-01T00:00:00Z); evolve step s happens on day s.
BASE_EPOCH = 1_704_067_200

# Independent random streams, so changing one part does not shift the others.
S_VOCAB, S_CENTERS, S_DB, S_VECTORS, S_EVOLVE_DB, S_EVOLVE_VECTORS = range(1, 7)

_FUNCTION_WORDS = (
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "with", "on", "be",
    "by", "this", "are", "or", "from", "at", "which", "an", "not", "can", "we", "when", "each",
    "if", "has", "will", "all", "their", "more", "than", "into", "only", "other", "after", "per",
)  # fmt: skip
_ONSETS = (
    "", "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
    "z", "br", "ch", "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th",
    "tr",
)  # fmt: skip
_NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ee", "io", "ou", "y")
_CODAS = ("", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "rk", "st", "ng", "ck", "x")
_VOCAB_SIZE = 6_000
_ZIPF_EXPONENT = 1.05

# Service accounts among the audit log's actors (Text.actors: these, then made-up people).
SERVICE_ACTORS = ("svc-ingest", "svc-reindex", "scheduler", "api-gateway")


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator for one purpose, derived from the seed (any int, negatives included)."""
    return np.random.default_rng([seed % 2**64, *keys])


def _pseudo_word(rnd: random.Random) -> str:
    """One pronounceable made-up word of 1-4 syllables."""
    syllables = rnd.choices((1, 2, 3, 4), weights=(3, 5, 4, 1))[0]
    return "".join(
        rnd.choice(_ONSETS) + rnd.choice(_NUCLEI) + rnd.choice(_CODAS) for _ in range(syllables)
    )


def _vocabulary(seed: int) -> list[str]:
    """Words ordered by frequency rank: English function words, then seeded made-up words.

    Shorter made-up words get the higher ranks, as in natural language.
    """
    rnd = random.Random(f"casnap-sample-vocab-{seed}")
    words: dict[str, None] = dict.fromkeys(_FUNCTION_WORDS)
    content: dict[str, None] = {}
    while len(content) < _VOCAB_SIZE:
        word = _pseudo_word(rnd)
        if len(word) > 1 and word not in words:
            content[word] = None
    ranked = sorted(content, key=lambda w: len(w) + rnd.random() * 6)
    return [*words, *ranked]


class Text:
    """Pseudo-text from a seeded vocabulary with Zipf word frequencies and sentence punctuation."""

    def __init__(self, seed: int) -> None:
        vocab = _vocabulary(seed)
        self.vocab = vocab
        n = len(vocab)
        weights = 1.0 / np.arange(1, n + 1) ** _ZIPF_EXPONENT
        self._cdf = np.cumsum(weights) / weights.sum()
        self._cdf[-1] = 1.0
        # Word forms: plain, end of sentence, sentence start, one-word sentence, before a comma.
        caps = [w.capitalize() for w in vocab]
        self._forms = np.array(
            [*vocab, *(w + "." for w in vocab), *caps, *(w + "." for w in caps),
             *(w + "," for w in vocab)],
            dtype=object,
        )  # fmt: skip
        self._n = n
        self.actors = [*SERVICE_ACTORS, *self._people(seed)]

    def _people(self, seed: int) -> list[str]:
        """User names like `brai.stolm` for the audit log."""
        rnd = random.Random(f"casnap-sample-people-{seed}")
        return [f"{_pseudo_word(rnd)}.{_pseudo_word(rnd)}" for _ in range(20)]

    def ranks(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n word indices drawn with Zipf frequencies."""
        return np.searchsorted(self._cdf, rng.random(n), side="right")

    def words(self, rng: np.random.Generator, n: int) -> list[str]:
        """n plain lower-case words."""
        return [self.vocab[i] for i in self.ranks(rng, n)]

    def _blob(self, rng: np.random.Generator, n_words: int) -> str:
        """Running text of n_words words: sentences of ~15 words, some commas."""
        ranks = self.ranks(rng, n_words)
        ends = rng.random(n_words) < 1 / 15
        starts = np.roll(ends, 1)
        starts[0] = True
        commas = (rng.random(n_words) < 0.06) & ~ends
        form = np.where(commas, 4, 0)
        form = np.where(ends, 1, form)
        form = np.where(starts, np.where(ends, 3, 2), form)
        return " ".join(self._forms[ranks + form * self._n].tolist())

    def pieces(self, rng: np.random.Generator, lengths: Sequence[int]) -> list[str]:
        """One text per requested length, each whole sentences and about that many characters."""
        total = int(sum(lengths))
        blob = self._blob(rng, total // 6 + 32 * len(lengths) + 64)
        out: list[str] = []
        start = 0
        for length in lengths:
            end = blob.find(". ", start + max(int(length) - 50, 1))
            while end < 0:
                blob += " " + self._blob(rng, 2 * int(length) // 6 + 64)
                end = blob.find(". ", start + max(int(length) - 50, 1))
            out.append(blob[start : end + 1])
            start = end + 2
        return out

    def title(self, rng: np.random.Generator) -> str:
        """A 3-8 word title in title case, made of content words only."""
        ranks = self.ranks(rng, int(rng.integers(3, 9))) + len(_FUNCTION_WORDS)
        return " ".join(self.vocab[min(r, self._n - 1)].capitalize() for r in ranks)


def iso(ts: np.ndarray | Sequence[int]) -> list[str]:
    """Unix seconds -> ISO-8601 UTC strings like 2024-01-01T00:00:00Z."""
    arr = np.asarray(ts, dtype="int64").astype("datetime64[s]")
    return [s + "Z" for s in np.datetime_as_string(arr, unit="s").tolist()]


def times(rng: np.random.Generator, n: int, t0: int, t1: int) -> list[str]:
    """n sorted ISO timestamps uniformly spread over [t0, t1)."""
    return iso(np.sort(rng.integers(t0, t1, size=n)))
