"""Fixed random preference pairs in the preprocessed layout, for the multi-rank DPO tests.

A store is the list of sequences an IndexedDataset of `chatbaker preprocess
--format preference` holds: per pair chosen ids, chosen reply flags,
rejected ids, rejected reply flags (the two sides share the prompt).
"""

from __future__ import annotations

import numpy as np

from tests.support.tiny_model import VOCAB

PAIRS = 8
ROW = 40  # one training sequence: both sides of the longest pair fit


def random_store(pairs: int = PAIRS, seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    store: list[np.ndarray] = []
    for _ in range(pairs):
        prompt = rng.integers(3, VOCAB, rng.integers(4, 9))
        for _side in range(2):
            reply = rng.integers(3, VOCAB, rng.integers(3, 10))
            ids = np.concatenate([prompt, reply])
            flags = np.zeros(len(ids), dtype=np.uint8)
            flags[len(prompt) :] = 1
            store += [ids, flags]
    return store
