"""The one seed-derivation rule: every RNG stream of a run is seeded from (seed, purpose...).

Mixing through numpy's ``SeedSequence`` makes streams for neighbouring seeds and epochs
statistically independent, and the same parts always give the same 64-bit seed, on any
machine — which is what bitwise resume relies on.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 64-bit seed for the stream named by ``parts`` (ints and strings, in order).

    ``derive_seed(seed, epoch)`` orders batches; ``derive_seed(seed, "attack", epoch)`` seeds
    that epoch's attack random starts; ``derive_seed(seed, "pgd20")`` an evaluation attack.
    """
    words = [int(seed) % 2**64]
    for part in parts:
        words.append(zlib.crc32(part.encode()) if isinstance(part, str) else int(part) % 2**64)
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
