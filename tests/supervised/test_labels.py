import dataclasses

import numpy as np
import pytest
from commit_env.supervised.collect import CollectConfig, collect_traces
from commit_env.supervised.labels import AnswerTokens, PermutationAnswers, nearest_targets

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeSetting
from commit_env.tasks import get_task
from commit_env.traces import TraceDataset


def test_nearest_target_is_the_consistent_answer_most_proposals_agree_with():
    MASK = 0
    answers = np.array([[1, 2, 3, 9], [1, 3, 4, 9], [5, 3, 4, 9]], dtype=np.int32)
    tokens = np.array([[1, MASK, MASK, MASK], [7, MASK, MASK, MASK], [MASK] * 4])
    proposal = np.array([[1, 3, 4, 9], [7, 3, 4, 9], [1, 2, 4, 9]])
    masked = tokens == MASK
    final = np.array([[1, 2, 3, 9], [7, 3, 3, 9], [1, 2, 3, 9]])
    targets, used = nearest_targets(tokens, proposal, masked, [answers] * 3, final)
    # row 0: answers 0 and 1 keep the committed 1; answer 1 agrees with every proposal
    assert targets[0].tolist() == [1, 3, 4, 9] and used[0]
    # row 1: no answer keeps the committed 7: the final-token target stays
    assert targets[1].tolist() == final[1].tolist() and not used[1]
    # row 2: answers 0 and 1 tie (3 agreements each): the decode's own final answer wins
    assert targets[2].tolist() == [1, 2, 3, 9] and used[2]
    # with a margin, an ambiguous state keeps only what every near-best answer shares
    tied, _ = nearest_targets(tokens[2:], proposal[2:], masked[2:], [answers], final[2:], 0)
    assert tied[0].tolist() == [1, -1, -1, 9]  # answers 0 and 1 tie
    loose, _ = nearest_targets(tokens[2:], proposal[2:], masked[2:], [answers], final[2:], 1)
    assert loose[0].tolist() == [-1, -1, -1, 9]  # answer 2 (2 agreements) joins at margin 1
    clear, _ = nearest_targets(tokens[:1], proposal[:1], masked[:1], [answers], final[:1], 0)
    assert clear[0].tolist() == [1, 3, 4, 9]  # a unique best answer is kept whole
    # a row whose task lists no answers keeps its final target
    kept, used = nearest_targets(tokens, proposal, masked, [None] * 3, final)
    assert (kept == final).all() and not used.any()


def test_answer_tokens_lay_answers_out_like_a_generation_region():
    bb = load_backbone("tiny-testbed")
    task = get_task("remove:any")
    example = task.sample(np.random.default_rng(0))
    answers = AnswerTokens(bb)
    matrix = answers("remove:any", task, example, 24)
    texts = task.answer_set(example)
    assert matrix.shape == (len(texts), 24)
    first = bb.encode([texts[0]])[0]
    assert matrix[0, : len(first)].tolist() == first
    assert (matrix[0, len(first) :] == bb.eos_token_ids[0]).all()  # the EOS tail
    assert answers("remove:any", task, example, 24) is matrix  # cached per prompt and length
    assert answers("remove:any", task, example, 3) is None  # no answer fits 3 positions
    shuffle = get_task("shuffle")
    example = shuffle.sample(np.random.default_rng(0))
    perm = answers("shuffle", shuffle, example, 24)
    assert isinstance(perm, PermutationAnswers)  # k! - 1 answers: built per state, not listed
    text = ",".join(example.meta["items"])
    ids = bb.encode([text])[0]
    assert perm.slots.tolist() == list(range(0, len(ids), 2))  # items between the commas
    assert perm.items.tolist() == ids[0::2] and perm.excluded.tolist() == ids[0::2]
    assert (perm.layout[perm.slots] == -1).all() and perm.layout[1].item() == ids[1]
    assert (perm.layout[len(ids) :] == bb.eos_token_ids[0]).all()
    assert answers("shuffle", shuffle, example, len(ids) - 1) is None  # does not fit


def test_permutation_answers_point_to_the_order_the_proposals_agree_with():
    SEP, EOS, A, B, C, D, MASK = 9, 8, 1, 2, 3, 4, 0
    layout = np.array([-1, SEP, -1, SEP, -1, SEP, -1, EOS])
    perm = PermutationAnswers(
        layout, np.array([0, 2, 4, 6]), np.array([A, B, C, D]), np.array([A, B, C, D])
    )

    def state(tokens):
        tokens = np.array(tokens)
        return tokens, tokens == MASK

    # nothing committed; B is proposed twice (slots 0 and 4): the decode's own slot (4) keeps it
    tokens, masked = state([MASK] * 8)
    proposal = np.array([B, SEP, A, SEP, B, SEP, SEP, EOS])
    own = np.array([C, SEP, A, SEP, B, SEP, D, EOS])
    answer = perm.nearest(tokens, proposal, masked, own)
    assert answer.tolist() == [C, SEP, A, SEP, B, SEP, D, EOS]  # open slots take own's items
    assert sorted(answer[perm.slots].tolist()) == [A, B, C, D]
    # without the decode's preference the leftmost slot proposing B wins
    answer = perm.nearest(tokens, proposal, masked, np.full(8, EOS))
    assert answer[0] == B and answer[4] != B and answer[2] == A
    # margin 0: the slots that contest B are ambiguous; margin 1: every free slot is
    tied = perm.nearest(tokens, proposal, masked, own, margin=0)
    assert tied[[0, 4]].tolist() == [-1, -1] and tied[2] == A and tied[1] == SEP
    loose = perm.nearest(tokens, proposal, masked, own, margin=1)
    assert (loose[perm.slots] == -1).all() and loose[7] == EOS
    # a committed item is kept and no longer agreed with elsewhere
    tokens, masked = state([MASK, SEP, B, MASK, MASK, MASK, MASK, MASK])
    answer = perm.nearest(tokens, proposal, masked, own)
    assert answer[2] == B and answer[0] != B and answer[4] != B
    # commits no answer keeps: a repeated item, a wrong separator
    for bad in ([A, SEP, A] + [MASK] * 5, [A, A] + [MASK] * 6):
        tokens, masked = state(bad)
        assert perm.nearest(tokens, proposal, masked, own) is None
    # the prompt's own order is not an answer
    tokens, masked = state([A, SEP, B, SEP, C, SEP, MASK, EOS])
    assert perm.nearest(tokens, proposal, masked, own) is None
    # through nearest_targets: the row counts as labelled from the answer set
    targets, used = nearest_targets(
        np.full((1, 8), MASK), proposal[None], np.ones((1, 8), bool), [perm], own[None]
    )
    assert used[0] and targets[0].tolist() == [C, SEP, A, SEP, B, SEP, D, EOS]


def test_labels_kind_is_validated():
    with pytest.raises(ValueError, match="labels must be one of"):
        CollectConfig(labels="oracle")
    with pytest.raises(ValueError, match="nearest_margin must be >= 0"):
        CollectConfig(labels="nearest", nearest_margin=-1)


def test_nearest_labels_mark_a_valid_answer_reachable(tmp_path):
    bb = load_backbone("tiny-testbed")
    cfg = CollectConfig(
        out=str(tmp_path / "near"),
        backbone="tiny-testbed",
        tasks=("remove:any", "shuffle"),
        n=12,
        seed=1,
        batch_size=12,
        settings=(DecodeSetting(24, "full", None),),
        hidden_features=0,
        feature_groups=("confidence", "position"),
        labels="nearest",
    )
    collect_traces(cfg, backbone=bb, progress=False)
    data = TraceDataset(cfg.out)
    assert data.meta["labels"] == "nearest"
    final = collect_traces(
        dataclasses.replace(cfg, out=str(tmp_path / "final"), labels="final"),
        backbone=bb,
        progress=False,
    )
    assert final["traces"] == 12
    from commit_env.supervised.collect import draw_examples

    examples = draw_examples(cfg.tasks, cfg.n, cfg.seed)
    matrices = AnswerTokens(bb)
    changed = fitting = 0
    finals = list(TraceDataset(tmp_path / "final").iter_records())
    for rec, old in zip(data.iter_records(), finals, strict=True):
        name, example = examples[rec["trace_id"]]
        masked = rec["label"] >= 0
        answers = matrices(name, get_task(name), example, 24)
        if name == "shuffle":  # where the commits fit an answer, so do commits plus stable
            committed = np.where(masked[:24], -1, rec["tokens"][:24])
            keep = ~masked[:24] | (rec["label"][:24] == 1)
            draft = np.where(keep, np.where(masked[:24], rec["proposal"][:24], committed), -1)
            if _fits_permutation(committed, answers):
                assert _fits_permutation(draft, answers)
                fitting += 1
            changed += int((rec["label"] != old["label"]).any())
            continue
        # committed tokens plus the stable proposals agree with one valid answer
        keep = ~masked[:24] | (rec["label"][:24] == 1)
        draft = np.where(masked[:24], rec["proposal"][:24], rec["tokens"][:24])
        fits = (answers[:, keep] == draft[keep]).all(axis=1)
        assert fits.any() or not ((answers[:, ~masked[:24]] == draft[~masked[:24]]).all(1)).any()
        changed += int((rec["label"] != old["label"]).any())
    assert changed > 0  # the labels differ from the final-token ones somewhere
    assert fitting > 0  # shuffle states were labelled from their permutation
    # a margin reaches the labels: ambiguous states keep fewer stable positions
    strict = dataclasses.replace(cfg, out=str(tmp_path / "strict"), nearest_margin=1)
    collect_traces(strict, backbone=bb, progress=False)
    assert TraceDataset(strict.out).meta["nearest_margin"] == 1
    loose = [int((r["label"] == 1).sum()) for r in data.iter_records()]
    tight = [int((r["label"] == 1).sum()) for r in TraceDataset(strict.out).iter_records()]
    assert all(t <= lo for t, lo in zip(tight, loose, strict=True)) and sum(tight) < sum(loose)


def _fits_permutation(draft, perm):
    """Whether the known tokens of ``draft`` (-1: unknown) fit some order of ``perm``'s items."""
    g = len(perm.layout)
    fixed = (perm.layout >= 0) & (draft[:g] >= 0)
    items = draft[:g][perm.slots]
    items = items[items >= 0]
    return (
        bool((draft[:g][fixed] == perm.layout[fixed]).all())
        and bool(np.isin(items, perm.items).all())
        and len(set(items.tolist())) == len(items)
    )


def test_collect_cli_writes_nearest_labels(tmp_path, capsys):
    from commit_env.evaluation.cli import main

    out = tmp_path / "t"
    argv = ["collect", "--out", str(out), "--backbone", "tiny-testbed", "--task", "remove:any"]
    argv += ["--n", "4", "--gen-length", "24", "--window", "full", "--labels", "nearest"]
    assert main(argv) == 0
    assert TraceDataset(out).meta["labels"] == "nearest"
    assert main(["collect", "--out", str(tmp_path / "u"), "--labels", "oracle"]) == 2
    assert "invalid choice: 'oracle'" in capsys.readouterr().err
