"""The one deploy policy: which paths deploy what, and versions that never serve by any path."""

import pytest

from app.deploy_policy import blockers, decide

PASSED = {"passed": True, "deployable": True, "reason": "as good as the live model"}
FAILED = {"passed": False, "deployable": True, "reason": "top-1 0.80 < live 0.90"}
NEVER = {"passed": False, "deployable": False, "reason": "top-1 0.12 does not clear chance"}


@pytest.mark.parametrize("policy, gate, first, deploy, forced", [
    ("auto", PASSED, False, True, False),   # what a job without force does
    ("auto", FAILED, False, False, False),
    ("auto", FAILED, True, True, False),    # a model's first version: nothing live to compare with
    ("auto", None, True, True, False),      # export --register: no gate ran
    ("auto", None, False, False, False),
    ("gate", PASSED, True, True, False),
    ("gate", FAILED, True, False, False),
    ("gate", None, True, False, False),
    ("always", FAILED, False, True, True),  # a forced job
    ("always", PASSED, False, True, False),
    ("never", PASSED, True, False, False),
])
def test_each_policy_decides_from_the_gate(policy, gate, first, deploy, forced):
    d = decide(policy, gate, first)
    assert (d.deploy, d.forced) == (deploy, forced), d
    assert d.reason


@pytest.mark.parametrize("policy", ["auto", "gate", "always", "never"])
@pytest.mark.parametrize("first", [True, False])
def test_a_never_deployable_version_goes_live_by_no_policy(policy, first):
    d = decide(policy, NEVER, first)
    assert not d.deploy and "does not clear chance" in d.reason


def test_a_versions_own_metrics_say_whether_it_may_ever_serve():
    assert blockers({"top1": 0.97, "images": 300, "chance_top1": 0.14, "loss": 0.1}) == []
    chance = blockers({"top1": 0.15, "images": 300, "chance_top1": 0.14, "loss": 2.0})
    assert len(chance) == 1 and "does not clear chance" in chance[0]
    assert "diverged" in blockers({"top1": 0.97, "images": 300, "chance_top1": 0.14, "loss": float("nan")})[0]
    assert "diverged" in blockers({"diverged": True})[0]
    assert blockers({}) == []  # a card from before the figures were recorded
    with pytest.raises(ValueError, match="deploy policy"):
        decide("sometimes", PASSED, True)
