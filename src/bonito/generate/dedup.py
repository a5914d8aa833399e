"""Duplicate tasks within a run: exact (the same normalised input and output) and near (two tasks
on the same passage whose MinHash estimate of the Jaccard similarity of their word 3-gram
shingles, the passage left out, is at or above a threshold).

A bonito task usually carries its whole passage in its input, so two different questions about one
passage share most of their words: near-duplicates are therefore looked for only among tasks on
the same passage (it is folded into the index keys), and only in the words outside it.

Text is normalised by Unicode NFKC, casefolding and collapsing whitespace. A task's shingles are
the word 3-grams of its normalised `input + " " + output` with the passage taken out; a task of
fewer than three words is one shingle. Everything is hashed with fixed functions (blake2b, a
polynomial hash of a shingle's UTF-8 bytes mod 2**64, the splitmix64 finaliser), so answers are
the same in every process. Signatures
are computed for a batch at once with numpy: permutation k maps a shingle hash h to a_k * h + b_k
mod 2**64 (a_k, b_k from blake2b of the seed and k) and keeps the top 32 bits of the least.

The near index splits a signature into `bands` bands of `rows` values; a task sharing a band with
an indexed task is a candidate, and a candidate is a near-duplicate when the two signatures agree
in at least `threshold * num_perm` places (the estimated Jaccard similarity). An exact duplicate
has the same signature as its original, so it is found there too; only near=False keeps a table
of (input, output) digests instead."""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Sequence

import numpy as np

from bonito.errors import BonitoError

SHINGLE = 3
"""Words per shingle."""
RECALL = 0.99
"""Banding takes as many rows per band as it can while a pair at exactly the threshold still
becomes a candidate with at least this probability (a pair above it more often). Fewer rows would
bring more candidates to check."""
STEP = 4096
"""Tasks taken at once from a long call."""
BLOCK_CHARS = 1 << 16
"""Characters of text hashed at once, which bounds the memory hashing takes."""
BLOCK_SHINGLES = 4096
"""Shingles permuted at once, so the (num_perm x shingles) block stays in the CPU cache."""
BASE = 0x9E3779B97F4A7C15
"""The odd base of the polynomial hash of a shingle's bytes, mod 2**64."""

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_FOLD = np.uint64(0xC2B2AE3D27D4EB4F)


def normalise(text: str) -> str:
    """NFKC, casefolded, whitespace runs made one space, outer whitespace removed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class Deduplicator:
    """Finds, for each task in the order accepted, an earlier non-duplicate it duplicates.

    threshold: estimated Jaccard similarity of word 3-gram shingles at or above which two tasks
    are near-duplicates; num_perm: MinHash permutations; near=False: exact duplicates only; seed:
    picks the permutations. The same items in the same order give the same answers in any process
    and however they are split into calls, so a resumed run rebuilds the index by feeding its
    earlier non-duplicates again, in order."""

    def __init__(
        self, threshold: float = 0.8, num_perm: int = 64, near: bool = True, seed: int = 0
    ):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise BonitoError(
                f"threshold must be a number in (0, 1], such as 0.8; got {threshold!r}."
            )
        if not 0 < threshold <= 1:
            raise BonitoError(
                "threshold must be in (0, 1] (an estimated Jaccard similarity, such as 0.8); "
                f"got {threshold}."
            )
        if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 16:
            raise BonitoError(
                f"num_perm must be an integer of at least 16, such as 64; got {num_perm!r}."
            )
        self.threshold, self.num_perm, self.near = threshold, num_perm, near
        self.bands, self.rows = _banding(threshold, num_perm)
        self._agree = next(m for m in range(num_perm + 1) if m / num_perm >= threshold)
        constants = [_blake(f"bonito-dedup:{seed}:{k}", 16) for k in range(num_perm)]
        self._a = np.array([int.from_bytes(c[:8], "little") | 1 for c in constants], np.uint64)
        self._b = np.array([int.from_bytes(c[8:], "little") for c in constants], np.uint64)
        self._keys: list[str] = []
        self._exact: dict[bytes, int] = {}
        self._buckets: dict[int, int | list[int]] = {}
        self._signatures = np.empty((0, num_perm), np.uint32)

    def add_many(self, items: Sequence[tuple[str, str, str, str]]) -> list[str | None]:
        """For each (key, input, output, passage), the key of an earlier task it duplicates (the
        first one indexed, if several), else None; the non-duplicates join the index. `passage`
        is the context the task was made from ("" for none)."""
        answers: list[str | None] = []
        for start in range(0, len(items), STEP):
            answers += self._add_step(items[start : start + STEP])
        return answers

    def _add_step(self, items: Sequence[tuple[str, str, str, str]]) -> list[str | None]:
        keys = [item[0] for item in items]
        if not self.near:
            pairs = [(normalise(i), normalise(o)) for _, i, o, _ in items]
            digests = [_blake(f"{len(i)}:{i}{o}", 16) for i, o in pairs]
            return list(map(self._add_exact, keys, digests))
        passages = [p.strip() for *_, p in items]
        texts = [
            normalise(_outside(f"{i} {o}", passage))
            for (_, i, o, _), passage in zip(items, passages, strict=True)
        ]
        groups = np.array(
            [int.from_bytes(_blake(passage, 8), "little") for passage in passages], np.uint64
        )
        signatures = self._signatures_of(texts)
        bands = self._band_keys(signatures, groups)
        suspects = self._suspects(bands).tolist()
        self._reserve(len(self._keys) + len(items))
        answers: list[str | None] = []
        clear: dict[int, int] = {}
        for i, key in enumerate(keys):
            if suspects[i]:
                answers.append(self._add_near(key, signatures[i], bands[i].tolist()))
            else:
                clear[i] = len(self._keys)
                self._keys.append(key)
                answers.append(None)
        self._index_clear(clear, signatures, bands)
        return answers

    def _add_exact(self, key: str, digest: bytes) -> str | None:
        """The key of the indexed task with this digest; else index this one, None."""
        found = self._exact.setdefault(digest, len(self._keys))
        if found < len(self._keys):
            return self._keys[found]
        self._keys.append(key)
        return None

    def _suspects(self, bands: np.ndarray) -> np.ndarray:
        """Which tasks share a band with an indexed task or another task of the batch: only these
        can be, or have, near-duplicates."""
        flat = bands.ravel()
        _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        held = self._buckets.keys() & flat.tolist()
        if held:
            shared |= np.isin(flat, np.fromiter(held, np.uint64, len(held)))
        return np.asarray(shared.reshape(bands.shape).any(axis=1))

    def _signatures_of(self, texts: Sequence[str]) -> np.ndarray:
        """MinHash signatures (len(texts) x num_perm, uint32) of normalised texts, hashed about
        BLOCK_CHARS characters at a time."""
        padded = [_pad(t) for t in texts]
        out = np.empty((len(texts), self.num_perm), np.uint32)
        for lo, hi in _blocks(np.cumsum([len(t) + 1 for t in padded]), BLOCK_CHARS):
            out[lo:hi] = self._minhash(*_shingle_hashes(padded[lo:hi]))
        return out

    def _minhash(self, shingles: np.ndarray, per_text: np.ndarray) -> np.ndarray:
        """For each text and permutation k, the top 32 bits of the least a_k * h + b_k over the
        text's shingle hashes h, permuting about BLOCK_SHINGLES shingles at a time."""
        out = np.empty((len(per_text), self.num_perm), np.uint32)
        ends = np.cumsum(per_text)
        starts = ends - per_text
        for lo, hi in _blocks(ends, BLOCK_SHINGLES):
            block = self._a[:, None] * shingles[None, starts[lo] : ends[hi - 1]]
            block += self._b[:, None]
            least = np.minimum.reduceat(block, starts[lo:hi] - starts[lo], axis=1)
            out[lo:hi] = (least >> np.uint64(32)).T
        return out

    def _band_keys(self, signatures: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """(texts x bands) 64-bit keys, one per band of `rows` signature values; each band folds
        in its own number and the text's group (its passage), so equal values in different
        bands, or of tasks on different passages, give different keys."""
        shape = (len(signatures), self.bands, self.rows)
        values = signatures[:, : self.bands * self.rows].reshape(shape).astype(np.uint64)
        keys = _mix(np.arange(1, self.bands + 1, dtype=np.uint64)[None, :] ^ groups[:, None])
        for row in range(self.rows):
            keys = _mix(keys * _FOLD ^ values[:, :, row])
        return keys

    def _add_near(self, key: str, signature: np.ndarray, bands: list[int]) -> str | None:
        """The key of the first indexed task this one near-duplicates; else index it, None."""
        found = self._similar(signature, bands)
        if found is not None:
            return self._keys[found]
        position = len(self._keys)
        self._keys.append(key)
        self._signatures[position] = signature
        for band in bands:
            held = self._buckets.setdefault(band, position)
            if isinstance(held, list):
                held.append(position)
            elif held != position:
                self._buckets[band] = [held, position]
        return None

    def _similar(self, signature: np.ndarray, bands: list[int]) -> int | None:
        """The first indexed task sharing a band whose signature agrees enough, if any."""
        candidates: list[int] = []
        for held in map(self._buckets.get, bands):
            if held is not None:
                candidates += [held] if isinstance(held, int) else held
        if not candidates:
            return None
        candidates = sorted(set(candidates))
        agree = np.count_nonzero(self._signatures[candidates] == signature, axis=1)
        close = np.flatnonzero(agree >= self._agree)
        return candidates[close[0]] if len(close) else None

    def _index_clear(
        self, clear: dict[int, int], signatures: np.ndarray, bands: np.ndarray
    ) -> None:
        """Index in bulk the tasks of the batch that were not suspects, whose bands are all new;
        `clear` maps each one's place in the batch to its position in the index."""
        rows, positions = list(clear), list(clear.values())
        self._signatures[positions] = signatures[rows]
        held = [position for position in positions for _ in range(self.bands)]
        self._buckets.update(zip(bands[rows].ravel().tolist(), held, strict=True))

    def _reserve(self, size: int) -> None:
        """Room for `size` signatures."""
        if size > len(self._signatures):
            grown = np.empty((max(size, 2 * len(self._signatures)), self.num_perm), np.uint32)
            grown[: len(self._keys)] = self._signatures[: len(self._keys)]
            self._signatures = grown


def _outside(text: str, passage: str) -> str:
    """The text with every copy of the passage taken out."""
    return text.replace(passage, " ") if passage else text


def _blake(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def _banding(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most rows per band that still meet RECALL at the threshold."""

    def recall(rows: int) -> float:
        return 1 - (1 - threshold**rows) ** (num_perm // rows)

    rows = max((r for r in range(1, num_perm + 1) if recall(r) >= RECALL), default=1)
    return num_perm // rows, rows


def _pad(text: str) -> str:
    """A normalised text, with NUL words added to make up one shingle if it is shorter."""
    if text.count(" ") >= SHINGLE - 1:
        return text
    words = text.split()
    return " ".join(words + ["\0"] * (SHINGLE - len(words)))


def _shingle_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hashes of the word 3-grams of normalised texts of three words or more (so none
    is empty, none starts or ends with a space), text after text, and how many each text has. A
    shingle's hash is the polynomial hash of its UTF-8 bytes (its words and the single spaces
    between them), mixed."""
    data = np.frombuffer("\n".join(texts).encode("utf-8", "surrogatepass"), np.uint8)
    gap = (data == 32) | (data == 10)
    turns = np.flatnonzero(gap[1:] != gap[:-1]) + 1  # where words end and start, in turn
    starts, ends = np.r_[0, turns[1::2]], np.r_[turns[::2], len(data)]
    text_of = np.asarray(np.searchsorted(np.flatnonzero(data == 10), starts))
    power, inverse = _powers(1 << len(data).bit_length())
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(data * power[: len(data)], out=prefix[1:])
    first, last = starts[: 1 - SHINGLE], ends[SHINGLE - 1 :]
    whole = text_of[: 1 - SHINGLE] == text_of[SHINGLE - 1 :]
    hashes = (prefix[last] - prefix[first]) * inverse[first]
    return _mix(hashes[whole]), np.bincount(text_of, minlength=len(texts)) - (SHINGLE - 1)


@functools.lru_cache(maxsize=2)
def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**j and BASE**-j mod 2**64, for j < size."""
    return _geometric(BASE, size), _geometric(pow(BASE, -1, 1 << 64), size)


def _geometric(ratio: int, size: int) -> np.ndarray:
    steps = np.full(size, ratio, np.uint64)
    steps[0] = 1
    return np.cumprod(steps)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: spreads every input bit over the whole word."""
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    return x ^ (x >> np.uint64(31))


def _blocks(ends: np.ndarray, size: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of texts, in order, of about `size` units each (a text is never split);
    `ends` are the cumulative counts of units."""
    cuts = np.unique(np.searchsorted(ends, np.arange(size, ends[-1], size), "right"))
    bounds = [0, *cuts[(cuts > 0) & (cuts < len(ends))].tolist(), len(ends)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
