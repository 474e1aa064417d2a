"""N-grams of a whole evaluation as integer arrays, shared by the caption metrics.

Every 1..4-gram of every caption (hypotheses and references together, so ids are shared) gets an
integer id. Each order keeps one entry per distinct (sentence, n-gram) with its count, sorted by
n-gram, then image, with each image's hypothesis before its references: the entries of one
(n-gram, image) pair are one contiguous *group*. BLEU's clipping (the most a single reference holds),
CIDEr-D's document frequencies and its hypothesis-reference products are then reductions over groups.

Each order is one sort of 64-bit keys ``(n-gram key, sentence slot)``. The n-gram keys come from
token ids: ``t1`` for unigrams, ``t1 t2`` for bigrams, ``t1 t2 t3`` for trigrams and (bigram,
bigram) for 4-grams, so only the bigram order needs the sort's permutation (to number the bigrams
at every position), and only for 4-grams; the others sort values, which is twice as fast (profiled:
the sorts were most of the time). Unigrams and trigrams thus need no other order, bigrams and
4-grams only the bigram numbering: the split that scoring in two processes uses. Where a key would
not fit in 63 bits, an order's keys come from the previous order's numbered n-grams.

Sentences: the N hypotheses first (sentence i belongs to image i), then every image's references in
image order.

Shape legend: N images, R references in all, S = N + R sentences, T tokens, P_k positions where a
k-gram starts, E_k entries, Q_k groups, G_k distinct k-grams.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

import numpy as np

from mmfuse.metrics.ptb import TokenIds

Tokens = Sequence[str]
MAX_N = 4
ORDERS = tuple(range(1, MAX_N + 1))
KEY_LIMIT = 2**62  # a composite sort key (n-gram key, slot) must stay below this


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class Order:
    """The distinct (sentence, k-gram) entries of one order, grouped by (k-gram, image); a hypothesis's
    entry, when its group has one, is the group's first."""

    gram: np.ndarray  # (E,) k-gram id, 0 .. size-1
    image: np.ndarray  # (E,)
    sent: np.ndarray  # (E,) sentence index
    is_hyp: np.ndarray  # (E,) bool: the entry is a hypothesis's
    count: np.ndarray  # (E,) occurrences in the sentence
    starts: np.ndarray  # (Q,) first entry of each group
    size: int  # G

    @cached_property
    def sizes(self) -> np.ndarray:  # (Q,) entries per group
        return _run_lengths(self.starts, len(self.gram))

    @cached_property
    def hyp_groups(self) -> np.ndarray:  # (H,) the groups that hold a hypothesis entry
        return np.flatnonzero(self.is_hyp[self.starts])

    @cached_property
    def hyp_entries(self) -> np.ndarray:  # (H,) those entries, in the same order
        return self.starts[self.hyp_groups]

    @cached_property
    def beside_hyp(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference entries that share their group with a hypothesis entry (M,), in entry order,
        and for each, that hypothesis entry (M,), as an index into :attr:`hyp_entries`. BLEU's
        clipping and CIDEr-D's products need only these: on 8,092 images M is 16k-130k of an order's
        430k-530k entries."""
        beside = self.sizes[self.hyp_groups] - 1  # (H,) reference entries in each hypothesis's group
        which = np.repeat(np.arange(len(beside)), beside)  # (M,)
        before = np.cumsum(beside) - beside  # (H,) entries of the groups before
        entries = np.arange(len(which)) + np.repeat(self.hyp_entries + 1 - before, beside)
        return entries, which


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class NgramTable:
    lengths: np.ndarray  # (S,) tokens per sentence
    ref_image: np.ndarray  # (R,) the image of each reference
    orders: dict[int, Order]  # orders[k] holds the k-grams (the orders asked for)

    @property
    def images(self) -> int:
        return len(self.lengths) - len(self.ref_image)


def build_table(tokens: TokenIds, refs_per_image: np.ndarray, orders: Sequence[int] = ORDERS) -> NgramTable:
    """The n-gram table of ``tokens``: N hypotheses, then the references, ``refs_per_image[i]`` of them
    for image i, in image order; only the ``orders`` asked for."""
    ref_image = np.repeat(np.arange(len(refs_per_image), dtype=np.int64), refs_per_image)  # (R,)
    return NgramTable(tokens.lengths, ref_image, dict(ngram_orders(tokens, refs_per_image, orders)))


def ngram_orders(tokens: TokenIds, refs_per_image: np.ndarray, orders: Sequence[int] = ORDERS) -> Iterator[tuple[int, Order]]:
    """Each order asked for, (k, its table), as it is built, in increasing k. Only what those orders
    need is built: 4-grams number the bigrams, whether or not the bigram order is asked for; unigrams
    and trigrams need no other order. A caller that drops each order before taking the next lets the
    next reuse its memory."""
    layout = _Layout.of(refs_per_image)
    lengths = tokens.lengths
    sent_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (T,)
    remaining = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(sent_of))  # (T,) tokens left, this one too
    slot_at = layout.slot_of_sent[sent_of]  # (T,)
    del sent_of
    grams = _Grams(tokens.ids, remaining, max(len(tokens.words), 1), layout.slots, {})
    wanted = sorted(orders)
    number_bigrams = 4 in wanted or (3 in wanted and not grams.direct_trigrams)  # later keys use bigram ids
    for k in wanted:
        keys, bound = grams.keys(k)  # (T-k+1,) at every position, whether a k-gram starts there or not
        if bound * layout.slots >= KEY_LIMIT or (k == 2 and number_bigrams):
            pos = np.flatnonzero(grams.starts(k))  # (P,)
            order, grams.ids[k] = _numbered_order(keys[pos], pos, slot_at[pos], layout, len(grams.flat))
        else:
            composite = keys * layout.slots
            composite += slot_at[:len(keys)]
            order = _sorted_order(grams.at_starts(composite, k), layout)
            del composite
        del keys
        yield k, order
        del order


@dataclass(eq=False)  # arrays: no field-wise ==
class _Grams:
    """The key of the k-gram at each position, from token ids where it fits in 63 bits with the
    sentence slot: ``t1`` for unigrams, ``t1 t2`` for bigrams, ``t1 t2 t3`` for trigrams, and for
    4-grams a pair of bigram ids; otherwise from the dense ids of the (k-1)-grams, numbered when first
    needed. Keys are computed at every position from shifted views of the token ids and the positions
    where a k-gram starts picked after: on 576k tokens 0.5-1 ms less per order than gathering the
    tokens at those positions."""

    flat: np.ndarray  # (T,) token ids
    remaining: np.ndarray  # (T,) tokens left in the sentence from each position, that one too
    vocab: int
    slots: int
    ids: dict[int, np.ndarray]  # j -> (T,) dense id of the j-gram at each position where one starts

    @property
    def direct_trigrams(self) -> bool:
        return self.vocab**3 * self.slots < KEY_LIMIT

    def starts(self, k: int) -> np.ndarray:
        """Whether a k-gram starts at each position that could start one (T-k+1,) bool."""
        return self.remaining[:self._positions(k)] >= k

    def at_starts(self, values: np.ndarray, k: int) -> np.ndarray:
        """``values`` (T-k+1,) at the positions where a k-gram starts (P,): all of them for unigrams,
        which are then not copied through the mask (576k tokens: 4.6 MB, 1-2 ms)."""
        return values if k == 1 else values[self.starts(k)]

    def _positions(self, k: int) -> int:
        return max(len(self.flat) - k + 1, 0)

    def keys(self, k: int) -> tuple[np.ndarray, int]:
        """The k-gram key at each position that could start one (T-k+1,), whether one starts there or
        not, and a bound on the keys."""
        flat, vocab, m = self.flat, self.vocab, self._positions(k)
        if k == 1:
            return flat, vocab
        if k == 2:
            keys = flat[:m] * vocab
            keys += flat[1:m + 1]
            return keys, vocab * vocab
        if k == 3 and self.direct_trigrams:
            keys = flat[:m] * vocab
            keys += flat[1:m + 1]
            keys *= vocab
            keys += flat[2:m + 2]
            return keys, vocab**3
        if k == 4:
            bigram_at = self.numbered(2)
            bigrams = int(bigram_at.max(initial=0)) + 1
            if bigrams * bigrams * self.slots < KEY_LIMIT:
                keys = bigram_at[:m] * bigrams
                keys += bigram_at[2:m + 2]
                return keys, bigrams * bigrams
        below = self.numbered(k - 1)  # the generic key: ((k-1)-gram, last token)
        keys = below[:m] * vocab
        keys += flat[k - 1:m + k - 1]
        return keys, (int(below.max(initial=0)) + 1) * vocab

    def numbered(self, j: int) -> np.ndarray:
        """The dense id of the j-gram at every position (T,) (0 where none starts)."""
        if j == 1:
            return self.flat
        if j not in self.ids:
            pos = np.flatnonzero(self.starts(j))
            self.ids[j] = _numbers(self.keys(j)[0][pos], pos, len(self.flat))
        return self.ids[j]


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class _Layout:
    """Sentence slots: image i's hypothesis is slot i * per, its j-th reference i * per + j + 1."""

    per: int
    slot_of_sent: np.ndarray  # (S,)
    sent_of_slot: np.ndarray  # (N * per,) -1 where no sentence
    image_of_slot: np.ndarray  # (N * per,)
    hyp_slot: np.ndarray  # (N * per,) bool: a hypothesis's slot (a lookup: int64 modulo is slower)

    @classmethod
    def of(cls, refs_per_image: np.ndarray) -> "_Layout":
        n = len(refs_per_image)
        per = int(refs_per_image.max(initial=0)) + 1
        ref_image = np.repeat(np.arange(n, dtype=np.int64), refs_per_image)
        ref_first = np.cumsum(refs_per_image) - refs_per_image
        rank = np.arange(len(ref_image), dtype=np.int64) - ref_first[ref_image] + 1  # (R,) 1.. within the image
        slot_of_sent = np.concatenate((np.arange(n, dtype=np.int64) * per, ref_image * per + rank))
        sent_of_slot = np.full(n * per, -1, dtype=np.int64)
        sent_of_slot[slot_of_sent] = np.arange(len(slot_of_sent))
        slots = np.arange(n * per, dtype=np.int64)
        return cls(per, slot_of_sent, sent_of_slot, slots // per, slots % per == 0)

    @property
    def slots(self) -> int:
        return max(len(self.sent_of_slot), 1)

    def order(self, gram_of_entry: np.ndarray, new_gram: np.ndarray, slot: np.ndarray, count: np.ndarray,
              size: int) -> Order:
        """An order from its entries (E,): dense k-gram ids, where a new k-gram starts, slots, counts."""
        image = self.image_of_slot[slot]
        return Order(gram=gram_of_entry, image=image, sent=self.sent_of_slot[slot], is_hyp=self.hyp_slot[slot],
                     count=count, starts=np.flatnonzero(new_gram | _changes(image)), size=size)


def _sorted_order(composite: np.ndarray, layout: _Layout) -> Order:
    """An order from its positions' ``key * slots + slot`` values (P,), which it sorts in place: one
    sort of values. Arrays are reused where they can be: in a process that scores once, each new one
    is fresh memory (a page fault per 4 KiB)."""
    composite.sort()
    first = np.flatnonzero(_changes(composite))  # (E,) first position of each entry
    values = composite[first]
    slot = values // layout.slots  # the k-gram key, until the slot replaces it
    new_gram = _changes(slot)
    slot *= layout.slots
    np.subtract(values, slot, out=slot)
    dense = _ranks(new_gram)
    return layout.order(dense, new_gram, slot, _run_lengths(first, len(composite)),
                        int(dense[-1]) + 1 if len(dense) else 0)


def _run_lengths(first: np.ndarray, total: int) -> np.ndarray:
    """The length of each run from its first position (E,) in ``total`` positions -> (E,)."""
    lengths = np.empty_like(first)
    np.subtract(first[1:], first[:-1], out=lengths[:-1])
    lengths[-1:] = total - first[-1:]
    return lengths


def _numbered_order(keys: np.ndarray, pos: np.ndarray, slot: np.ndarray, layout: _Layout,
                    total: int) -> tuple[Order, np.ndarray]:
    """An order from its positions' k-gram keys and slots (P,), and the dense k-gram id of every
    position (T,): a sort with its permutation."""
    slots = layout.slots
    bound = (int(keys.max(initial=0)) + 1) * slots
    if bound < KEY_LIMIT:
        # by k-gram, then image, hypothesis first; each position carried along
        composite = keys * slots
        composite += slot
        ranked, sorted_pos = _sort_carrying(composite, bound, pos, total)
        gram_key = ranked // slots
        new_gram = _changes(gram_key)
        new_entry = _changes(ranked)
        first = np.flatnonzero(new_entry)  # (E,)
        entry_slot = ranked[first] - gram_key[first] * slots  # from the sorted keys: a gather through a sort is slower
    else:  # keys too large to combine in 64 bits: a two-key sort
        sort = np.lexsort((slot, keys))
        sorted_pos = pos[sort]
        new_gram = _changes(keys[sort])
        new_entry = new_gram | _changes(slot[sort])
        first = np.flatnonzero(new_entry)
        entry_slot = slot[sort[first]]
    dense = _ranks(new_gram)  # (P,) k-gram id, in sorted order
    gram_at = np.zeros(total, dtype=np.int64)
    gram_at[sorted_pos] = dense
    order = layout.order(dense[first], new_gram[first], entry_slot, _run_lengths(first, len(dense)),
                         int(dense[-1]) + 1 if len(dense) else 0)
    return order, gram_at


def _numbers(keys: np.ndarray, pos: np.ndarray, total: int) -> np.ndarray:
    """The dense id of the k-gram at every position (T,) from its positions' keys (P,), without the order."""
    ranked, sorted_pos = _sort_carrying(keys, int(keys.max(initial=0)) + 1, pos, total)
    dense = _ranks(_changes(ranked))
    gram_at = np.zeros(total, dtype=np.int64)
    gram_at[sorted_pos] = dense
    return gram_at


def _sort_carrying(values: np.ndarray, bound: int, carried: np.ndarray, carried_bound: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (P,), int64, non-negative and below ``bound``, sorted (in place where it can be: their
    memory becomes the result), and ``carried`` (P,), non-negative, increasing and below
    ``carried_bound`` (the values' positions), in the same order. Where a value and its carried one
    fit in 64 unsigned bits together, the carried one is packed in the low bits (a power of two of
    them: a mask and a shift take them apart in 0.5 ms, where division took 1.9) and one sort of
    values gives both: on 576k bigrams 9.5 ms against 21 ms for ``argsort`` and the gather (numpy
    sorts values with AVX-512 where the machine has it, as this one does), and no gather through the
    permutation after (2.2 ms). Equal values come in the order of ``carried`` when packed, in any
    order otherwise (the callers' equal values are one n-gram, or one n-gram in one sentence, so the
    order among them changes nothing)."""
    shift = max(int(carried_bound) - 1, 0).bit_length()
    if len(values) == 0 or bound > 2**(64 - shift):
        sort = np.argsort(values)
        return values[sort], carried[sort]
    packed = values.view(np.uint64)  # the same bits: the values are not negative
    packed <<= np.uint64(shift)
    packed |= carried.astype(np.int64, copy=False).view(np.uint64)
    packed.sort()
    sorted_carried = (packed & np.uint64((1 << shift) - 1)).view(np.int64)
    packed >>= np.uint64(shift)
    return packed.view(np.int64), sorted_carried


def _ranks(new: np.ndarray) -> np.ndarray:
    """0-based number of each sorted entry's value from where each new value starts (E,) bool ->
    (E,) int32 (a bool cumsum into int32 takes a third of the time of one into int64)."""
    ranks = np.cumsum(new, dtype=np.int32)
    ranks -= 1
    return ranks


def _changes(values: np.ndarray) -> np.ndarray:
    """True where a value differs from the one before it (and at the start)."""
    out = np.empty(len(values), dtype=bool)
    out[:1] = True
    np.not_equal(values[1:], values[:-1], out=out[1:])
    return out
