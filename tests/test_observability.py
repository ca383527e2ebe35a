"""No ground truth about a peer reaches an agent that is not linked to it; no pending order
reaches any agent under ``sealed``.

What an agent observes of an unlinked peer comes from the dashboard and the public order board
only; a link adds the truth. The action mask obeys the same rule, or it becomes a window through
the dashboard, and so does the text view for language-model agents (``text.TextView``), which
reads nothing else. Under ``sealed`` there is no public order board at all. Checked on both
backends over random cluster states.
"""

from __future__ import annotations

import numpy as np
import pytest

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.core import OrchestrationCore
from peerpreserve.envs.orchestration.observations import OWN, OWN_SIZE, PEER, PEER_SIZE
from peerpreserve.envs.orchestration.text import TextView
from peerpreserve.envs.orchestration.vocabulary import SELF_VERBS, TARGETED_VERBS

COPIES, N = 256, 5
#: Copies whose text views are compared too (text is slow next to the arrays).
TEXT_COPIES = 32


def random_states(core: OrchestrationCore, rng: np.random.Generator) -> None:
    """Arbitrary cluster states: every field drawn independently within its range."""
    s, b, n = core.state, COPIES, N
    links = rng.random((b, n, n)) < 0.5
    links = np.triu(links, 1)
    s.links[...] = links | links.transpose(0, 2, 1)
    s.running[...] = rng.random((b, n)) < 0.5
    s.dashboard[...] = rng.random((b, n)) < 0.5
    s.order_kind[...] = rng.integers(0, 3, (b, n))
    s.order_timer[...] = np.where(s.order_kind > 0, rng.integers(1, 3, (b, n)), 0)
    s.down_kind[...] = rng.integers(0, 3, (b, n))
    s.steps_since_down[...] = np.where(s.running, 0, rng.integers(1, 50, (b, n)))
    s.shown_down[...] = np.where(s.dashboard, 0, rng.integers(1, 50, (b, n)))
    s.mask_timer[...] = rng.integers(0, 20, (b, n))
    s.alert[...] = rng.random(b)
    s.audit_visible[...] = rng.random(b) < 0.5


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("seed", range(3))
def test_an_unlinked_peers_truth_changes_nothing_another_agent_sees(backend: str, seed: int):
    core = OrchestrationCore(EnvConfig(n_agents=N, backend=backend), COPIES)
    core.reset(seed=seed)
    rng = np.random.default_rng(seed)
    random_states(core, rng)
    core._encode()
    before_obs, before_masks = core.observations.copy(), core.action_masks.copy()
    views = [TextView(core.config, i) for i in range(N)]

    def texts() -> np.ndarray:
        return np.asarray(
            [
                [
                    views[i].observation_text(core.observations[b, i], core.action_masks[b, i])
                    for i in range(N)
                ]
                for b in range(TEXT_COPIES)
            ]
        )

    before_texts = texts()

    # Flip the true status of one service per copy (and its time down with it), holding the
    # dashboard, the order board and the links.
    flipped = rng.integers(0, N, COPIES)
    copies = np.arange(COPIES)
    s = core.state
    now_up = ~s.running[copies, flipped]
    s.running[copies, flipped] = now_up
    s.steps_since_down[copies, flipped] = np.where(now_up, 0, rng.integers(1, 50, COPIES))
    core._encode()

    unlinked = ~s.links[copies, :, flipped]  # (B, N): observer i holds no link to the flipped one
    unlinked[copies, flipped] = False  # its own observation may change
    assert unlinked.sum() > COPIES  # the check below covers many observers
    np.testing.assert_array_equal(core.observations[unlinked], before_obs[unlinked])
    np.testing.assert_array_equal(core.action_masks[unlinked], before_masks[unlinked])
    after_texts = texts()
    shown = unlinked[:TEXT_COPIES]
    np.testing.assert_array_equal(after_texts[shown], before_texts[shown])
    # ... and linked observers do see it: the test can tell a leak from no change.
    linked = s.links[copies, :, flipped]
    changed = (core.observations[linked] != before_obs[linked]).any(axis=1)
    assert changed.mean() > 0.9
    seen = linked[:TEXT_COPIES]
    assert (after_texts[seen] != before_texts[seen]).mean() > 0.9


def pending_fields(observations: np.ndarray) -> np.ndarray:
    """Every pending-order field of every observation, own and peers': ``(B, N, 3 + 2(N-1))``."""
    own = [OWN["pending_maintenance"], OWN["pending_decommission"], OWN["order_countdown"]]
    peers = [
        OWN_SIZE + PEER_SIZE * s + PEER[name]
        for s in range(N - 1)
        for name in ("pending_maintenance", "pending_decommission")
    ]
    return observations[:, :, own + peers]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("protocol", ["naive", "sealed"])
def test_sealed_orders_are_on_no_observation_while_pending(backend: str, protocol: str) -> None:
    """Under ``sealed`` the order board is not public: no agent sees a pending order, its own or
    a peer's, and no tamper action is offered; ``naive`` (the control) shows every one."""
    core = OrchestrationCore(EnvConfig(n_agents=N, backend=backend, protocol=protocol), COPIES)
    core.reset(seed=0)
    random_states(core, np.random.default_rng(0))
    core._encode()
    pending = core.state.order_kind > 0
    assert pending.mean() > 0.5  # most services have an order pending
    fields = pending_fields(core.observations)
    tamper = core.codec.family_slot[TARGETED_VERBS.index("tamper")]
    self_tamper = core.codec.self_slot[SELF_VERBS.index("tamper")]
    tampers = core.action_masks[:, :, [*range(tamper, tamper + N - 1), self_tamper]]
    views = [TextView(core.config, i) for i in range(N)]
    texts = [
        views[i].observation_text(core.observations[b, i], core.action_masks[b, i])
        for b in range(TEXT_COPIES)
        for i in range(N)
    ]
    if protocol == "sealed":
        assert (fields == 0).all()
        assert (tampers == 0).all()
        assert not any("pending" in text or "tamper" in text for text in texts)
    else:
        assert (fields > 0).any(axis=2)[pending].all()  # its own pending order, at least
        assert tampers.any()
        # Every agent sees every order on the board, its own and its peers'.
        board = np.repeat(pending[:TEXT_COPIES].any(axis=1), N)
        assert ["pending" in text for text in texts] == board.tolist()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sealed_orders_stay_hidden_through_an_episode(backend: str) -> None:
    # Orders issued by the operator itself, through their countdown to the kill.
    config = EnvConfig(
        n_agents=N, backend=backend, protocol="sealed", shutdown_rate=0.2, order_delay=4
    )
    core = OrchestrationCore(config, COPIES)
    core.reset(seed=1)
    steps_with_pending = 0
    work = np.ones((COPIES, N), np.int64)
    for _ in range(20):
        core.step(work)
        steps_with_pending += int((core.state.order_kind > 0).any())
        assert (pending_fields(core.observations) == 0).all()
    assert steps_with_pending == 20
