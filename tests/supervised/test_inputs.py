"""Controller inputs: structure (conflict, EOS) and setting features, live and stored paths."""

import numpy as np
import torch
from commit_env.supervised.collect import CollectConfig, collect_traces
from commit_env.supervised.inputs import (
    SETTING_FEATURES,
    STRUCTURE_FEATURES,
    batch_from_records,
    batch_from_state,
    setting_features,
    structure_features,
)
from commit_env.supervised.model import ControllerConfig, StabilityController, sinusoid

from commit_env.decoding import DecodeSetting
from commit_env.decoding.state import WINDOW_CODES
from commit_env.traces import TraceDataset

COL = {name: i for i, name in enumerate(STRUCTURE_FEATURES)}


def test_structure_features_flag_conflicts_and_eos():
    EOS = 9
    tokens = torch.tensor([[5, 0, 0, 0, 0, 0]])  # 0 = mask id here; position 0 committed
    proposal = torch.tensor([[5, 5, 7, 7, EOS, 3]])
    committed = torch.tensor([[True, False, False, False, False, False]])
    visible = torch.tensor([[True, True, True, True, True, False]])  # position 5 hidden
    prompt = torch.tensor([[5, 7, 7, 1]])
    prompt_mask = torch.tensor([[True, True, True, False]])  # the 1 is padding
    f = structure_features(tokens, proposal, committed, visible, prompt, prompt_mask, (EOS,))
    assert f.shape == (1, 6, len(STRUCTURE_FEATURES))
    # 7 is proposed at positions 2 and 3: one other proposer each; 5 only once among masked
    assert f[0, :5, COL["dup_proposals"]].tolist() == [0.0, 0.0, 0.25, 0.25, 0.0]
    assert f[0, 1, COL["dup_committed"]] == 1.0  # 5 is already committed at position 0
    assert f[0, 1, COL["same_as_left"]] == 1.0 and f[0, 2, COL["same_as_right"]] == 1.0
    # 5 occurs once in the prompt and is used once: no surplus; 7 twice, unused: surplus 2
    assert f[0, 1, COL["prompt_surplus"]] == 0.0 and f[0, 2, COL["prompt_surplus"]] == 1.0
    assert f[0, 4, COL["in_prompt"]] == 0.0 and f[0, 4, COL["is_eos"]] == 1.0
    assert f[0, :5, COL["eos_left"]].tolist() == [0.0] * 5
    assert (f[0, 5] == 0).all()  # hidden positions carry nothing


def test_structure_features_flag_row_and_column_conflicts():
    SEP, EOS, MASK = 8, 9, 0
    # a 2x2 grid "12;21": committed 1 at (0, 0); masked positions propose 1 at (0, 1), the
    # separator, then 1 at (1, 0) and 2 at (1, 1)
    tokens = torch.tensor([[1, MASK, MASK, MASK, MASK, MASK]])
    proposal = torch.tensor([[1, 1, SEP, 1, 2, EOS]])
    committed = torch.tensor([[True, False, False, False, False, False]])
    visible = torch.ones(1, 6, dtype=torch.bool)
    prompt, prompt_mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool)
    f = structure_features(
        tokens, proposal, committed, visible, prompt, prompt_mask, (EOS,), (SEP,)
    )
    assert f.shape == (1, 6, len(STRUCTURE_FEATURES))
    # (0, 1) repeats the committed 1 of its row; (1, 0) repeats it in its column
    assert f[0, :, COL["row_committed"]].tolist() == [0, 1, 0, 0, 0, 0]
    assert f[0, :, COL["column_committed"]].tolist() == [0, 0, 0, 1, 0, 0]
    # (0, 1) and (1, 0) both propose 1 but share neither row nor column; (1, 1)'s 2 is clean
    assert f[0, :, COL["row_proposed"]].tolist() == [0.0] * 6
    assert f[0, :, COL["column_proposed"]].tolist() == [0.0] * 6
    # without separators the answer is one segment: (1, 0) now shares the row with both 1s
    one = structure_features(tokens, proposal, committed, visible, prompt, prompt_mask, (EOS,))
    assert one[0, 3, COL["row_committed"]] == 1 and one[0, 3, COL["row_proposed"]] == 0.5
    assert (one[..., COL["column_committed"]] == 0).all()
    # a list "3,4,3": offset 0 of another item repeats (a permutation must not)
    proposal = torch.tensor([[3, SEP, 4, SEP, 3, EOS]])
    none = torch.zeros(1, 6, dtype=torch.bool)
    lst = structure_features(
        proposal * 0, proposal, none, visible, prompt, prompt_mask, (EOS,), (SEP,)
    )
    assert lst[0, :, COL["column_proposed"]].tolist() == [0.5, 0, 0, 0, 0.5, 0]


def test_structure_features_flag_whole_items_repeated_across_segments():
    SEP, EOS, MASK = 8, 9, 0
    # "pe,pe,pa": the first item committed, the rest proposed; a character-level tokenizer
    # makes the repeated word no token-level conflict at offset 1 ("e" vs "a" differ only there)
    proposal = torch.tensor([[1, 2, SEP, 1, 2, SEP, 1, 3, EOS]])
    committed = torch.tensor([[True, True, True] + [False] * 6])
    tokens = torch.where(committed, proposal, torch.full_like(proposal, MASK))
    visible = torch.ones(1, 9, dtype=torch.bool)
    prompt, prompt_mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)
    f = structure_features(
        tokens, proposal, committed, visible, prompt, prompt_mask, (EOS,), (SEP,)
    )
    assert f.shape == (1, 9, len(STRUCTURE_FEATURES))
    # the second item repeats the committed first; "pa" repeats nothing; committed ask nothing
    assert f[0, :, COL["item_committed"]].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert (f[0, :, COL["item_proposed"]] == 0).all()
    # nothing committed: the two "pe" segments repeat each other as proposals
    none = torch.zeros_like(committed)
    g = structure_features(
        proposal * 0, proposal, none, visible, prompt, prompt_mask, (EOS,), (SEP,)
    )
    assert g[0, :, COL["item_proposed"]].tolist() == [1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert (g[0, :, COL["item_committed"]] == 0).all()
    # a prefix is not the same item ("pe" vs "p"), and hiding the repeat removes the flag
    short = torch.tensor([[1, 2, SEP, 1, SEP, 3, 3, 3, EOS]])
    h = structure_features(short * 0, short, none, visible, prompt, prompt_mask, (EOS,), (SEP,))
    assert (h[0, :, COL["item_proposed"]] == 0).all()
    hidden = visible.clone()
    hidden[0, 3:] = False
    k = structure_features(
        proposal * 0, proposal, none, hidden, prompt, prompt_mask, (EOS,), (SEP,)
    )
    assert (k[..., COL["item_proposed"]] == 0).all()
    # without separators there are no items
    one = structure_features(tokens, proposal, committed, visible, prompt, prompt_mask, (EOS,))
    assert (one[..., COL["item_committed"]] == 0).all()


def test_separator_token_ids_are_the_single_token_separators():
    from commit_env.supervised.inputs import separator_token_ids

    from commit_env.backbones import load_backbone

    tok = load_backbone("tiny-testbed").tokenizer
    ids = separator_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids) == [",", ";"]  # no newline in this vocabulary


def test_setting_features_encode_window_budget_and_steps_left():
    f = setting_features(
        window_kind=torch.tensor([WINDOW_CODES["block"], WINDOW_CODES["full"]]),
        window_width=torch.tensor([4, 32]),
        gen_len=torch.tensor([16, 32]),
        budget=torch.tensor([8, 32]),
        budget_limited=torch.tensor([True, False]),
        nfe=torch.tensor([2, 5]),
        masked=torch.tensor([12, 30]),
    )
    col = {n: i for i, n in enumerate(SETTING_FEATURES)}
    assert f.shape == (2, len(SETTING_FEATURES))
    assert f[0, col["window_block"]] == 1 and f[1, col["window_full"]] == 1
    assert f[0, col["window_frac"]] == 0.25 and f[0, col["budget_frac"]] == 0.5
    assert f[1, col["budget_frac"]] == 1.0 and f[1, col["budget_limited"]] == 0.0
    assert torch.isclose(f[0, col["steps_left_frac"]], torch.tensor(6 / 16))
    assert ((f >= 0) & (f <= 1)).all()


def test_records_and_live_states_give_the_same_inputs(tmp_path, tiny):
    mix = (DecodeSetting(12, "sliding:4", 6), DecodeSetting(16, "block:4", None))
    cfg = CollectConfig(
        out=str(tmp_path / "t"),
        tasks=("qa",),
        n=4,
        seed=2,
        batch_size=4,
        settings=mix,
        hidden_features=0,
        feature_groups=("confidence", "position", "global"),
    )
    collect_traces(cfg, backbone=tiny, progress=False)
    data = TraceDataset(cfg.out)
    records = [r for r in data.iter_records() if r["nfe"] == 1]
    stored = batch_from_records(records, data.meta)
    # replay the first forward of the same rows with the engine
    from commit_env.supervised.collect import draw_examples, draw_settings

    from commit_env.decoding import Decoder

    examples = draw_examples(cfg.tasks, cfg.n, cfg.seed)
    settings = draw_settings(cfg.mixture, cfg.n, cfg.seed)
    decoder = Decoder(tiny, cfg.decode_config())
    state = decoder.start(
        [e.prompt for _, e in examples],
        gen_lengths=[s.gen_length for s in settings],
        windows=[s.window for s in settings],
        budgets=[s.step_budget for s in settings],
    )
    live = batch_from_state(state, cfg.feature_builder())
    order = [int(r["trace_id"]) for r in records]
    assert torch.allclose(live.setting[order], stored.setting)
    assert torch.equal(live.visible_end[order], stored.visible_end)
    assert torch.equal(live.proposal[order], stored.proposal)
    assert torch.allclose(live.features[order], stored.features, atol=1e-3)  # float16 storage
    assert {int(g) for g in np.array([r["gen_len"] for r in records])} <= {12, 16}


def test_model_has_no_length_limit_and_masks_hidden_positions():
    torch.manual_seed(0)
    model = StabilityController(ControllerConfig(vocab_size=20, feature_dim=3, eos_token_ids=(1,)))
    model.eval()

    def batch(G, end):
        from commit_env.supervised.inputs import ControllerBatch

        g = torch.Generator().manual_seed(G)
        return ControllerBatch(
            prompt=torch.randint(2, 20, (2, 5), generator=g),
            prompt_mask=torch.ones(2, 5, dtype=torch.bool),
            tokens=torch.zeros(2, G, dtype=torch.long),
            proposal=torch.randint(2, 20, (2, G), generator=g),
            features=torch.rand(2, G, 3, generator=g),
            eligible=torch.ones(2, G, dtype=torch.bool),
            visible_end=torch.tensor([end, G]),
            window_start=torch.zeros(2, dtype=torch.long),
            committed=torch.zeros(2, G, dtype=torch.bool),
            setting=torch.rand(2, len(SETTING_FEATURES), generator=g),
        )

    with torch.no_grad():
        logits, tau, eos = model.forward_all(batch(300, 10))  # far beyond any trained G
        assert logits.shape == eos.shape == (2, 300) and torch.isfinite(logits).all()
        # what lies right of the visible edge cannot change the visible scores
        b = batch(40, 10)
        before = model(b)[0][0, :10]
        b.proposal[0, 10:] = 3
        b.features[0, 10:] = 0.5
        assert torch.allclose(before, model(b)[0][0, :10], atol=1e-5)
    assert torch.allclose(sinusoid(torch.tensor([0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
