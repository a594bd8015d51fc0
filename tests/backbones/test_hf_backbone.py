"""Tests of HFBackbone and load_backbone on tiny randomly initialised local checkpoints.

Nothing is downloaded: every checkpoint and tokenizer is built in a temporary directory and the
Hub is switched to offline mode.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from commit_env.backbones import (
    BACKBONES,
    TINY_BACKBONE_DIR,
    Backbone,
    BackboneOutput,
    HFBackbone,
    list_backbones,
    load_backbone,
)
from commit_env.errors import BackboneUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "red", "blue", "ran", "1", "2", "3", "+"]
SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
PAD, UNK, MASK, EOS = (VOCAB[t] for t in SPECIALS)


@pytest.fixture(scope="session", autouse=True)
def _offline():
    """Keep the Hub offline for the whole session (set before transformers reads it, too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        if "huggingface_hub" in sys.modules:
            import huggingface_hub.constants

            mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def _tokenizer(*, with_mask: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "eos_token": "[EOS]"}
    if with_mask:
        specials["mask_token"] = "[MASK]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def bert_dir(_offline, tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    return _save(BertForMaskedLM(config), _tokenizer(), tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def roberta_dir(_offline, tmp_path_factory) -> Path:
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(1)
    # RoBERTa's first real position is pad_token_id + 1 (= 1 here): 65 rows, 64 usable.
    config = RobertaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=65,
        pad_token_id=PAD,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    return _save(RobertaForMaskedLM(config), _tokenizer(), tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="session")
def causal_dir(_offline, tmp_path_factory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(2)
    config = Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        tie_word_embeddings=False,
    )
    return _save(Qwen2ForCausalLM(config), _tokenizer(), tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="session")
def nomask_dir(_offline, tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=PAD,
    )
    path = tmp_path_factory.mktemp("nomask")
    return _save(BertForMaskedLM(config), _tokenizer(with_mask=False), path)


REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "tinyllada"

    def __init__(self, vocab_size=32, d_model=16, max_sequence_length=48, mask_token_id=None,
                 **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.max_sequence_length = max_sequence_length
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)
"""

REMOTE_MODEL = """
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinyllada import TinyLLaDAConfig


class TinyLLaDAModel(PreTrainedModel):
    config_class = TinyLLaDAConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.d_model)
        self.mix = torch.nn.Linear(config.d_model, config.d_model)
        self.head = torch.nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def _init_weights(self, module):
        pass

    # Deliberately no position_ids parameter, like LLaDA's own forward.
    def forward(self, input_ids, attention_mask=None, output_hidden_states=None, **kwargs):
        h0 = self.embed(input_ids)
        weights = attention_mask[..., None].to(h0.dtype)
        pooled = (h0 * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        h1 = torch.tanh(self.mix(h0 + pooled))
        return MaskedLMOutput(
            logits=self.head(h1), hidden_states=(h0, h1) if output_hidden_states else None
        )
"""


@pytest.fixture(scope="session")
def remote_dir(_offline, tmp_path_factory) -> Path:
    import importlib

    path = tmp_path_factory.mktemp("remote")
    (path / "configuration_tinyllada.py").write_text(textwrap.dedent(REMOTE_CONFIG))
    (path / "modeling_tinyllada.py").write_text(textwrap.dedent(REMOTE_MODEL))
    # Import the two files as a throwaway package to build and save the weights.
    (path / "__init__.py").write_text("")
    sys.path.insert(0, str(path.parent))
    try:
        modeling = importlib.import_module(f"{path.name}.modeling_tinyllada")
        configuration = importlib.import_module(f"{path.name}.configuration_tinyllada")
    finally:
        sys.path.remove(str(path.parent))
    torch.manual_seed(3)
    config = configuration.TinyLLaDAConfig(vocab_size=len(VOCAB), mask_token_id=MASK)
    model = modeling.TinyLLaDAModel(config)
    model.save_pretrained(path)
    (path / "__init__.py").unlink()
    config_json = json.loads((path / "config.json").read_text())
    config_json["auto_map"] = {
        "AutoConfig": "configuration_tinyllada.TinyLLaDAConfig",
        "AutoModel": "modeling_tinyllada.TinyLLaDAModel",
    }
    (path / "config.json").write_text(json.dumps(config_json))
    # The tokenizer has no mask token: LLaDA-style checkpoints record it in the config.
    _tokenizer(with_mask=False).save_pretrained(path)
    return path


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    canvas = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        canvas[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return canvas, mask


ROWS = [
    [VOCAB["the"], VOCAB["cat"], MASK, MASK, MASK],
    [VOCAB["a"], VOCAB["red"], VOCAB["dog"], VOCAB["ran"], VOCAB["on"], MASK, MASK, MASK],
    [VOCAB["1"], MASK, MASK, MASK],
]


def _assert_padding_invariant(backbone: Backbone) -> None:
    canvas, mask = _left_pad(ROWS)
    batched = backbone.forward(canvas, mask).logits.float()
    for i, row in enumerate(ROWS):
        alone = torch.tensor([row])
        solo = backbone.forward(alone, torch.ones_like(alone)).logits.float()
        torch.testing.assert_close(batched[i, -len(row) :], solo[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["bert_dir", "roberta_dir"])
def test_masked_lm_architectures(fixture, request):
    path = request.getfixturevalue(fixture)
    backbone = load_backbone(f"hf:{path}", device="cpu", dtype="float32", cache=False)
    assert isinstance(backbone, Backbone)
    assert backbone.name == f"hf:{path}"
    assert backbone.kind == "masked-lm"
    assert (backbone.mask_token_id, backbone.pad_token_id) == (MASK, PAD)
    assert EOS in backbone.eos_token_ids
    assert backbone.vocab_size == len(VOCAB)
    assert backbone.hidden_size == 32
    assert backbone.max_length == 64
    assert backbone.dtype == torch.float32 and backbone.device == torch.device("cpu")
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())

    canvas, mask = _left_pad(ROWS)
    out = backbone.forward(canvas, mask)
    assert isinstance(out, BackboneOutput) and out.hidden is None
    assert out.logits.shape == (3, 8, len(VOCAB))
    _assert_padding_invariant(backbone)

    # An unpadded row must match the model's own default positions (RoBERTa's start at pad + 1).
    row = torch.tensor([ROWS[1]])
    with torch.no_grad():
        raw = backbone.model(input_ids=row).logits
    torch.testing.assert_close(backbone.forward(row, torch.ones_like(row)).logits, raw)


def test_hidden_layers(bert_dir):
    backbone = load_backbone(f"hf:{bert_dir}", device="cpu", dtype="float32", cache=False)
    canvas, mask = _left_pad(ROWS)
    out = backbone.forward(canvas, mask, hidden_layers=[-1, 0, 1])
    assert out.hidden is not None
    assert out.hidden.shape == (3, 8, 32 * 3)
    last = backbone.forward(canvas, mask, hidden_layers=[-1]).hidden
    torch.testing.assert_close(out.hidden[..., :32], last)
    with pytest.raises(ValueError, match="out of range"):
        backbone.forward(canvas, mask, hidden_layers=[7])


def test_validation_happens_before_forward(bert_dir, monkeypatch):
    backbone = load_backbone(f"hf:{bert_dir}", device="cpu", dtype="float32", cache=False)

    def explode(*args, **kwargs):
        raise AssertionError("the model must not run on invalid input")

    monkeypatch.setattr(backbone.model, "forward", explode)
    too_long = torch.full((1, backbone.max_length + 1), MASK)
    with pytest.raises(ValueError, match="max_length"):
        backbone.forward(too_long, torch.ones_like(too_long))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        backbone.forward(torch.tensor([MASK, MASK]), torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        backbone.forward(torch.full((2, 4), MASK), torch.ones((2, 5), dtype=torch.long))


def test_encode_decode(bert_dir):
    backbone = load_backbone(f"hf:{bert_dir}", device="cpu", dtype="float32", cache=False)
    ids = backbone.encode(["the cat sat", "a dog"])
    assert ids == [[VOCAB["the"], VOCAB["cat"], VOCAB["sat"]], [VOCAB["a"], VOCAB["dog"]]]
    assert backbone.decode([VOCAB["the"], MASK, VOCAB["cat"], EOS, PAD]) == "the cat"
    assert backbone.decode(torch.tensor([VOCAB["red"]])) == "red"
    with pytest.raises(TypeError):
        backbone.encode("the cat")


def test_dream_shift(causal_dir):
    from transformers import AutoModelForCausalLM

    backbone = load_backbone(
        f"hf:{causal_dir}", kind="dream", device="cpu", dtype="float32", cache=False
    )
    assert backbone.kind == "dream"
    raw_model = AutoModelForCausalLM.from_pretrained(causal_dir, dtype=torch.float32).eval()
    row = torch.tensor([ROWS[1]])
    out = backbone.forward(row, torch.ones_like(row), hidden_layers=[-1])
    full = torch.ones((1, 1, row.shape[1], row.shape[1]), dtype=torch.bool)  # Dream: no causal mask
    with torch.no_grad():
        raw = raw_model(input_ids=row, attention_mask=full, output_hidden_states=True)
    aligned = out.logits
    assert aligned.shape == (1, len(ROWS[1]), len(VOCAB))
    torch.testing.assert_close(aligned[:, 0], raw.logits[:, 0])
    torch.testing.assert_close(aligned[:, 1:], raw.logits[:, :-1])
    # Hidden states move with the logits they produced.
    torch.testing.assert_close(out.hidden[:, 1:], raw.hidden_states[-1][:, :-1])


class _FakeDream(torch.nn.Module):
    """Mimics Dream's forward contract: attention_mask is "full" or a 4-D [B, 1, L, L] mask."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            model_type="Dream", hidden_size=4, max_position_embeddings=16, mask_token_id=MASK
        )
        self.embed = torch.nn.Embedding(len(VOCAB), 4)
        self.head = torch.nn.Linear(4, len(VOCAB))
        self.masks: list = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, return_dict=None):
        self.masks.append(attention_mask)
        assert isinstance(attention_mask, str) or attention_mask.dim() == 4
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


def test_dream_attention_mask_forms():
    model = _FakeDream()
    backbone = HFBackbone(model, _tokenizer(), name="fake-dream", kind="dream")
    canvas, mask = _left_pad(ROWS)
    out = backbone.forward(canvas, mask)
    assert out.logits.shape == (3, 8, len(VOCAB))
    four_d = model.masks[-1]
    assert four_d.shape == (3, 1, 8, 8) and four_d.dtype == torch.bool
    # Keys are masked on padding only; every query row (padding included) sees the real tokens.
    assert torch.equal(four_d[:, 0, 0, :], mask.bool())
    assert torch.equal(four_d[:, 0, :, :], mask.bool()[:, None, :].expand(-1, 8, -1))
    backbone.forward(torch.tensor([ROWS[0]]), torch.ones((1, 5), dtype=torch.long))
    assert model.masks[-1] == "full"


def test_remote_code_llada(remote_dir):
    with pytest.raises(BackboneUnavailable, match="trust_remote_code"):
        load_backbone(f"hf:{remote_dir}", device="cpu", dtype="float32", cache=False)
    backbone = load_backbone(
        f"hf:{remote_dir}", device="cpu", dtype="float32", trust_remote_code=True, cache=False
    )
    assert backbone.kind == "llada"  # auto-detected from model_type "tinyllada"
    assert backbone.mask_token_id == MASK  # from the config: the tokenizer has none
    assert backbone.hidden_size == 16
    assert backbone.max_length == 48
    canvas, mask = _left_pad(ROWS)
    out = backbone.forward(canvas, mask, hidden_layers=[-1, -2])
    assert out.logits.shape == (3, 8, len(VOCAB))
    assert out.hidden.shape == (3, 8, 32)
    _assert_padding_invariant(backbone)


def test_missing_mask_token(nomask_dir):
    with pytest.raises(BackboneUnavailable, match="mask") as info:
        load_backbone(f"hf:{nomask_dir}", device="cpu", cache=False)
    assert "mask_token_id=" in str(info.value)
    backbone = load_backbone(f"hf:{nomask_dir}", device="cpu", mask_token_id=UNK, cache=False)
    assert backbone.mask_token_id == UNK


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(ValueError, match="unknown backbone spec") as info:
        load_backbone("no-such-model")
    assert isinstance(info.value, BackboneUnavailable)
    for name in sorted(BACKBONES):
        assert repr(name) in str(info.value)
    assert "hf:<name-or-path>" in str(info.value)
    assert list_backbones() == sorted(BACKBONES)
    assert "tiny" in list_backbones()


def test_tiny_spec():
    if (TINY_BACKBONE_DIR / "config.json").is_file():
        backbone = load_backbone("tiny", device="cpu", cache=False)
        assert backbone.name == "tiny"
        assert backbone.kind == "masked-lm"
    else:
        with pytest.raises(BackboneUnavailable, match="train-backbone"):
            load_backbone("tiny", device="cpu", cache=False)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("fp32", torch.float32), ("bf16", torch.bfloat16), (torch.float16, torch.float16)],
)
def test_dtype_parsing(dtype, expected):
    from commit_env.backbones.hf import resolve_dtype

    assert resolve_dtype(dtype, torch.device("cpu")) is expected


def test_bad_dtype_and_kind(bert_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_backbone(f"hf:{bert_dir}", device="cpu", dtype="int8", cache=False)
    with pytest.raises(ValueError, match="kind"):
        load_backbone(f"hf:{bert_dir}", device="cpu", kind="gpt", cache=False)


def test_cache_shares_and_releases(bert_dir):
    from commit_env import backbones

    spec = f"hf:{bert_dir}"
    first = load_backbone(spec, device="cpu", dtype="float32")
    assert load_backbone(spec, device="cpu", dtype=torch.float32) is first
    assert load_backbone(spec, device="cpu", dtype="float32", cache=False) is not first
    cached_before = len(backbones._CACHE)
    first_ref = weakref.ref(first)
    del first
    gc.collect()
    assert first_ref() is None  # the cache did not keep the model alive
    assert len(backbones._CACHE) == cached_before - 1
    second = load_backbone(spec, device="cpu", dtype="float32")
    assert isinstance(second, Backbone)
    assert load_backbone(spec, device="cpu", dtype="float32") is second


def test_import_does_not_load_transformers():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    code = "import commit_env.backbones, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)
