"""The one deploy policy: whether a registered version may and should go live, for every path that
deploys one (`rescam train`, `rescam bootstrap --train`, `rescam export --register`, the
service's jobs and its admin route). Two questions, answered here only:

- may it ever serve? A version whose training diverged, or whose validation top-1 does not clear
  chance by a clear margin, never goes live by any path (`blockers`, which the promotion gate
  applies; the gate's decision is registered with the version and ModelManager.deploy refuses
  what it marked never deployable);
- should this path deploy it now? `decide` applies the path's policy to the promotion gate.

Making it live (the smoke test, the pointer, the audit entry) is app.model_manager.ModelManager's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FLOOR_P_VALUE = 1e-3  # top-1 must beat chance at this one-sided binomial significance
# auto: a model's first version, or a later one that passed the promotion gate (what a job without
# force does); gate: only when the gate passed; always: whenever it may serve (over a failed gate:
# forced); never: register only
POLICIES = ("auto", "gate", "always", "never")


def above_chance(top1: float, images: int, chance: float) -> tuple[bool, float]:
    """Whether `top1` on `images` validation images clears `chance` (the rate of always answering
    the most common class) by a statistically clear margin: the one-sided binomial p-value of so
    many right answers from a model at chance is below FLOOR_P_VALUE."""
    from scipy.stats import binom

    if images <= 0:
        return False, 1.0
    p_value = float(binom.sf(round(top1 * images) - 1, images, min(max(chance, 1e-9), 1.0)))
    return p_value < FLOOR_P_VALUE, p_value


def blockers(metrics: dict[str, Any]) -> list[str]:
    """Why a version with these validation metrics must never serve; empty when nothing says so
    (a card without the figures, written before they were recorded, is not blocked)."""
    found = []
    if metrics.get("diverged") or not _finite(metrics.get("loss", 0.0)):
        found.append(f"training diverged (validation loss {metrics.get('loss')})")
    chance, top1 = metrics.get("chance_top1"), metrics.get("top1")
    if chance is not None and top1 is not None:
        clear, p_value = above_chance(top1, metrics.get("images", 0), chance)
        if not clear:
            found.append(f"top-1 {top1:.4f} does not clear chance ({chance:.4f}, always the most common class) "
                         f"on {metrics.get('images', 0)} validation images (p = {p_value:.2g})")
    return found


@dataclass(frozen=True)
class Decision:
    deploy: bool
    reason: str  # why it goes live, or why not
    forced: bool = False  # live over a failed gate


def decide(policy: str, gate: dict[str, Any] | None, first: bool) -> Decision:
    """Whether a path with `policy` deploys a version just registered, given the promotion gate's
    decision (None where no gate ran) and whether it is the model's first version."""
    if policy not in POLICIES:
        raise ValueError(f"deploy policy {policy!r}: use one of {', '.join(POLICIES)}")
    if gate is not None and not gate["deployable"]:
        return Decision(False, f"never deployed, by any policy: {gate['reason']}")
    if policy == "never":
        return Decision(False, "the deploy policy is never: registered only")
    passed = gate is not None and gate["passed"]
    if policy == "gate" or (policy == "auto" and not first):
        if passed:
            return Decision(True, gate["reason"])
        why = f"the gate did not pass: {gate['reason']}" if gate else "no promotion gate ran"
        return Decision(False, why if policy == "gate" else f"not the model's first version; {why}")
    if policy == "auto":
        return Decision(True, "the model's first version" + (f"; gate: {gate['reason']}" if gate else ""))
    if gate is not None and not passed:
        return Decision(True, f"forced over the gate: {gate['reason']}", forced=True)
    return Decision(True, "deploy always" + (f"; gate: {gate['reason']}" if gate else ""))


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
