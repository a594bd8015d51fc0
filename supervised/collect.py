"""Trace collection: decode with a behaviour policy, record every state, label future stability.

Round 0 decodes with the reference policy itself; a position's label is 1 when its proposal at that
step equals the final token of the decode (TraceLock's future-stability label). On-policy rounds
decode with the controller mixed with the reference policy and relabel every visited state by
completing a snapshot of it with the reference policy, so the labels answer "would this proposal
survive if we continued from *here*?" - the states the deployed controller actually reaches.

One collection may mix settings: ``CollectConfig.settings`` lists decode settings (generation
lengths, windows, step budgets) and every example draws one of them, so a single controller learns
to serve them all (the engine runs rows of different settings in one batch).

Usage (embedded backbone, CPU, about a minute)::

    commit-env collect --out traces/round0 --n 768
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from commit_env.supervised.inputs import separator_token_ids
from commit_env.supervised.labels import (
    LABEL_KINDS,
    AnswerTokens,
    PermutationAnswers,
    nearest_targets,
)

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import BackboneSpec, resolve_backbone
from commit_env.decoding import (
    DEFAULT_TOP_K,
    TRAINING_SETTING,
    DecodeConfig,
    Decoder,
    DecodeSetting,
    FeatureBuilder,
    TraceState,
    completion_text,
    concat_states,
    run_to_completion,
    select_rows,
)
from commit_env.decoding.config import validate_setting
from commit_env.evaluate import score_completions
from commit_env.policies import CommitPolicy, make_policy
from commit_env.rundir import RunLock
from commit_env.tasks import Example, Task, get_task
from commit_env.traces import TraceWriter

__all__ = [
    "CollectConfig",
    "MixedPolicy",
    "collect_traces",
    "collect_batch",
    "draw_examples",
    "draw_settings",
    "setting_mixture",
    "trace_meta",
    "DEFAULT_TASKS",
]

DEFAULT_TASKS: tuple[str, ...] = ("qa", "qa:hard", "math", "math:hard", "code", "code:hard")


def setting_mixture(
    gen_lengths: Sequence[int],
    windows: Sequence[str],
    budget_fractions: Sequence[float] = (1.0, 0.5, 0.25),
) -> tuple[DecodeSetting, ...]:
    """Every valid combination of generation lengths, windows and step-budget fractions.

    Args:
        gen_lengths: Generation lengths G.
        windows: Window specs (``block:B``, ``sliding:W``, ``full``); block widths that do not
            divide a G are skipped for that G.
        budget_fractions: Step budgets as fractions of G (>= 1.0 = unlimited).

    Returns:
        The settings (deduplicated, in input order).

    Raises:
        ValueError: If no combination is valid.
    """
    out: list[DecodeSetting] = []
    for g in gen_lengths:
        for w in windows:
            try:
                validate_setting(g, w)
            except ValueError:
                continue
            for frac in budget_fractions:
                budget = None if frac >= 1.0 else max(1, int(round(g * frac)))
                s = DecodeSetting(g, w, budget)
                if s not in out:
                    out.append(s)
    if not out:
        raise ValueError(
            f"no valid setting among gen_lengths={list(gen_lengths)} windows={list(windows)}"
        )
    return tuple(out)


@dataclass(frozen=True)
class CollectConfig:
    """What to collect.

    Attributes:
        out: Trace directory (resumed if it exists with the same settings; locked while a
            collection writes it).
        backbone: Backbone spec.
        tasks: Task names (``name:difficulty``) drawn uniformly per example.
        n: Examples to decode in total.
        seed: Seed of the example draw.
        setting: The decode setting of the collection (G, window, step budget), used when
            ``settings`` is empty.
        settings: A mixture of settings; each example draws one uniformly (seeded by ``seed``).
        reference: Reference policy name (``topk`` = one token per step by confidence).
        reference_params: Its parameters.
        feature_groups: Feature groups recorded (see ``FEATURE_GROUPS``).
        hidden_features: D, hidden-state projection width (0 = none).
        top_k: K, top-k probabilities per position recorded.
        batch_size: Rows per engine batch.
        shard_traces: Traces per shard.
        device: Backbone device (None = CUDA if available).
        labels: ``final``: a proposal is stable when it equals the final token of the completed
            decode (TraceLock's future stability); ``nearest``: when it equals the valid answer
            the state points to (:mod:`commit_env.supervised.labels`; tasks that do not
            enumerate their answers keep the final-token label).
        nearest_margin: With ``nearest`` labels: None, one answer per state; m, a position is
            stable only where every answer within m agreements of the best agrees
            (:func:`~commit_env.supervised.labels.nearest_targets`).
    """

    out: str = "traces/round0"
    backbone: str | BackboneSpec = "tiny"
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n: int = 768
    seed: int = 0
    setting: DecodeSetting = TRAINING_SETTING
    settings: tuple[DecodeSetting, ...] = ()
    reference: str = "topk"
    reference_params: tuple[tuple[str, Any], ...] = ()
    feature_groups: tuple[str, ...] = ("confidence", "history", "position", "global", "hidden")
    hidden_features: int = 16
    top_k: int = DEFAULT_TOP_K
    batch_size: int = 128
    shard_traces: int = 256
    device: str | None = None
    labels: str = "final"
    nearest_margin: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("n and batch_size must be >= 1")
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"labels must be one of {list(LABEL_KINDS)}, got {self.labels!r}")
        if self.nearest_margin is not None and self.nearest_margin < 0:
            raise ValueError(f"nearest_margin must be >= 0, got {self.nearest_margin}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        for s in self.settings:
            if not isinstance(s, DecodeSetting):
                raise ValueError(f"settings must hold DecodeSetting values, got {s!r}")

    @property
    def mixture(self) -> tuple[DecodeSetting, ...]:
        """The settings examples are drawn from (``(setting,)`` without a mixture)."""
        return tuple(s.setting for s in self.settings) or (self.setting.setting,)

    def decode_config(self) -> DecodeConfig:
        """The decode configuration of this collection (canvas width = the largest G)."""
        mix = self.mixture
        if len(mix) == 1:
            return mix[0].config(hidden_features=self.hidden_features, top_k=self.top_k)
        G = max(s.gen_length for s in mix)
        return DecodeConfig(
            gen_length=G, window="full", hidden_features=self.hidden_features, top_k=self.top_k
        )

    def feature_builder(self) -> FeatureBuilder:
        """The feature builder whose columns the shards store."""
        return FeatureBuilder(
            self.feature_groups, top_k=self.top_k, hidden_dim=self.hidden_features
        )


@dataclass
class MixedPolicy(CommitPolicy):
    """Per row and step, follow ``learner`` with probability ``beta``, else ``reference``.

    Args:
        learner: The policy being trained.
        reference: The reference policy.
        beta: Probability of following the learner.
        seed: Seed of the coin flips.
    """

    name = "mixed"
    learner: Any = None
    reference: Any = None
    beta: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        self._generator = torch.Generator().manual_seed(self.seed)

    def select(self, state: TraceState) -> torch.Tensor:
        """Row-wise coin flip between the two policies' masks."""
        coin = torch.rand(state.batch_size, generator=self._generator) < self.beta
        learner = _as_mask(self.learner.select(state))
        reference = _as_mask(self.reference.select(state))
        return torch.where(coin.to(learner.device)[:, None], learner, reference)


def _as_mask(decision: Any) -> torch.Tensor:
    return decision.mask if hasattr(decision, "mask") else decision


class _Recorder:
    """Wraps a policy; before each selection, stores the visited state of every active row."""

    def __init__(self, policy: Any, builder: FeatureBuilder, keep_snapshots: bool) -> None:
        self.policy = policy
        self.builder = builder
        self.keep_snapshots = keep_snapshots
        self.steps: list[dict[str, np.ndarray]] = []
        self.snapshots: list[TraceState] = []

    def reset(self, state: TraceState) -> None:
        if hasattr(self.policy, "reset"):
            self.policy.reset(state)

    def select(self, state: TraceState) -> Any:
        active = ~state.done
        feats = self.builder.stack(state)[active]  # [b, G, F]
        self.steps.append(
            {
                "row": state.row_ids[active].cpu().numpy(),
                "nfe": state.nfe[active].cpu().numpy(),
                "budget": state.budget[active].cpu().numpy(),
                "gen_len": state.gen_len[active].cpu().numpy(),
                "window_start": state.window_start[active].cpu().numpy(),
                "window_end": state.window_end[active].cpu().numpy(),
                "window_kind": state.window_kind[active].cpu().numpy(),
                "window_width": state.window_width[active].cpu().numpy(),
                "budget_limited": state.budget_limited[active].cpu().numpy(),
                "tokens": state.gen_tokens[active].cpu().numpy().astype(np.int32),
                "proposal": state.proposal[active].cpu().numpy().astype(np.int32),
                "eligible": state.eligible[active].cpu().numpy().astype(np.uint8),
                "masked": (state.masked & state.valid)[active].cpu().numpy(),
                "features": feats.cpu().numpy().astype(np.float16),
            }
        )
        if self.keep_snapshots:
            self.snapshots.append(select_rows(state, active.nonzero().squeeze(1)))
        return self.policy.select(state)


def draw_examples(tasks: Sequence[str], n: int, seed: int) -> list[tuple[str, Example]]:
    """Draw ``n`` (task name, example) pairs; the task of each example is drawn uniformly.

    Args:
        tasks: Task names.
        n: Examples.
        seed: Seed.

    Returns:
        The pairs, identical for identical arguments (so collection can resume mid-way).
    """
    rng = np.random.default_rng(seed)
    built = {name: get_task(name) for name in tasks}
    out = []
    for _ in range(n):
        name = tasks[int(rng.integers(len(tasks)))]
        out.append((name, built[name].sample(rng)))
    return out


def draw_settings(settings: Sequence[DecodeSetting], n: int, seed: int) -> list[DecodeSetting]:
    """Draw one setting per example (identical for identical arguments, so collection resumes).

    Args:
        settings: The mixture.
        n: Examples.
        seed: Seed.

    Returns:
        ``n`` settings.
    """
    rng = np.random.default_rng([seed, 7919])
    idx = rng.integers(len(settings), size=n)
    return [settings[int(i)] for i in idx]


def collect_traces(
    cfg: CollectConfig,
    *,
    backbone: Backbone | None = None,
    behaviour: Any | None = None,
    relabel_with_reference: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode ``cfg.n`` examples, record every visited state, label it, write shards.

    Args:
        cfg: The collection settings.
        backbone: A loaded backbone (default: resolve ``cfg.backbone`` on ``cfg.device``).
        behaviour: Policy that drives the decode (default: the reference policy).
        relabel_with_reference: Label each visited state by completing a snapshot of it with the
            reference policy (on-policy rounds); otherwise by the decode's own final tokens.
        progress: Show a progress bar.

    Returns:
        Summary: traces written, step records, mean score of the examples decoded by this call
        (``None`` when it had nothing left to do), on-disk bytes per position-step.

    Raises:
        RunDirLocked: If another process is writing ``cfg.out``.
        ValueError: If ``cfg.out`` holds traces collected with other settings.
    """
    with RunLock(cfg.out):
        return _collect(cfg, backbone, behaviour, relabel_with_reference, progress)


def _collect(
    cfg: CollectConfig,
    backbone: Backbone | None,
    behaviour: Any | None,
    relabel_with_reference: bool,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from commit_env.traces import TraceDataset

    for name in cfg.tasks:
        get_task(name)  # fail on unknown names before loading a model
    backbone = backbone or resolve_backbone(cfg.backbone, device=cfg.device)
    config = cfg.decode_config()
    builder = cfg.feature_builder()
    reference = make_policy(cfg.reference, **dict(cfg.reference_params))
    meta = trace_meta(cfg, backbone, builder, reference, on_policy=behaviour is not None)
    writer = TraceWriter(cfg.out, meta, shard_traces=cfg.shard_traces)
    examples = draw_examples(cfg.tasks, cfg.n, cfg.seed)
    row_settings = draw_settings(cfg.mixture, cfg.n, cfg.seed)
    tasks = {name: get_task(name) for name in cfg.tasks}
    decoder = Decoder(backbone, config)
    answers = AnswerTokens(backbone, cfg.nearest_margin) if cfg.labels == "nearest" else None
    start = writer.examples_done
    scores: list[float] = []
    bar = tqdm(total=cfg.n, initial=start, desc="collect", unit="ex", disable=not progress)
    # Resume from the start of the batch holding the first missing example, so every example is
    # decoded in the same batch as in an uninterrupted run (identical rows), and skip the traces
    # already on disk.
    for lo in range(start - start % cfg.batch_size, cfg.n, cfg.batch_size):
        batch = examples[lo : lo + cfg.batch_size]
        records, batch_scores = collect_batch(
            decoder,
            builder,
            reference,
            tasks,
            batch,
            lo,
            behaviour,
            relabel_with_reference,
            settings=row_settings[lo : lo + len(batch)],
            answers=answers,
        )
        new = [i for i, (trace, _) in enumerate(records) if trace["example_index"] >= start]
        scores.extend(batch_scores[new].tolist())
        for i in new:
            writer.add_trace(*records[i])
        bar.update(len(new))
    writer.flush()
    bar.close()
    dataset = TraceDataset(cfg.out)
    return {
        "traces": writer.examples_done,
        "steps": len(dataset),
        "mean_score_this_run": float(np.mean(scores)) if scores else None,
        "bytes_per_position_step": dataset.bytes_per_position_step(),
        "config": dataclasses.asdict(cfg),
    }


def collect_batch(
    decoder: Decoder,
    builder: FeatureBuilder,
    reference: CommitPolicy,
    tasks: dict[str, Task],
    batch: Sequence[tuple[str, Example]],
    lo: int,
    behaviour: Any | None = None,
    relabel_with_reference: bool = False,
    *,
    settings: Sequence[DecodeSetting] | None = None,
    answers: AnswerTokens | None = None,
) -> tuple[list[tuple[dict[str, Any], list[dict[str, Any]]]], np.ndarray]:
    """Decode one batch of examples (rows ``lo ..``) and build its trace and step records.

    This is the unit of work of local and distributed collection alike: the records of a batch
    depend only on the batch, so a shard of examples ``[lo, lo + batch_size)`` decoded anywhere
    gives the same rows as the local loop.

    Args:
        decoder: The engine.
        builder: The feature builder.
        reference: The reference policy.
        tasks: Task name -> task.
        batch: The (task name, example) pairs.
        lo: Index of the batch's first example in the collection's draw.
        behaviour: Policy that drives the decode (default: ``reference``).
        relabel_with_reference: See :func:`collect_traces`.
        settings: One decode setting per row (its slice of :func:`draw_settings`); default:
            every row uses the decoder's own setting.
        answers: Answer-set tokens for nearest-answer labels (``CollectConfig.labels ==
            "nearest"``); None: final-token labels.

    Returns:
        ``([(trace record, step records)], scores)`` in example order.

    Raises:
        ValueError: If ``settings`` does not hold one setting per example.
    """
    backbone = decoder.backbone
    recorder = _Recorder(behaviour or reference, builder, relabel_with_reference)
    per_row: dict[str, Any] = {}
    if settings is not None:
        if len(settings) != len(batch):
            raise ValueError(f"settings has {len(settings)} entries for {len(batch)} examples")
        per_row = {
            "gen_lengths": [s.gen_length for s in settings],
            "windows": [s.window for s in settings],
            "budgets": [s.step_budget for s in settings],
        }
    state = decoder.start(
        [e.prompt for _, e in batch], row_ids=range(lo, lo + len(batch)), **per_row
    )
    recorder.reset(state)
    run_to_completion(decoder, state, recorder)
    final = state.gen_tokens.cpu().numpy().astype(np.int32)  # [b, G]
    scores = _score_batch(tasks, batch, completion_text(backbone, state.gen_tokens))
    targets = _relabel_targets(decoder, recorder, reference) if relabel_with_reference else None
    eos_ids = np.asarray(backbone.eos_token_ids or (-1,), dtype=np.int32)
    row_answers = None
    if answers is not None:
        lengths = state.gen_len.tolist()
        row_answers = [
            answers(name, tasks[name], example, g)
            for (name, example), g in zip(batch, lengths, strict=True)
        ]
    records = _batch_records(
        backbone,
        batch,
        lo,
        final,
        scores,
        recorder.steps,
        targets,
        eos_ids,
        row_answers,
        None if answers is None else answers.margin,
    )
    return records, scores


def _separators(backbone: Any) -> list[int]:
    """The backbone's separator ids (a Ray driver's stand-in carries them; it has no tokenizer)."""
    known = getattr(backbone, "separator_token_ids", None)
    return list(known) if known is not None else separator_token_ids(backbone.tokenizer)


def trace_meta(
    cfg: CollectConfig,
    backbone: Backbone,
    builder: FeatureBuilder,
    reference: CommitPolicy,
    *,
    on_policy: bool,
) -> dict[str, Any]:
    """The manifest metadata: backbone, feature layout (groups, names, K, D), setting, tasks."""
    return {
        "backbone": backbone.name,
        "vocab_size": backbone.vocab_size,
        "mask_token_id": backbone.mask_token_id,
        "feature_names": builder.names,
        "feature_groups": list(builder.groups),
        "feature_dim": builder.dim,
        "hidden_features": cfg.hidden_features,
        "top_k": cfg.top_k,
        "eos_token_ids": [int(i) for i in backbone.eos_token_ids],
        "separator_token_ids": list(_separators(backbone)),
        "hidden_size": int(backbone.hidden_size),
        "gen_length": max(s.gen_length for s in cfg.mixture),
        "window": cfg.mixture[0].window,
        "step_budget": cfg.mixture[0].step_budget,
        "settings": [[s.gen_length, s.window, s.step_budget] for s in cfg.mixture],
        "reference": reference.describe(),
        "tasks": list(cfg.tasks),
        "seed": cfg.seed,
        "on_policy": on_policy,
        "labels": cfg.labels,
        "nearest_margin": cfg.nearest_margin,
    }


def _score_batch(
    tasks: dict[str, Task], batch: Sequence[tuple[str, Example]], texts: Sequence[str]
) -> np.ndarray:
    """Task scores of a mixed-task batch (scored task by task, batched)."""
    scores = np.zeros(len(batch))
    for name in {n for n, _ in batch}:
        idx = [i for i, (n, _) in enumerate(batch) if n == name]
        scores[idx] = score_completions(
            tasks[name], [batch[i][1] for i in idx], [texts[i] for i in idx]
        )
    return scores


def _relabel_targets(
    decoder: Decoder, recorder: _Recorder, reference: CommitPolicy
) -> list[np.ndarray]:
    """Complete every recorded snapshot with the reference policy; return its final tokens."""
    targets = []
    for snap in recorder.snapshots:
        snap.done = torch.zeros_like(snap.done)  # snapshots only hold active rows
        snapshot = concat_states([snap])
        run_to_completion(decoder, snapshot, reference)
        targets.append(snapshot.gen_tokens.cpu().numpy().astype(np.int32))
    return targets


def _batch_records(
    backbone: Backbone,
    batch: Sequence[tuple[str, Example]],
    lo: int,
    final: np.ndarray,
    scores: np.ndarray,
    steps: list[dict[str, np.ndarray]],
    targets: list[np.ndarray] | None,
    eos_ids: np.ndarray,
    row_answers: list[np.ndarray | PermutationAnswers | None] | None = None,
    margin: int | None = None,
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    per_trace: dict[int, list[dict[str, Any]]] = {lo + i: [] for i in range(len(batch))}
    for s, step in enumerate(steps):
        target = targets[s] if targets is not None else final[step["row"] - lo]  # [b, G]
        if row_answers is not None:
            rows = (step["row"] - lo).tolist()
            target, _ = nearest_targets(
                step["tokens"],
                step["proposal"],
                step["masked"],
                [row_answers[i] for i in rows],
                target,
                margin,
            )
        stable = step["proposal"] == target
        label = np.where(step["masked"], stable.astype(np.int8), np.int8(-1)).astype(np.int8)
        eos_label = np.isin(target, eos_ids).astype(np.int8)  # [b, G] Learn2PD's EOS target
        for j, row in enumerate(step["row"].tolist()):
            per_trace[row].append(
                {
                    "trace_id": row,
                    "nfe": int(step["nfe"][j]),
                    "budget": int(step["budget"][j]),
                    "gen_len": int(step["gen_len"][j]),
                    "window_start": int(step["window_start"][j]),
                    "window_end": int(step["window_end"][j]),
                    "window_kind": int(step["window_kind"][j]),
                    "window_width": int(step["window_width"][j]),
                    "budget_limited": bool(step["budget_limited"][j]),
                    "eos_label": eos_label[j].tobytes(),
                    "tokens": step["tokens"][j].tobytes(),
                    "proposal": step["proposal"][j].tobytes(),
                    "eligible": step["eligible"][j].tobytes(),
                    "label": label[j].tobytes(),
                    "features": step["features"][j].tobytes(),
                }
            )
    out = []
    for i, (_, example) in enumerate(batch):
        prompt = np.asarray(backbone.encode([example.prompt])[0], dtype=np.int32)
        trace = {
            "trace_id": lo + i,
            "prompt_ids": prompt.tobytes(),
            "final_tokens": final[i].tobytes(),
            "score": float(scores[i]),
            "example_index": lo + i,
        }
        out.append((trace, per_trace[lo + i]))
    return out
