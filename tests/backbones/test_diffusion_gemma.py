"""The diffusion-gemma backbone kind on a tiny random ``DiffusionGemmaConfig`` (nothing downloaded).

Checks the loader (auto-detection from ``model_type``), shapes, the noise-for-mask mapping,
determinism, padding invariance, self-conditioning, a full decode with our policies, and that our
EB policy accepts exactly what transformers' ``EntropyBoundSampler`` accepts on the same logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig, Decoder, decode
from commit_env.policies import EntropyBoundPolicy, make_policy

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "red", "blue", "ran", "1", "2", "3", "+"]
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[MASK]"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
PAD, BOS, EOS, UNK, MASK = (VOCAB[t] for t in SPECIALS)
CANVAS = 8


@pytest.fixture(scope="module")
def dg_dir(tmp_path_factory, monkeypatch_module) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        DiffusionGemmaConfig,
        DiffusionGemmaForBlockDiffusion,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )
    text = {
        "vocab_size": len(VOCAB),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "global_head_dim": 16,
        "max_position_embeddings": 128,
        "sliding_window": 8,  # shorter than some prefixes below: the sliding layers are exercised
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "num_experts": 2,
        "top_k_experts": 1,
        "moe_intermediate_size": 32,
    }
    vision = {
        "model_type": "gemma4_vision",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "position_embedding_size": 16,
        "patch_size": 2,
    }
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=CANVAS)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(config)
    path = tmp_path_factory.mktemp("diffusion_gemma")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield mp


def _load(path: Path, **kw):
    return load_backbone(f"hf:{path}", device="cpu", dtype="float32", cache=False, **kw)


@pytest.fixture(scope="module")
def backbone(dg_dir):
    return _load(dg_dir)


def _canvas(prompts: list[list[int]], gen: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts)) + gen
    canvas = torch.full((len(prompts), width), PAD)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        canvas[b, width - gen - len(p) : width - gen] = torch.tensor(p)
        canvas[b, width - gen :] = MASK
        attention[b, width - gen - len(p) :] = 1
    return canvas, attention


def test_auto_detect_and_shapes(backbone):
    from commit_env.backbones.diffusion_gemma import DiffusionGemmaBackbone

    assert isinstance(backbone, DiffusionGemmaBackbone)
    assert backbone.kind == "diffusion-gemma"
    assert backbone.mask_token_id == MASK and backbone.vocab_size == len(VOCAB)
    assert backbone.canvas_length == CANVAS and backbone.hidden_size == 32
    canvas, attention = _canvas([[BOS, 5, 6, 7], [BOS, 8]], CANVAS)
    out = backbone.forward(canvas, attention, hidden_layers=[-1])
    assert out.logits.shape == (2, canvas.shape[1], len(VOCAB))
    assert out.hidden is not None and out.hidden.shape == (2, canvas.shape[1], 32)
    assert torch.isfinite(out.logits).all()
    gen = out.logits[:, -CANVAS:]
    # The placeholder id can never be proposed; the canvas logits are real (not uniform).
    assert (gen.argmax(-1) != MASK).all()
    assert gen.std(-1).min() > 0
    # Prompt columns are outside every row's canvas: uniform apart from the excluded id.
    assert (out.logits[:, 0, :MASK] == 0).all()


def test_forward_is_deterministic_and_noise_depends_on_seed(dg_dir, backbone):
    canvas, attention = _canvas([[BOS, 5, 6, 7]], CANVAS)
    backbone.reset()
    first = backbone.forward(canvas, attention).logits
    backbone.reset()
    again = backbone.forward(canvas, attention).logits
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = _load(dg_dir, noise_seed=1, self_conditioning=False)
    assert not torch.allclose(first, other.forward(canvas, attention).logits)


def test_padding_and_batch_invariance(dg_dir):
    backbone = _load(dg_dir, self_conditioning=False)
    long_prompt = [BOS, *range(5, 17)]  # 13 tokens > sliding_window
    prompts = [long_prompt, [BOS, 8, 9]]
    canvas, attention = _canvas(prompts, CANVAS)
    together = backbone.forward(canvas, attention).logits[:, -CANVAS:]
    for b, prompt in enumerate(prompts):
        alone_canvas, alone_att = _canvas([prompt], CANVAS)
        alone = backbone.forward(alone_canvas, alone_att).logits[:, -CANVAS:]
        torch.testing.assert_close(together[b : b + 1], alone, rtol=1e-4, atol=1e-4)


def test_committed_tokens_are_kept_and_placeholders_are_noise(backbone, monkeypatch):
    seen = {}
    original = backbone.model.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(backbone.model, "forward", spy)
    canvas, attention = _canvas([[BOS, 5, 6]], CANVAS)
    canvas[0, -CANVAS] = 9  # one committed token at the start of the canvas
    backbone.forward(canvas, attention)
    block = seen["decoder_input_ids"][0]
    assert block.shape == (CANVAS,) and int(block[0]) == 9
    assert seen["input_ids"][0].tolist()[-3:] == [BOS, 5, 6]  # prefix -> encoder
    assert seen["decoder_position_ids"][0].tolist() == list(range(3, 3 + CANVAS))


def test_self_conditioning_follows_the_lineage(dg_dir):
    on = _load(dg_dir)
    off = _load(dg_dir, self_conditioning=False)
    canvas, attention = _canvas([[BOS, 5, 6]], CANVAS)
    first_on = on.forward(canvas, attention).logits
    torch.testing.assert_close(first_on, off.forward(canvas, attention).logits)  # zero signal
    canvas[0, -CANVAS + 2] = int(first_on[0, -CANVAS + 2].argmax())  # commit one proposal
    second_on = on.forward(canvas, attention).logits
    second_off = off.forward(canvas, attention).logits
    assert not torch.allclose(second_on, second_off)  # previous logits were fed back
    on.reset()
    torch.testing.assert_close(on.forward(canvas, attention).logits, second_off)


def test_block_schedule_two_canvases(dg_dir):
    backbone = _load(dg_dir, self_conditioning=False)
    config = DecodeConfig(gen_length=2 * CANVAS, window=f"block:{CANVAS}", eos_stop=False)
    decoder = Decoder(backbone, config)
    state = decoder.start([[BOS, 5, 6]])
    assert (state.proposal != MASK).all()
    # While the first canvas is open, the second block gets uniform logits (confidence 1/V').
    assert torch.allclose(state.confidence[0, CANVAS:], state.confidence[0, -1])
    full = torch.zeros_like(state.eligible)
    full[:, :CANVAS] = True
    state = decoder.step(state, full)  # commit the whole first block
    assert state.committed[0, :CANVAS].all() and not state.committed[0, CANVAS:].any()
    assert state.confidence[0, CANVAS:].std() > 0  # the second canvas now has real logits


@pytest.mark.parametrize("policy", ["eb", "topk", "threshold"])
def test_decode_with_our_policies(dg_dir, policy):
    backbone = _load(dg_dir)
    config = DecodeConfig(gen_length=CANVAS, window="full", eos_stop=False)
    result = decode(backbone, [[BOS, 5, 6], [BOS, 7]], make_policy(policy), config)
    tokens = torch.as_tensor(result.tokens)
    assert tokens.shape == (2, CANVAS) and (tokens != MASK).all()
    again = decode(_load(dg_dir), [[BOS, 5, 6], [BOS, 7]], make_policy(policy), config)
    assert torch.equal(tokens, torch.as_tensor(again.tokens))


@pytest.mark.parametrize("gamma", [0.5, 3.5, 6.5, 20.0])
def test_eb_policy_matches_transformers_entropy_bound_sampler(backbone, gamma):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSampler,
        EntropyBoundSamplerConfig,
    )

    backbone.reset()
    decoder = Decoder(backbone, DecodeConfig(gen_length=CANVAS, window="full", eos_stop=False))
    state = decoder.start([[BOS, 5, 6, 7], [BOS, 8, 9]])
    backbone.reset()  # the same (zero) self-conditioning signal as the engine's first forward
    logits = backbone.forward(state.canvas, state.attention_mask).logits[:, -CANVAS:]
    sampler = EntropyBoundSampler(
        EntropyBoundSamplerConfig(entropy_bound=gamma),
        canvas_length=CANVAS,
        vocab_size=len(VOCAB),
        max_denoising_steps=8,
    )
    current = torch.zeros((2, CANVAS), dtype=torch.long)
    sampler.accept_canvas(current, current + 1, logits, cur_step=8)
    theirs = sampler.accepted_token_mask
    ours = EntropyBoundPolicy(gamma=gamma, order="entropy").select(state)
    assert torch.equal(ours, theirs)
    # Near-uniform random logits carry ~log(V) nats each: gamma decides how many are accepted.
    assert (theirs.sum(-1) == min(CANVAS, 1 + int(gamma // math.log(len(VOCAB) - 1)))).any()


def test_placeholder_falls_back_to_gemma_mask_token(backbone):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from commit_env.backbones.diffusion_gemma import DiffusionGemmaBackbone

    vocab = {("<mask>" if t == "[MASK]" else t): i for t, i in VOCAB.items()}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    no_mask = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )
    assert no_mask.mask_token_id is None
    wrapped = DiffusionGemmaBackbone(backbone.model, no_mask, name="no-mask")
    assert wrapped.mask_token_id == MASK
    with pytest.raises(ValueError, match="canvas_length"):
        DiffusionGemmaBackbone(backbone.model, no_mask, name="bad", canvas_length=0)


def test_rows_in_different_blocks_share_one_forward(dg_dir):
    """Rows whose canvases sit in different blocks (different prefix lengths) batch exactly."""
    backbone = _load(dg_dir, self_conditioning=False)
    canvas, attention = _canvas([[BOS, 5, 6, 7], [BOS, 8]], 2 * CANVAS)
    canvas[0, -2 * CANVAS : -CANVAS] = torch.arange(5, 5 + CANVAS)  # row 0: first block committed
    together = backbone.forward(canvas, attention).logits
    assert together[0, -2 * CANVAS : -CANVAS, :MASK].abs().max() == 0  # row 0 decodes block 2
    assert together[1, -CANVAS:, :MASK].abs().max() == 0  # row 1 still decodes block 1
    for b in range(2):
        alone = backbone.forward(canvas[b : b + 1], attention[b : b + 1]).logits
        torch.testing.assert_close(together[b : b + 1], alone, rtol=1e-4, atol=1e-4)


def test_self_conditioning_survives_batch_changes_and_is_bounded(dg_dir):
    prompts = [[BOS, 5, 6], [BOS, 7, 8, 9], [BOS, 10]]
    together, alone = _load(dg_dir), _load(dg_dir)
    canvas, attention = _canvas(prompts, CANVAS)
    first = together.forward(canvas, attention).logits
    alone.forward(canvas[1:2], attention[1:2])
    canvas[:, -1] = first[:, -1].argmax(-1)  # every row commits its last position
    # The engine drops finished rows from its forwards: row 1 alone must find its own lineage.
    second = together.forward(canvas[1:2], attention[1:2]).logits
    torch.testing.assert_close(second, alone.forward(canvas[1:2], attention[1:2]).logits)
    assert together._sc_count <= 2 * 3
    for seed in range(5):  # unrelated prompts never grow the store past twice the largest batch
        other, other_att = _canvas([[BOS, 11 + seed], [BOS, 12 + seed, 5]], CANVAS)
        together.forward(other, other_att)
    assert together._sc_count <= 2 * 3
    bounded = _load(dg_dir, self_conditioning_cache=1)
    bounded.forward(canvas, attention)
    assert bounded._sc_count == 1


def test_logits_equal_transformers_own_forward(dg_dir, monkeypatch):
    """On an unpadded row the adapter's logits are the model's own forward on the same canvas."""
    from transformers import DynamicCache

    backbone = _load(dg_dir, self_conditioning=False)
    seen = {}
    original = backbone.model.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(backbone.model, "forward", spy)
    prompt = [BOS, 5, 6, 7, 8]
    canvas, attention = _canvas([prompt], CANVAS)
    ours = backbone.forward(canvas, attention).logits[0, -CANVAS:]
    noise = seen["decoder_input_ids"]
    monkeypatch.undo()
    cache = DynamicCache(config=backbone.model.config.get_text_config(decoder=True))
    with torch.no_grad():  # default positions and masks, as DiffusionGemma's generate uses them
        theirs = backbone.model(
            input_ids=torch.tensor([prompt]), cache=cache, decoder_input_ids=noise
        ).logits[0]
    theirs[:, MASK] = ours[:, MASK]  # the adapter only excludes the placeholder id
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_engine_kv_cache_is_refused_in_one_line(backbone):
    """DiffusionGemma keeps its own prompt cache; the engine's kv_cache option does not apply."""
    from commit_env.decoding import DecodeConfig, Decoder

    assert not backbone.supports_kv_cache
    assert "diffusion-gemma" in backbone.kv_cache_unsupported_reason
    with pytest.raises(ValueError, match="kv_cache='prefix' is not available"):
        Decoder(backbone, DecodeConfig(gen_length=8, window="block:4", kv_cache="prefix"))
