"""Scripted embeddings: a deterministic vector for any text, close for texts that share words.

Each lower-cased word (a run of letters or digits) adds +1 or -1 to one of `DIMENSIONS`
coordinates, both chosen by a hash of the word (sha256: the same in every process, unlike
`hash()`); the vector is then scaled to length 1 (all zeros for a text without words).
The cosine of two texts' vectors is about the share of words they have in common, so a
test or a benchmark can build rows whose true matches are their nearest neighbours.
"""

from __future__ import annotations

import hashlib
import math
import re

DIMENSIONS = 256
_WORDS = re.compile(r"[^\W_]+")


def hashed_vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The scripted embedding of `text` (a hashed bag of words of length 1)."""
    vector = [0.0] * dimensions
    for word in _WORDS.findall(text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        slot = int.from_bytes(digest[:4], "little") % dimensions
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def count_words(text: str) -> int:
    """The scripted engines' token count of a text to embed."""
    return len(_WORDS.findall(text))
