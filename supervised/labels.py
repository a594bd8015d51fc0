"""Nearest-answer labels: which valid answer does a state's committed tokens and proposals point to?

The future-stability label (TraceLock) calls a proposal stable when it equals the final token of a
completed decode. On a family with many valid answers that label is partly a coin flip: at the
first step of ``remove one from c,a,f,b,e:`` the proposal at answer position j is item j or item
j + 1, and which of them the decode keeps depends on commits made later. No input determines the
label, so a calibrated predictor outputs the coin's odds and never clears a high threshold.

A nearest-answer label is determined by the state: among the task's valid answers
(:meth:`~commit_env.tasks.base.EmbeddedTask.answer_set`) that agree with every committed token, take
the one that agrees with the most proposals (ties: the decode's own final answer when it is among
them, else the first listed); a proposal is stable when it equals that answer. Committing the
stable proposals of a state therefore always leaves a valid answer reachable, and the EGP oracle's
test ("equals the reference") is answered against the reference the proposals point to.

A permutation family (``shuffle``: any order of k items but the given one, k! - 1 answers) is not
enumerated: :class:`PermutationAnswers` builds the nearest answer of each state directly. Every
proposal that names a still-unused item agrees, one slot per item (the decode's own slot first,
then the leftmost), and the other slots take the remaining items.

Where a task neither enumerates its answers nor names its permutation, or no valid answer agrees
with the committed tokens (the decode already went wrong), the label falls back to the final-token
label.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LABEL_KINDS", "AnswerTokens", "PermutationAnswers", "nearest_targets"]

#: Label kinds a collection can write (``CollectConfig.labels``).
LABEL_KINDS: tuple[str, ...] = ("final", "nearest")


@dataclass(frozen=True)
class PermutationAnswers:
    """The answers of a permutation family in token space: any order of ``items`` but ``excluded``.

    Attributes:
        layout: int32 ``[g]`` the answer region with ``-1`` at the item slots (separators and the
            EOS tail are fixed).
        slots: int ``[k]`` positions of the item slots, left to right.
        items: int32 ``[k]`` the items' token ids (distinct).
        excluded: int32 ``[k]`` the one order that is not an answer (the prompt's), per slot.
    """

    layout: np.ndarray
    slots: np.ndarray
    items: np.ndarray
    excluded: np.ndarray

    def nearest(
        self,
        tokens: np.ndarray,
        proposal: np.ndarray,
        masked: np.ndarray,
        own: np.ndarray,
        margin: int | None = None,
    ) -> np.ndarray | None:
        """The answer one state points to, int32 ``[g]``, or None when none keeps its commits.

        Args:
            tokens: One row's generation region (committed tokens at unmasked positions),
                ``[>= g]``; the first ``g`` positions are read, as for the other arrays.
            proposal: The row's proposals.
            masked: Its masked positions.
            own: Its final tokens (the decode's own answer wins ties).
            margin: As in :func:`nearest_targets`. 0: an item proposed at several free slots is
                left unassigned there (-1: tied answers disagree); >= 1: every free slot whose
                item is not forced is -1 (an answer one agreement worse can put any remaining
                item there).
        """
        g = len(self.layout)
        tokens, proposal, masked, own = tokens[:g], proposal[:g], masked[:g], own[:g]
        committed = ~masked
        fixed = self.layout >= 0
        if (tokens[committed & fixed] != self.layout[committed & fixed]).any():
            return None
        answer = self.layout.copy()
        at_slot = committed[self.slots]
        used = tokens[self.slots][at_slot]
        if not np.isin(used, self.items).all() or len(np.unique(used)) != len(used):
            return None
        answer[self.slots[at_slot]] = used
        free = self.slots[~at_slot]
        remaining = [int(t) for t in self.items if t not in set(used.tolist())]
        wanted = proposal[free]
        values, counts = np.unique(wanted, return_counts=True)
        contested = values[(counts > 1) & np.isin(values, remaining)]
        # the decode's own slots first, then left to right (at most 12 slots: a short loop)
        order = sorted(range(len(free)), key=lambda i: (own[free[i]] != wanted[i], i))
        left = list(remaining)
        open_slots = []
        for i in order:
            item = int(wanted[i])
            if item in left:
                answer[free[i]] = item
                left.remove(item)
            else:
                open_slots.append(i)
        for i in sorted(open_slots):  # slots nobody agrees on: any remaining item
            item = int(own[free[i]]) if int(own[free[i]]) in left else left[0]
            answer[free[i]] = item
            left.remove(item)
        if (answer[self.slots] == self.excluded).all():
            return None  # the prompt's own order is not an answer; keep the final-token label
        if margin is not None and len(free) > 1:
            ambiguous = (
                np.ones(len(free), dtype=bool) if margin >= 1 else np.isin(wanted, contested)
            )
            answer[free[ambiguous]] = -1
        return answer


class AnswerTokens:
    """Token matrices of task answer sets, laid out like a generation region, cached per prompt.

    Args:
        backbone: Provides ``encode`` and ``eos_token_ids``.
        margin: The ``margin`` of :func:`nearest_targets` for labels built from these answers.
        cache_size: Answer sets kept (a ``qa:list`` set has up to 30240 answers).
    """

    def __init__(self, backbone: Any, margin: int | None = None, cache_size: int = 64) -> None:
        self.backbone = backbone
        self.margin = margin
        self.eos = int(backbone.eos_token_ids[0]) if backbone.eos_token_ids else -1
        self._cache: OrderedDict[tuple[str, str, int], np.ndarray | PermutationAnswers | None] = (
            OrderedDict()
        )
        self.cache_size = cache_size

    def __call__(
        self, task_name: str, task: Any, example: Any, gen_len: int
    ) -> np.ndarray | PermutationAnswers | None:
        """The answers of ``example`` as int32 ``[C, gen_len]`` (answer tokens, then EOS).

        Answers longer than ``gen_len`` are left out. A permutation family
        (:meth:`~commit_env.tasks.base.EmbeddedTask.answer_permutation`) gets a
        :class:`PermutationAnswers` instead. Returns ``None`` when the task does neither, no
        answer fits, or an item is not one token.
        """
        key = (task_name, example.prompt, int(gen_len))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        answers = getattr(task, "answer_set", lambda _: None)(example)
        permutation = getattr(task, "answer_permutation", lambda _: None)(example)
        matrix: np.ndarray | PermutationAnswers | None = None
        if permutation is not None:
            matrix = self._permutation(*permutation, gen_len)
        elif answers:
            ids = self.backbone.encode(list(answers))
            rows = [row for row in ids if len(row) <= gen_len]
            if rows:
                matrix = np.full((len(rows), gen_len), self.eos, dtype=np.int32)
                for i, row in enumerate(rows):
                    matrix[i, : len(row)] = row
        self._cache[key] = matrix
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return matrix

    def _permutation(
        self, text: str, items: Sequence[str], gen_len: int
    ) -> PermutationAnswers | None:
        """Token layout of a permutation family's answers (None: it does not fit or tokenize)."""
        ids = self.backbone.encode([text])[0]
        item_ids = [self.backbone.encode([item])[0] for item in items]
        if len(ids) > gen_len or any(len(i) != 1 for i in item_ids):
            return None
        wanted = [int(i[0]) for i in item_ids]
        if len(set(wanted)) != len(wanted):
            return None
        slots, j = [], 0
        for pos, tok in enumerate(ids):  # the items' slots, in order
            if j < len(wanted) and tok == wanted[j]:
                slots.append(pos)
                j += 1
        if j != len(wanted):
            return None
        layout = np.full(gen_len, self.eos, dtype=np.int32)
        layout[: len(ids)] = ids
        layout[slots] = -1
        order = np.asarray(wanted, dtype=np.int32)
        return PermutationAnswers(layout, np.asarray(slots), order, order.copy())


def nearest_targets(
    tokens: np.ndarray,
    proposal: np.ndarray,
    masked: np.ndarray,
    candidates: Sequence[np.ndarray | PermutationAnswers | None],
    fallback: np.ndarray,
    margin: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the valid answer the state points to (see the module docstring).

    Args:
        tokens: int ``[b, G]`` generation regions (committed tokens at unmasked positions).
        proposal: int ``[b, G]`` proposals.
        masked: bool ``[b, G]`` masked positions of the rows' real lengths.
        candidates: Per row, its answers ``[C, g]`` (``g`` = the row's length), a
            :class:`PermutationAnswers`, or ``None``.
        fallback: int ``[b, G]`` the final-token targets, used where no answer applies.
        margin: None: the state points to one answer (ties: the decode's own, else the first).
            An integer m: every consistent answer within m agreements of the best is a candidate,
            and a position's target is kept only where all of them agree (elsewhere it is -1, so
            no proposal is stable there): an ambiguous state commits only what every near-best
            answer shares.

    Returns:
        ``(targets [b, G], used [b])``: the targets, and which rows got an answer from the set.
    """
    targets = fallback.copy()
    used = np.zeros(len(tokens), dtype=bool)
    for r, answers in enumerate(candidates):  # one vectorised pass over C answers per row
        if isinstance(answers, PermutationAnswers):
            nearest = answers.nearest(tokens[r], proposal[r], masked[r], fallback[r], margin)
            if nearest is not None:
                targets[r, : len(nearest)] = nearest
                used[r] = True
            continue
        if answers is None:
            continue
        g = answers.shape[1]
        row_masked = masked[r, :g]
        committed = ~row_masked
        agree_committed = (answers[:, committed] == tokens[r, :g][committed]).all(axis=1)
        if not agree_committed.any():
            continue
        agree = (answers[:, row_masked] == proposal[r, :g][row_masked]).sum(axis=1)
        agree = np.where(agree_committed, agree, -1)
        best = agree == agree.max()
        own = best & (answers == fallback[r, :g]).all(axis=1)
        pick = int(np.argmax(own)) if own.any() else int(np.argmax(best))
        target = answers[pick]
        if margin is not None:
            near = answers[agree >= agree.max() - margin]  # [c', g]
            target = np.where((near == target).all(axis=0), target, -1)
        targets[r, :g] = target
        used[r] = True
    return targets, used
