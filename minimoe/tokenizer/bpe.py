"""The BPE merge loop both tokenizer formats run: merge neighbouring symbols, best pair first, until none can.

One function, one argument that differs: the priority of a pair of neighbours (a, b),
    scores  (tokenizer.model, sentencepiece)  piece -> score: the pair's priority is the score of the piece a + b,
            whichever two symbols form it; higher first. Any split of a piece can form it.
    ranks   (tokenizer.json, HF tokenizers)   (a, b) -> the pair's position in the file's merge list; lower first.
            Only listed pairs merge, and "▁▁▁" from (▁, ▁▁) and from (▁▁, ▁) may have different ranks.
Ties go to the leftmost pair in both.

The symbols live in a doubly linked list (merging b into a empties b's slot) and the candidate pairs in a heap.
Pop the best; skip it if either side changed since it was pushed (a stale entry: symbols only ever grow, so an
entry is stale exactly when its two symbols no longer have the lengths it recorded, or one was merged away);
otherwise merge, and push the two new pairs the merged symbol forms with its neighbours. n symbols: at most
n - 1 merges, each O(log n).
"""

from __future__ import annotations

import heapq


def merge(symbols: list[str], *, scores: dict[str, float] | None = None,
          ranks: dict[tuple[str, str], int] | None = None, frozen: list[bool] | None = None,
          track: set[str] | None = None) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """-> (the final symbols, {piece in `track`: the pair it was last pushed from}).

    Exactly one of `scores` and `ranks`. frozen[i]: symbol i never merges (a user-defined piece). track: pieces
    whose forming pair the caller needs back (sentencepiece splits an UNUSED piece into the two it came from;
    the *last* pair pushed wins, as in the library)."""
    if (scores is None) == (ranks is None):
        raise ValueError("merge needs exactly one of scores (by piece) and ranks (by pair)")
    symbols = list(symbols)
    n = len(symbols)
    formed_from: dict[str, tuple[str, str]] = {}
    if n < 2:
        return symbols, formed_from
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: list[tuple] = []
    if scores is not None:

        def push(left: int, right: int) -> None:
            if frozen is not None and (frozen[left] or frozen[right]):
                return
            piece = symbols[left] + symbols[right]
            score = scores.get(piece)
            if score is not None:
                # heapq is a min-heap: negate the score; ties go to the smaller left index, as in the library
                heapq.heappush(heap, (-score, left, right, len(piece)))
                if track is not None and piece in track:
                    formed_from[piece] = (symbols[left], symbols[right])
    else:

        def push(left: int, right: int) -> None:
            if frozen is not None and (frozen[left] or frozen[right]):
                return
            a, b = symbols[left], symbols[right]
            rank = ranks.get((a, b))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, len(a) + len(b)))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        a, b = symbols[left], symbols[right]
        if not a or not b or len(a) + len(b) != size:
            continue  # stale: one side was merged into something else after this entry was pushed
        symbols[left] = a + b
        symbols[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prv[after] = left
        if prv[left] >= 0:
            push(prv[left], left)
        if after >= 0:
            push(left, after)
    out = []
    i = 0
    while i != -1:
        out.append(symbols[i])
        i = nxt[i]
    return out, formed_from
