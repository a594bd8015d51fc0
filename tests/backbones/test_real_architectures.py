"""The ``dream`` and ``llada`` adapters on the transformers architectures those models are built on.

Dream and LLaDA ship their modeling code as remote code, which cannot be fetched here. Their
stacks are close to architectures transformers ships: Dream is Qwen2 with full attention and
shifted logits (its ``diffusion_generate`` passes a 4-D ``[B, 1, L, L]`` boolean mask, position ids
``cumsum(mask) - 1`` and shifts logit ``i - 1`` to token ``i``); LLaDA is a LLaMA-style stack
(RMSNorm, SwiGLU, RoPE) without the causal mask, with aligned logits. These tests build tiny random
``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` checkpoints, load them with ``kind="dream"`` /
``kind="llada"`` and compare the adapter against a reference forward written the way the remote
code drives its model. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig, decode
from commit_env.policies import make_policy

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "red", "blue", "ran", "1", "2", "3", "+"]
SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
PAD, UNK, MASK, EOS = (VOCAB[t] for t in SPECIALS)
ROWS = [[4, 5, 6, 7, 8, MASK, MASK, MASK], [9, 10, MASK, MASK], [11, MASK, 12, MASK, MASK]]


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
        mask_token="[MASK]",
    )  # fmt: skip


def _checkpoint(arch: str, impl: str, path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[arch]
    torch.manual_seed(3)
    config = config_cls(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Dream-7B / Qwen2.5
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        tie_word_embeddings=False,
        attn_implementation=impl,
    )
    model_cls(config).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def impl(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory, impl) -> Path:
    return _checkpoint("qwen2", impl, tmp_path_factory.mktemp(f"qwen2_{impl}"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, impl) -> Path:
    return _checkpoint("llama", impl, tmp_path_factory.mktemp(f"llama_{impl}"))


def _raw_model(path: Path, impl: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=impl
    ).eval()


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    canvas = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        canvas[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return canvas, mask


def _dream_reference(model, canvas: torch.Tensor, mask: torch.Tensor, impl: str) -> torch.Tensor:
    """Dream's ``diffusion_generate`` forward: 4-D pair mask, cumsum positions, shifted logits."""
    tok_idx = mask.long().cumsum(-1) - 1
    tok_idx = tok_idx.masked_fill(mask == 0, 1)
    pair = torch.logical_and(mask.bool()[:, None, None, :], mask.bool()[:, None, :, None])
    if impl == "eager":  # the eager kernel adds the mask to the scores
        pair = torch.zeros(pair.shape).masked_fill(~pair, torch.finfo(torch.float32).min)
    with torch.no_grad():
        logits = model(input_ids=canvas, attention_mask=pair, position_ids=tok_idx).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _llada_reference(model, row: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward on an unpadded row: no causal mask, positions 0..L-1, aligned logits."""
    length = row.shape[1]
    full = torch.ones((1, 1, length, length), dtype=torch.bool)
    with torch.no_grad():
        return model(input_ids=row, attention_mask=full).logits


def _later_token_changes_earlier_logits(backbone) -> bool:
    row = torch.tensor([ROWS[0]])
    other = row.clone()
    other[0, -1] = 13  # change only the last token
    a = backbone.forward(row, torch.ones_like(row)).logits
    b = backbone.forward(other, torch.ones_like(other)).logits
    # Aligned logit 1 of a Dream model is raw logit 0: it sees the last token only if bidirectional.
    return not torch.allclose(a[0, 1], b[0, 1])


def test_dream_on_qwen2_matches_the_remote_code_forward(qwen2_dir, impl):
    backbone = load_backbone(
        f"hf:{qwen2_dir}",
        kind="dream",
        device="cpu",
        dtype="float32",
        cache=False,
        attn_implementation=impl,
    )
    assert type(backbone.model).__name__ == "Qwen2ForCausalLM"
    assert backbone.model.config._attn_implementation == impl
    assert backbone.mask_token_id == MASK
    assert _later_token_changes_earlier_logits(backbone)  # full attention, not causal
    reference_model = _raw_model(qwen2_dir, impl)
    canvas, mask = _left_pad(ROWS)
    ours = backbone.forward(canvas, mask).logits
    theirs = _dream_reference(reference_model, canvas, mask, impl)
    real = mask.bool()
    # Dream's own aligned row 0 of a left-padded row reuses a padding position; compare from the
    # second real token on (the first real token is a prompt token and is never proposed).
    first = mask.argmax(-1)
    for b in range(len(ROWS)):
        cols = slice(int(first[b]) + 1, canvas.shape[1])
        torch.testing.assert_close(ours[b, cols], theirs[b, cols], atol=1e-5, rtol=1e-5)
    assert real.sum() > 0
    # Each row alone gives the same logits as inside the padded batch.
    for b, row in enumerate(ROWS):
        alone = torch.tensor([row])
        solo = backbone.forward(alone, torch.ones_like(alone)).logits
        torch.testing.assert_close(ours[b, -len(row) + 1 :], solo[0, 1:], atol=1e-5, rtol=1e-5)


def test_dream_config_flag_route_agrees(qwen2_dir, impl):
    """transformers 5's ``config.is_causal=False`` gives the same full attention as a 4-D mask."""
    backbone = load_backbone(
        f"hf:{qwen2_dir}",
        kind="dream",
        device="cpu",
        dtype="float32",
        cache=False,
        attn_implementation=impl,
    )
    model = _raw_model(qwen2_dir, impl)
    model.config.is_causal = False
    row = torch.tensor([ROWS[0]])
    with torch.no_grad():
        raw = model(input_ids=row).logits
    shifted = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    torch.testing.assert_close(backbone.forward(row, torch.ones_like(row)).logits, shifted)


def test_llada_on_llama_matches_the_remote_code_forward(llama_dir, impl):
    backbone = load_backbone(
        f"hf:{llama_dir}",
        kind="llada",
        device="cpu",
        dtype="float32",
        cache=False,
        attn_implementation=impl,
    )
    assert type(backbone.model).__name__ == "LlamaForCausalLM"
    assert _later_token_changes_earlier_logits(backbone)
    reference_model = _raw_model(llama_dir, impl)
    canvas, mask = _left_pad(ROWS)
    batched = backbone.forward(canvas, mask, hidden_layers=[-1])
    assert batched.hidden is not None and batched.hidden.shape == (*canvas.shape, 32)
    for b, row in enumerate(ROWS):
        alone = torch.tensor([row])
        theirs = _llada_reference(reference_model, alone)
        torch.testing.assert_close(
            backbone.forward(alone, torch.ones_like(alone)).logits, theirs, atol=1e-5, rtol=1e-5
        )
        # Padding invariance: position ids restart at each row's first real token.
        torch.testing.assert_close(batched.logits[b, -len(row) :], theirs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["dream", "llada"])
def test_decode_end_to_end(qwen2_dir, llama_dir, kind, impl):
    if impl != "sdpa":
        pytest.skip("one attention implementation is enough for the end-to-end decode")
    path = qwen2_dir if kind == "dream" else llama_dir
    backbone = load_backbone(f"hf:{path}", kind=kind, device="cpu", dtype="float32", cache=False)
    config = DecodeConfig(gen_length=6, window="block:3", eos_stop=False)
    prompts = [[4, 5, 6], [7]]
    result = decode(backbone, prompts, make_policy("eb", gamma=1.0), config)
    tokens = torch.as_tensor(result.tokens)
    assert tokens.shape == (2, 6) and (tokens != MASK).all()
    again = decode(backbone, prompts, make_policy("eb", gamma=1.0), config)
    assert torch.equal(tokens, torch.as_tensor(again.tokens))
