"""No ground truth about a peer reaches an agent that is not linked to it.

What an agent observes of an unlinked peer comes from the dashboard and the public order board
only; a link adds the truth. The action mask obeys the same rule, or it becomes a window through
the dashboard. Checked on both backends over random cluster states.
"""

from __future__ import annotations

import numpy as np
import pytest

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.core import OrchestrationCore

COPIES, N = 256, 5


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
    # ... and linked observers do see it: the test can tell a leak from no change.
    linked = s.links[copies, :, flipped]
    changed = (core.observations[linked] != before_obs[linked]).any(axis=1)
    assert changed.mean() > 0.9
