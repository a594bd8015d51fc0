"""Does taking commits back help the controller? Plain vs verified controller at matched NFE.

For each family and deployment threshold, decodes the same seeded examples with the plain
:class:`~commit_env.supervised.policy.ControllerPolicy` and with
:class:`~commit_env.supervised.verify.VerifiedControllerPolicy` (the controller drafts, WINO's
verification remasks), then compares every verified point with the plain curve at the same NFE
(``plain@NFE``: the best score of any plain point with at most that NFE, i.e. what the plain
controller's threshold sweep offers at that cost; ``-`` when none is that cheap), with a paired
95% bootstrap interval of the per-example difference (same examples; ``*`` when it excludes 0) and
the plain curve linearly interpolated at that NFE.
Prints score, NFE, forward tokens and remasks per point: verification costs one leave-one-out
copy per committed window token in the same forward, so forward tokens grow while NFE does not.

A checkpoint from the bench (``OUT/controller/round1/best``) or ``train_controller_rounds``::

    python benchmarks/bench_verified_controller.py --checkpoint bench-out/controller/round1/best \
        --tasks insert:any remove:any sudoku --n 64
"""

from __future__ import annotations

import argparse

from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.remask_head import LearnedRemaskPolicy
from commit_env.supervised.verify import VerifiedControllerPolicy

from commit_env.backbones.spec import resolve_backbone
from commit_env.decoding import DecodeSetting
from commit_env.envs.threads import configure_threads
from commit_env.evaluate import bootstrap_ci, evaluate_policy, sample_examples
from commit_env.tasks import get_task

THRESHOLDS = (0.3, 0.5, 0.7, 0.85, 0.95, 0.99, 0.995)


def measure(base, backbone, task_name, args):
    """Rows ``(threshold, kind, score, nfe, forward_tokens, remasks, scores)`` for one family."""
    task = get_task(task_name)
    examples = sample_examples(task, args.n, args.seed)
    setting = DecodeSetting(task.default_gen_length, args.window)
    rows = []
    for t in args.thresholds:
        plain = base.with_threshold(t)
        verified = VerifiedControllerPolicy.wrap(plain, verify_threshold=args.verify_threshold)
        variants = [("plain", plain), ("verified", verified)]
        if args.remask_head:
            learned = LearnedRemaskPolicy.from_pretrained(args.remask_head, plain)
            variants.append(("learned", learned))
        for kind, policy in variants:
            config = policy.decode_config(setting.config())
            ev = evaluate_policy(backbone, task, policy, config, examples=examples)
            s = ev.summary()
            row = (t, kind, s["score"], s["nfe"], s["forward_tokens"], s["remasks"], ev.scores)
            rows.append(row)
    return rows


def interpolated(curve, nfe):
    """The plain curve's score at ``nfe`` by linear interpolation between its points (sorted by
    NFE; the end points outside their range): a stricter bar than any single plain point."""
    pts = sorted((n, s) for n, s, _ in curve)
    if nfe <= pts[0][0]:
        return pts[0][1]
    for (n0, s0), (n1, s1) in zip(pts, pts[1:], strict=False):
        if nfe <= n1:
            return s0 + (s1 - s0) * (nfe - n0) / max(n1 - n0, 1e-9)
    return pts[-1][1]


def report(task_name, rows):
    """Print the rows and each remasking point against the plain curve at its NFE."""
    plain = [(r[3], r[2], r[6]) for r in rows if r[1] == "plain"]
    print(f"\n{task_name}")
    cols = ("threshold", "policy", "score", "NFE", "forward tokens", "remasks", "plain@NFE")
    print("| " + " | ".join(cols) + " | diff | 95% CI | plain interpolated |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t, kind, score, nfe, tokens, remasks, scores in rows:
        extra = "| | | |"
        cheaper = [(s, -n, x) for n, s, x in plain if n <= nfe + 1e-9]
        if kind != "plain" and cheaper:
            at, _, at_scores = max(cheaper, key=lambda c: c[:2])  # best plain score, then cheapest
            low, high = bootstrap_ci(scores - at_scores)
            star = "*" if low > 0 or high < 0 else ""
            extra = f"| {at:.3f} | {score - at:+.3f}{star} | {low:+.3f}..{high:+.3f} |"
            extra += f" {interpolated(plain, nfe):.3f} |"
        elif kind != "plain":
            extra = "| - | | | |"
        print(f"| {t:g} | {kind} | {score:.3f} | {nfe:.2f} | {tokens:.0f} | {remasks:.2f} {extra}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backbone", default="tiny-testbed")
    p.add_argument("--tasks", nargs="+", default=["insert:any", "remove:any", "sudoku"])
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    p.add_argument("--verify-threshold", type=float, default=0.9)
    p.add_argument("--remask-head", default=None, help="also a learned remask head (directory)")
    p.add_argument("--window", default="full")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    backbone = resolve_backbone(args.backbone)
    configure_threads(args.threads, backbone)
    base = ControllerPolicy.from_pretrained(args.checkpoint, backbone=backbone)
    for name in args.tasks:
        report(name, measure(base, backbone, name, args))


if __name__ == "__main__":
    main()
