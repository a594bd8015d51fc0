r"""lm-evaluation-harness adapter: run generation tasks with any commitment policy.

Importing this module registers the ``commit-env`` model with lm-evaluation-harness (install the
optional extra: ``pip install 'commit-env[lm-eval]'``). lm-eval 0.4 discovers models only among
its own modules, so run it through this module, which registers the model first and then hands
every argument to lm-eval's own command line::

    python -m commit_env.evaluation.harness --model commit-env \
        --model_args backbone=hf:GSAI-ML/LLaDA-8B-Instruct,kind=llada,trust_remote_code=True,\
policy=eb,window=block:32 --tasks gsm8k --batch_size 16

or from Python, :func:`run_harness` (any :class:`~commit_env.policies.CommitPolicy` object, learned
ones included) or ``lm_eval.simple_evaluate(model=CommitEnvLM(...), ...)``.

Every ``generate_until`` request is decoded by the library's one batched decode engine
(:func:`commit_env.decoding.decode`); no second decode loop exists here. The engine's accounting
(NFE, tokens per forward, forward tokens, forced commits, wall time) is summed over the run and
reported next to the harness metrics: in ``results["config"]["commit_env"]`` (and so in lm-eval's
output JSON), in the log, and printed by the command line above.

Log-likelihood requests: a masked diffusion model has no exact sequence likelihood.
``loglikelihood`` (multiple-choice tasks) is available as an opt-in *approximation*, the
Monte-Carlo estimate of the masked-diffusion ELBO that LLaDA reports (its Eq. 6): with the
continuation's L tokens, draw ``l`` uniformly from 1..L, mask ``l`` random continuation positions,
and score ``(L / l) * sum of log p(token)`` over the masked ones in one forward; the mean over
``loglikelihood_samples`` draws (seeded) is a lower bound in expectation, noisy for few samples.
``is_greedy`` is a one-step check: every continuation token is the argmax when all of them are
masked at once. Without ``loglikelihood_samples`` (default 0) the request raises
:class:`NotImplementedError`, as it does for the diffusion-gemma kind (uniform noise, no mask
token, so this estimator does not apply) and always for ``loglikelihood_rolling`` (perplexity).
These scores come from backbone forwards, not from decoding, and do not enter the NFE accounting.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "commit_env.evaluation.harness needs lm-evaluation-harness; install it with "
        "`pip install 'commit-env[lm-eval]'` (or `pip install lm-eval`)"
    ) from exc

from commit_env.backbones import Backbone, load_backbone
from commit_env.decoding import DecodeConfig, decode, parse_window
from commit_env.decoding.run import SupportsSelect
from commit_env.policies import make_policy

__all__ = ["MODEL_NAME", "CommitEnvLM", "main", "parse_policy_args", "run_harness"]

MODEL_NAME = "commit-env"
_LOG = logging.getLogger(__name__)
# Accounting of the most recent CommitEnvLM that generated anything (printed by main()).
_LAST_ACCOUNTING: dict[str, Any] | None = None


def parse_policy_args(spec: str | None) -> dict[str, str]:
    """Parse ``"gamma=0.5;order=entropy"`` (``;`` or whitespace separated) into a dict.

    Args:
        spec: The policy parameters, or ``None``/empty for none.

    Returns:
        Parameter name -> string value (:func:`~commit_env.policies.make_policy` converts types).

    Raises:
        ValueError: If an item is not ``name=value``.
    """
    if not spec:
        return {}
    out: dict[str, str] = {}
    for item in str(spec).replace(";", " ").split():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"bad policy_args item {item!r}; expected name=value")
        out[name] = value
    return out


@register_model(MODEL_NAME, "commit_env")
class CommitEnvLM(LM):
    """An lm-eval ``LM`` that generates with a frozen diffusion backbone and a commitment policy.

    Model arguments (``--model_args key=value,...``) are this constructor's parameters.

    Args:
        backbone: Backbone spec (``"tiny"``, ``"hf:<name-or-path>"``) or a loaded backbone.
        policy: Registered policy name (``"eb"``, ``"topk"``, ``"threshold"`` ...) or any object
            with ``select(state)``.
        policy_args: Parameters of a named policy, ``"gamma=0.5;order=entropy"``.
        window: Decode window (``"full"``, ``"block:B"``, ``"sliding:W"``). With blocks, a
            generation length that is not a multiple of B is rounded up to one (the completion
            is cut at the task's stop strings anyway).
        max_gen_toks: Generation length G when a task does not set ``max_gen_toks``.
        gen_length: Fixed G for every request (overrides the tasks' ``max_gen_toks``).
        step_budget: Max forward passes per row (``None``: unlimited).
        temperature: Proposal temperature (0 = greedy); a task's ``do_sample=True`` with a
            ``temperature`` overrides it.
        seed: Seed of the proposal sampler.
        kind: Backbone kind for ``hf:`` specs (``"auto"``, ``"llada"``, ``"dream"`` ...).
        dtype: Backbone dtype (``"bf16"``, ``"float32"`` ...); default per device.
        device: Backbone device; default CUDA when available (a CUDA device that is not
            available falls back to the CPU with a warning: lm-eval's CLI defaults to cuda:0).
        batch_size: Rows per engine batch (``"auto"`` = 16).
        max_batch_size: Accepted for lm-eval compatibility; unused.
        trust_remote_code: Allow remote modeling code (LLaDA, Dream checkpoints).
        eos_stop: Stop a row once an EOS is committed and everything before it is.
        loglikelihood_samples: Monte-Carlo draws per ``loglikelihood`` request (0: such requests
            raise ``NotImplementedError``; see the module docstring for the estimator).

    Raises:
        ValueError: On an unknown policy / window or a non-positive length or batch size.
    """

    def __init__(
        self,
        backbone: str | Backbone = "tiny",
        policy: str | SupportsSelect = "eb",
        policy_args: str | None = None,
        window: str = "full",
        max_gen_toks: int = 64,
        gen_length: int | None = None,
        step_budget: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        kind: str = "auto",
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = 16,
        max_batch_size: int | None = None,
        trust_remote_code: bool = False,
        eos_stop: bool = True,
        loglikelihood_samples: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(policy, str):
            self.policy_name = policy
            self.policy: SupportsSelect = make_policy(policy, **parse_policy_args(policy_args))
        else:
            if policy_args:
                raise ValueError("policy_args only applies to a policy given by name")
            self.policy_name = type(policy).__name__
            self.policy = policy
        for name, value in (("max_gen_toks", max_gen_toks), ("gen_length", gen_length)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 16
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.window = str(window)
        self._window_kind, self._window_width = parse_window(self.window)  # validates it now
        self.max_gen_toks = int(max_gen_toks)
        self.gen_length = None if gen_length is None else int(gen_length)
        self.step_budget = None if step_budget is None else int(step_budget)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.eos_stop = bool(eos_stop)
        self.batch_size = int(batch_size)
        if int(loglikelihood_samples) < 0:
            raise ValueError(f"loglikelihood_samples must be >= 0, got {loglikelihood_samples}")
        self.loglikelihood_samples = int(loglikelihood_samples)
        self.max_batch_size = max_batch_size
        if device is not None and str(device).startswith("cuda") and not _cuda_available():
            # lm-eval's command line passes device="cuda:0" unless told otherwise.
            _LOG.warning("device %r is not available; the backbone runs on the CPU", device)
            device = "cpu"
        if isinstance(backbone, str):
            self.backbone_name = backbone
            self.backbone: Backbone = load_backbone(
                backbone,
                kind=kind,
                device=device,
                dtype=dtype,
                trust_remote_code=bool(trust_remote_code),
            )
        else:
            self.backbone = backbone
            self.backbone_name = getattr(backbone, "name", type(backbone).__name__)
        self._totals = {
            "requests": 0,
            "nfe": 0,
            "generated_positions": 0,
            "forward_tokens": 0,
            "forced_commits": 0,
            "wall_time_s": 0.0,
        }

    # ------------------------------------------------------------------ lm-eval properties

    @property
    def tokenizer(self) -> Any:
        """The backbone's transformers tokenizer."""
        return self.backbone.tokenizer

    @property
    def tokenizer_name(self) -> str:
        """Name used by lm-eval's request cache."""
        return str(getattr(self.tokenizer, "name_or_path", self.backbone_name)).replace("/", "__")

    @property
    def max_length(self) -> int:
        """Longest canvas (prompt + generation) the backbone accepts."""
        return int(self.backbone.max_length)

    @property
    def eot_token_id(self) -> int | None:
        """First end-of-text id of the backbone."""
        return self.backbone.eos_token_ids[0] if self.backbone.eos_token_ids else None

    # ------------------------------------------------------------------ requests

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """Monte-Carlo ELBO of each continuation (opt-in approximation; see the module docstring).

        Args:
            requests: lm-eval ``Instance`` objects whose ``args`` are ``(context, continuation)``.

        Returns:
            ``(estimated log-likelihood, is_greedy)`` per request.

        Raises:
            NotImplementedError: If ``loglikelihood_samples`` is 0 or the backbone has no mask
                token semantics (diffusion-gemma).
            ValueError: If a continuation is empty or context + continuation do not fit.
        """
        if self.loglikelihood_samples < 1:
            raise NotImplementedError(
                f"the {MODEL_NAME} model answers loglikelihood requests ({len(requests)} here, "
                "from multiple-choice tasks) only with the Monte-Carlo ELBO approximation; "
                "enable it with loglikelihood_samples=N in --model_args, or pick generate_until "
                "tasks (e.g. gsm8k)"
            )
        if getattr(self.backbone, "kind", None) == "diffusion-gemma":
            raise NotImplementedError(
                "loglikelihood is not available for the diffusion-gemma kind: it diffuses with "
                "uniform noise, not masks, so the masked-diffusion ELBO does not apply"
            )
        import torch  # noqa: PLC0415

        generator = torch.Generator().manual_seed(self.seed)
        out: list[tuple[float, bool]] = []
        for request in requests:
            context, continuation = request.args
            result = self._elbo(str(context), str(continuation), generator)
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return out

    def _elbo(self, context: str, continuation: str, generator: Any) -> tuple[float, bool]:
        import torch  # noqa: PLC0415

        target = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not target:
            raise ValueError(f"continuation {continuation!r} is empty after tokenization")
        L = len(target)
        room = self.max_length - L
        if room < 0:
            raise ValueError(
                f"a continuation of {L} tokens does not fit backbone {self.backbone_name!r} "
                f"(max_length {self.max_length})"
            )
        prefix = list(self.backbone.encode([context])[0]) if context else []
        prefix = prefix[len(prefix) - room :] if len(prefix) > room else prefix
        device, mask_id, P = self.backbone.device, self.backbone.mask_token_id, len(prefix)
        row = torch.tensor(prefix + target, dtype=torch.long)
        goal = torch.tensor(target, dtype=torch.long)

        def log_probs(masks: torch.Tensor) -> torch.Tensor:  # [S, L] bool -> [S, L] log p
            canvas = row.repeat(len(masks), 1)
            canvas[:, P:] = torch.where(masks, mask_id, goal)
            logits = self.backbone.forward(canvas.to(device), torch.ones_like(canvas).to(device))
            logp = logits.logits[:, P:].float().log_softmax(-1).cpu()
            return logp.gather(-1, goal.expand(len(masks), L)[..., None]).squeeze(-1)

        S = self.loglikelihood_samples
        counts = torch.randint(1, L + 1, (S,), generator=generator)  # l ~ U{1..L}
        order = torch.rand((S, L), generator=generator).argsort(-1)
        masks = order < counts[:, None]  # l random masked positions per draw
        estimates = []
        for chunk in range(0, S, self.batch_size):
            m = masks[chunk : chunk + self.batch_size]
            lp = log_probs(m)
            weight = L / m.sum(-1).float()
            estimates.append((lp * m).sum(-1) * weight)
        canvas = row.clone()[None]
        canvas[:, P:] = mask_id
        logits = self.backbone.forward(canvas.to(device), torch.ones_like(canvas).to(device))
        greedy = bool((logits.logits[0, P:].argmax(-1).cpu() == goal).all())
        return float(torch.cat(estimates).mean()), greedy

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """Not supported (perplexity tasks); see :meth:`loglikelihood`.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            f"the {MODEL_NAME} model does not support loglikelihood_rolling requests "
            f"({len(requests)} here, from perplexity tasks): a masked diffusion model has no "
            "exact sequence likelihood"
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode every request with the policy on the batched engine.

        Requests sharing generation settings are decoded together in engine batches of
        :attr:`batch_size`. A completion is cut at the first of the request's ``until`` strings.

        Args:
            requests: lm-eval ``Instance`` objects whose ``args`` are ``(context, gen_kwargs)``.
            disable_tqdm: Hide the engine's progress bar.

        Returns:
            One completion per request, in order.

        Raises:
            ValueError: On a context that is empty after tokenization, or a generation length
                that leaves no room for the prompt.
        """
        groups: dict[tuple[Any, ...], list[int]] = {}
        settings: list[tuple[int, tuple[str, ...], float]] = []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            setting = self._setting(dict(gen_kwargs or {}))
            settings.append(setting)
            groups.setdefault(setting, []).append(i)
        outputs: list[str | None] = [None] * len(requests)
        for (G, until, temperature), rows in groups.items():
            prompts = [self._prompt_ids(requests[i].args[0], G) for i in rows]
            config = DecodeConfig(
                gen_length=G,
                window=self.window,
                step_budget=self.step_budget,
                eos_stop=self.eos_stop,
                temperature=temperature,
                seed=self.seed,
            )
            result = decode(
                self.backbone,
                prompts,
                self.policy,
                config,
                batch_size=self.batch_size,
                progress=not disable_tqdm,
            )
            self._account(result)
            for i, text in zip(rows, result.texts, strict=True):
                text = _cut(text, until)
                outputs[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        global _LAST_ACCOUNTING
        _LAST_ACCOUNTING = self.accounting()
        _LOG.info("commit-env accounting: %s", _LAST_ACCOUNTING)
        return [text if text is not None else "" for text in outputs]

    def _setting(self, gen_kwargs: dict[str, Any]) -> tuple[int, tuple[str, ...], float]:
        until = gen_kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        G = self.gen_length or int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        if self._window_kind == "block" and self._window_width and G % self._window_width:
            G += self._window_width - G % self._window_width  # blocks must tile the generation
        temperature = self.temperature
        if gen_kwargs.get("do_sample") and float(gen_kwargs.get("temperature", 0.0)) > 0:
            temperature = float(gen_kwargs["temperature"])
        return G, tuple(until or ()), temperature

    def _prompt_ids(self, context: str, G: int) -> list[int]:
        room = self.max_length - G
        if room < 1:
            raise ValueError(
                f"generation length {G} leaves no room for a prompt in backbone "
                f"{self.backbone_name!r} (max_length {self.max_length})"
            )
        ids = list(self.backbone.encode([context])[0])
        if not ids:
            raise ValueError("a request's context is empty after tokenization")
        return ids[-room:]  # keep the end of an over-long context, as lm-eval's HF model does

    def _account(self, result: Any) -> None:
        totals = self._totals
        totals["requests"] += len(result.texts)
        totals["nfe"] += int(result.nfe.sum())
        totals["generated_positions"] += int(result.gen_len.sum())
        totals["forward_tokens"] += int(result.forward_tokens.sum())
        totals["forced_commits"] += int(result.forced_commits.sum())
        totals["wall_time_s"] += float(result.wall_time)

    # ------------------------------------------------------------------ reporting

    def accounting(self) -> dict[str, Any]:
        """The engine's accounting summed over every request generated so far.

        Returns:
            ``requests``, total ``nfe``, ``mean_nfe`` per request, ``tokens_per_forward``
            (generated positions / NFE), ``forward_tokens``, ``forced_commits``,
            ``wall_time_s`` and the decode settings.
        """
        t = self._totals
        n, nfe = max(int(t["requests"]), 1), max(int(t["nfe"]), 1)
        return {
            **t,
            "mean_nfe": t["nfe"] / n,
            "tokens_per_forward": t["generated_positions"] / nfe,
            "backbone": self.backbone_name,
            "policy": self.policy_name,
            "window": self.window,
            "step_budget": self.step_budget,
            "device": str(self.backbone.device),
        }

    def get_model_info(self) -> dict[str, Any]:
        """Added by lm-eval to ``results["config"]``: the accounting under ``"commit_env"``."""
        return {"commit_env": self.accounting()}


def _cuda_available() -> bool:
    import torch  # noqa: PLC0415

    return torch.cuda.is_available()


def _cut(text: str, until: Sequence[str]) -> str:
    """Cut ``text`` at the earliest of the ``until`` strings."""
    cut = len(text)
    for stop in until:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


def run_harness(
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    include_defaults: bool = True,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    **model_args: Any,
) -> dict[str, Any]:
    """Evaluate with lm-eval's ``simple_evaluate`` and return its results plus the accounting.

    Args:
        tasks: lm-eval task names (generation tasks).
        include_path: Folder of extra task YAML files (e.g. local tasks).
        include_defaults: Also index lm-eval's built-in tasks (``False`` is much faster when
            only ``include_path`` tasks are run).
        limit: At most this many documents per task (a fraction if < 1).
        num_fewshot: Few-shot examples per prompt.
        **model_args: :class:`CommitEnvLM` arguments (``backbone``, ``policy`` ...).

    Returns:
        lm-eval's results dict; ``results["commit_env"]`` holds the decode accounting (also in
        ``results["config"]["commit_env"]``).
    """
    import lm_eval  # noqa: PLC0415
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    lm = CommitEnvLM(**model_args)
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=TaskManager(include_path=include_path, include_defaults=include_defaults),
        log_samples=False,
    )
    results["commit_env"] = {**lm.accounting(), "total_time_s": time.perf_counter() - start}
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the ``commit-env`` model registered; prints the accounting."""
    from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415

    saved = sys.argv
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    if _LAST_ACCOUNTING is not None:
        print("commit-env accounting (engine, summed over every generate_until request):")
        for key, value in _LAST_ACCOUNTING.items():
            shown = f"{value:.3f}" if isinstance(value, float) else value
            print(f"  {key:<20} {shown}")


if __name__ == "__main__":
    main()
