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

Where a task does not enumerate its answers, or no valid answer agrees with the committed tokens
(the decode already went wrong), the label falls back to the final-token label.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LABEL_KINDS", "AnswerTokens", "nearest_targets"]

#: Label kinds a collection can write (``CollectConfig.labels``).
LABEL_KINDS: tuple[str, ...] = ("final", "nearest")


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
        self._cache: OrderedDict[tuple[str, str, int], np.ndarray | None] = OrderedDict()
        self.cache_size = cache_size

    def __call__(self, task_name: str, task: Any, example: Any, gen_len: int) -> np.ndarray | None:
        """The answers of ``example`` as int32 ``[C, gen_len]`` (answer tokens, then EOS).

        Answers longer than ``gen_len`` are left out. Returns ``None`` when the task does not
        enumerate its answers or none fits.
        """
        key = (task_name, example.prompt, int(gen_len))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        answers = getattr(task, "answer_set", lambda _: None)(example)
        matrix = None
        if answers:
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


def nearest_targets(
    tokens: np.ndarray,
    proposal: np.ndarray,
    masked: np.ndarray,
    candidates: Sequence[np.ndarray | None],
    fallback: np.ndarray,
    margin: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the valid answer the state points to (see the module docstring).

    Args:
        tokens: int ``[b, G]`` generation regions (committed tokens at unmasked positions).
        proposal: int ``[b, G]`` proposals.
        masked: bool ``[b, G]`` masked positions of the rows' real lengths.
        candidates: Per row, its answers ``[C, g]`` (``g`` = the row's length) or ``None``.
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
