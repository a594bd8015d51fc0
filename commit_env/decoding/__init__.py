"""The batched decode engine, trace state, features and accounting.

Dimension glossary (used in every docstring and shape comment):
    B   rows (slots) in a batch
    P   prompt width (prompts are left-padded to P)
    G   generation length (masked positions after the prompt)
    L   canvas length, P + G
    V   vocabulary size
    K   top-k probabilities kept per position
    H   KL history length
    D   hidden-feature projection width
    F   stacked feature columns
"""

from commit_env.decoding.config import (
    DEFAULT_TOP_K,
    TRAINING_SETTING,
    DecodeConfig,
    DecodeSetting,
    parse_window,
    validate_setting,
)
from commit_env.decoding.engine import Decoder, window_bounds, window_eligible
from commit_env.decoding.features import FEATURE_GROUPS, FEATURES, FeatureBuilder, FeatureSpec
from commit_env.decoding.run import DecodeResult, completion_text, decode, run_to_completion
from commit_env.decoding.snapshot import concat_states, select_rows
from commit_env.decoding.state import CommitDecision, DraftDecision, TraceState

__all__ = [
    "DEFAULT_TOP_K",
    "FEATURES",
    "TRAINING_SETTING",
    "FEATURE_GROUPS",
    "CommitDecision",
    "DecodeConfig",
    "DecodeResult",
    "DecodeSetting",
    "DraftDecision",
    "Decoder",
    "FeatureBuilder",
    "FeatureSpec",
    "TraceState",
    "completion_text",
    "decode",
    "parse_window",
    "run_to_completion",
    "validate_setting",
    "window_bounds",
    "window_eligible",
    "select_rows",
    "concat_states",
]
