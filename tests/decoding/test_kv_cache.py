"""KV caches as an engine option (Fast-dLLM prefix and dual caches) on real transformers stacks.

Tiny random ``LlamaForCausalLM`` (driven as LLaDA: bidirectional, aligned logits) and
``Qwen2ForCausalLM`` (driven as Dream: bidirectional, shifted logits) models are built in memory;
nothing is downloaded. Where the cache is exact the cached decode must equal the uncached one:

* a cached forward on the canvas its cache was computed from reproduces the full forward;
* with one transformer layer, cached keys/values depend only on their own token and position, so
  a prefix (and a dual) cache is exact throughout the decode: the outputs must be identical.

With more layers the cache is Fast-dLLM's approximation; those tests check the accounting (the
tokens saved) and that every configuration runs, not equality.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from commit_env.backbones.hf import HFBackbone
from commit_env.decoding import DecodeConfig, Decoder, decode
from commit_env.decoding.batching import replace_rows
from commit_env.policies import make_policy

WORDS = [f"w{i}" for i in range(28)]
SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
PAD, MASK, EOS = VOCAB["[PAD]"], VOCAB["[MASK]"], VOCAB["[EOS]"]
# Prompts of different lengths, so rows are left-padded differently.
PROMPTS = [[4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23, 24]]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
        mask_token="[MASK]",
    )  # fmt: skip


def _backbone(arch: str, layers: int, impl: str = "sdpa") -> HFBackbone:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls, kind = {
        "llama": (LlamaConfig, LlamaForCausalLM, "llada"),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, "dream"),
    }[arch]
    config = config_cls(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        tie_word_embeddings=False,
        initializer_range=0.2,  # sharp distributions: no near-ties for argmax to flip on
        attn_implementation=impl,
    )
    rng = torch.random.get_rng_state()
    torch.manual_seed(11 + layers)
    model = model_cls(config).eval()
    torch.random.set_rng_state(rng)
    return HFBackbone(model, _tokenizer(), name=f"{arch}-{layers}", kind=kind)


@pytest.fixture(scope="module")
def llama1() -> HFBackbone:
    return _backbone("llama", 1)


@pytest.fixture(scope="module")
def llama2() -> HFBackbone:
    return _backbone("llama", 2)


def _config(**kw) -> DecodeConfig:
    base = {"gen_length": 16, "window": "block:4", "eos_stop": False}
    return DecodeConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("arch", "impl"), [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")]
)
def test_cached_forward_on_unchanged_canvas_equals_full_forward(arch: str, impl: str) -> None:
    backbone = _backbone(arch, 2, impl)
    assert backbone.supports_kv_cache, backbone.kv_cache_unsupported_reason
    canvas = torch.full((2, 12), MASK)
    attention = torch.ones_like(canvas)
    canvas[0, :5] = torch.tensor([4, 5, 6, 7, 8])
    canvas[1, :3], attention[1, :3] = PAD, 0  # left padding
    canvas[1, 3:6] = torch.tensor([9, 10, 11])
    full = backbone.forward(canvas, attention, hidden_layers=[-1])
    cache = backbone.new_kv_cache(2, 12)
    everything = torch.arange(12).expand(2, 12)
    refresh = backbone.forward_cached(canvas, attention, everything, cache)
    torch.testing.assert_close(refresh.logits, full.logits, atol=1e-5, rtol=1e-5)
    # Rows recompute different spans; row 1 is shorter and repeats its last position.
    positions = torch.tensor([[6, 7, 8, 9], [8, 9, 10, 10]])
    part = backbone.forward_cached(canvas, attention, positions, cache, hidden_layers=[-1])
    index = positions[..., None]
    want = full.logits.gather(1, index.expand(-1, -1, full.logits.shape[-1]))
    torch.testing.assert_close(part.logits, want, atol=1e-5, rtol=1e-5)
    assert part.hidden is not None and full.hidden is not None
    want_h = full.hidden.gather(1, index.expand(-1, -1, full.hidden.shape[-1]))
    torch.testing.assert_close(part.hidden, want_h, atol=1e-5, rtol=1e-5)
    # A subset of the cache's rows.
    one = backbone.forward_cached(
        canvas[1:], attention[1:], positions[1:], cache, rows=torch.tensor([1])
    )
    torch.testing.assert_close(one.logits, want[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("policy", ["topk", "threshold"])
def test_exact_cache_decodes_like_uncached(llama1: HFBackbone, mode: str, policy: str) -> None:
    """One layer: cached keys/values depend only on their own token, so the cache is exact."""
    plain = decode(llama1, PROMPTS, make_policy(policy), _config())
    cached = decode(llama1, PROMPTS, make_policy(policy), _config(kv_cache=mode))
    assert torch.equal(cached.tokens, plain.tokens)
    assert torch.equal(cached.nfe, plain.nfe)
    assert torch.equal(cached.commit_step, plain.commit_step)
    assert bool((cached.forward_tokens < plain.forward_tokens).all())
    assert torch.equal(cached.forward_tokens_saved, plain.forward_tokens - cached.forward_tokens)
    assert int(plain.kv_refreshes.sum()) == 0 and bool((plain.forward_tokens_saved == 0).all())


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_exact_cache_on_a_shifted_dream_stack(mode: str) -> None:
    """Dream's shifted logits: the adapter also runs the position before each cached span."""
    qwen = _backbone("qwen2", 1)
    plain = decode(qwen, PROMPTS, make_policy("topk"), _config())
    cached = decode(qwen, PROMPTS, make_policy("topk"), _config(kv_cache=mode))
    assert torch.equal(cached.tokens, plain.tokens)
    assert bool((cached.forward_tokens < plain.forward_tokens).all())


def test_exact_cache_with_sampling_and_hidden_features(llama1: HFBackbone) -> None:
    """Sampled proposals draw the same noise and hidden features match with an exact cache."""
    options = {"temperature": 0.7, "seed": 5, "hidden_features": 4}
    plain = decode(llama1, PROMPTS, make_policy("topk"), _config(**options))
    cached = decode(llama1, PROMPTS, make_policy("topk"), _config(kv_cache="dual", **options))
    assert torch.equal(cached.tokens, plain.tokens)


def test_accounting_counts_refreshes_and_recomputed_tokens(llama2: HFBackbone) -> None:
    """One commit per step, blocks of 4 out of 16: 4 refreshes, and exactly the spans recomputed."""
    canvas = torch.tensor([len(p) + 16 for p in PROMPTS])
    plain = decode(llama2, PROMPTS, make_policy("topk"), _config())
    prefix = decode(llama2, PROMPTS, make_policy("topk"), _config(kv_cache="prefix"))
    dual = decode(llama2, PROMPTS, make_policy("topk"), _config(kv_cache="dual"))
    for result in (plain, prefix, dual):
        assert result.nfe.tolist() == [16] * len(PROMPTS)
        assert torch.equal(result.canvas_tokens, canvas)
    assert torch.equal(plain.forward_tokens, 16 * canvas)
    assert prefix.kv_refreshes.tolist() == [4] * len(PROMPTS)
    assert dual.kv_refreshes.tolist() == [4] * len(PROMPTS)
    # Each block: one refresh (whole canvas) + 3 cached forwards over block+suffix / block only.
    assert torch.equal(prefix.forward_tokens, 4 * canvas + 3 * (16 + 12 + 8 + 4))
    assert torch.equal(dual.forward_tokens, 4 * canvas + 3 * 4 * 4)
    summary = dual.summary()
    assert summary["kv_refreshes"] == 4.0
    assert summary["forward_tokens_saved"] == float(
        (16 * canvas - dual.forward_tokens).float().mean()
    )


def test_rows_are_independent_of_their_batch(llama2: HFBackbone) -> None:
    """Rows in different blocks share one step (refresh and reuse groups); each decodes as alone."""
    config = _config(kv_cache="dual")
    policy = make_policy("threshold", threshold=0.15)
    together = decode(llama2, PROMPTS, policy, config)
    assert len(set(together.nfe.tolist())) > 1, "rows should progress at different speeds"
    for i, prompt in enumerate(PROMPTS):
        alone = decode(llama2, [prompt], policy, config)
        assert torch.equal(alone.tokens[0], together.tokens[i])
        assert alone.forward_tokens[0] == together.forward_tokens[i]
        assert alone.kv_refreshes[0] == together.kv_refreshes[i]


def test_full_window_is_one_block_and_caches_the_prompt(llama2: HFBackbone) -> None:
    result = decode(llama2, PROMPTS, make_policy("topk"), _config(window="full", kv_cache="prefix"))
    assert result.kv_refreshes.tolist() == [1] * len(PROMPTS)
    prompt_lens = torch.tensor([len(p) for p in PROMPTS])
    assert torch.equal(result.forward_tokens_saved, 15 * prompt_lens)


def test_replaced_rows_with_wider_prompts_keep_their_cache(llama1: HFBackbone) -> None:
    """Row surgery (vector envs): a wider fresh row widens the cache; results stay exact."""
    config = _config(kv_cache="prefix")
    decoder = Decoder(llama1, config)
    policy = make_policy("topk")
    state = decoder.start(PROMPTS[:2])
    for _ in range(5):
        state = decoder.step(state, policy.select(state))
    fresh = decoder.start([PROMPTS[3]], forward=False)
    replace_rows(state, [1], fresh, pad_token_id=llama1.pad_token_id)
    assert state.kv_cache is not None and state.kv_cache.shape[-2] == state.canvas.shape[1]
    while not state.all_done:
        state = decoder.step(state, policy.select(state))
    alone = decode(llama1, [PROMPTS[3]], policy, _config())
    assert torch.equal(state.gen_tokens[1].cpu(), alone.tokens[0])
    first = decode(llama1, [PROMPTS[0]], policy, _config())
    assert torch.equal(state.gen_tokens[0].cpu(), first.tokens[0])


def test_bad_options_fail_in_one_line(llama2: HFBackbone, fake) -> None:
    with pytest.raises(ValueError, match="kv_cache must be one of none, prefix, dual"):
        _config(kv_cache="both")
    with pytest.raises(ValueError, match="needs a block window"):
        _config(window="sliding:4", kv_cache="prefix")
    with pytest.raises(ValueError, match="kv_cache='dual' is not available"):
        Decoder(fake, dataclasses.replace(_config(), kv_cache="dual"))
    decoder = Decoder(llama2, _config(kv_cache="dual"))
    with pytest.raises(ValueError, match="needs block windows"):
        decoder.start(PROMPTS[:2], windows=["block:4", "sliding:4"])


def test_remote_code_style_models_report_no_support(llama2: HFBackbone) -> None:
    backbone = _backbone("llama", 1)
    backbone._kv_state = None
    backbone._dream_masking = True  # what Dream's own (remote) modeling code sets
    assert not backbone.supports_kv_cache
    assert "transformers-native" in backbone.kv_cache_unsupported_reason
    with pytest.raises(ValueError, match="not available: .*transformers-native"):
        Decoder(backbone, _config(kv_cache="prefix"))


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_step_matches_an_independent_fast_dllm_reference(hf_backbone, mode: str) -> None:
    """Multi-layer BERT: a cached step equals a full forward whose keys/values outside the
    recomputed span are spliced in from the block's first forward (Fast-dLLM's definition)."""
    decoder = Decoder(hf_backbone, _config(kv_cache=mode))
    state = decoder.start(["ab:", "hello world:", "x"])
    refresh_canvas = state.canvas.clone()
    state = decoder.step(state, make_policy("topk", k=2).select(state))
    assert state.kv_refreshes.tolist() == [1, 1, 1]  # the step reused the caches
    L, G = state.canvas.shape[1], state.gen_length
    lo = L - G + state.window_start
    hi = torch.full_like(lo, L) if mode == "prefix" else L - G + state.window_end
    cols = torch.arange(L)[None, :]
    cached = ((cols < lo[:, None]) | (cols >= hi[:, None]))[..., None]  # [B, L, 1]
    modules = [
        (name, module)
        for name, module in hf_backbone.model.named_modules()
        if name.endswith(("attention.self.key", "attention.self.value"))
    ]
    stored: dict[str, torch.Tensor] = {}

    def capture(name):
        return lambda mod, inp, out: stored.__setitem__(name, out.detach().clone())

    def splice(name):
        return lambda mod, inp, out: torch.where(cached, stored[name], out)

    for make, canvas in ((capture, refresh_canvas), (splice, state.canvas)):
        handles = [module.register_forward_hook(make(name)) for name, module in modules]
        try:
            logits = hf_backbone.forward(canvas, state.attention_mask).logits
        finally:
            for handle in handles:
                handle.remove()
    reference = logits[:, -G:].float().softmax(-1)
    window = state.eligible
    assert bool(window.any())
    assert torch.equal(reference.argmax(-1)[window], state.proposal[window])
    torch.testing.assert_close(
        reference.max(-1).values[window], state.confidence[window], atol=1e-5, rtol=1e-5
    )
