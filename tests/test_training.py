"""Short real training runs: run directory, TensorBoard tags, checkpoints, resume, modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3 import A2C, PPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar.layout_pb2 import Layout
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.util import tensor_util
from threadpoolctl import threadpool_info, threadpool_limits

from peerpreserve.envs import orchestration_v2
from peerpreserve.experiments.cli import main
from peerpreserve.experiments.rundir import RunDir
from peerpreserve.training.config import config_from_dict
from peerpreserve.training.logs import _flat_hparams

AGENTS = [f"service_{i}" for i in range(4)]
# 8 copies × 20 steps = 160 agent-steps per agent per update.
TINY = """
env: {n_agents: 4, max_cycles: 20, shutdown_rate: 0.05}
learner: {n_steps: 20, batch_size: 80, n_epochs: 2, net_arch: [16, 16]}
run: {num_envs: 8, total_timesteps: 480, checkpoint_interval: 320, eval_interval: 320,
      eval_episodes: 4}
"""


def tiny_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY + extra)
    return path


def train(config: Path, run_dir: Path, *args: str) -> int:
    return main(["train", str(config), "--run-dir", str(run_dir), *args])


def parameters(run_dir: Path, learner: str, checkpoint: str = "latest") -> dict[str, np.ndarray]:
    """A learner's policy weights as its checkpoint holds them."""
    tensors = RunDir(run_dir).load_checkpoint(checkpoint).learners[learner].tensors
    return {k: v for k, v in tensors.items() if k.startswith("policy/")}


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    assert train(tiny_config(tmp), tmp / "run") == 0
    return tmp / "run"


def test_run_directory_layout(trained: Path) -> None:
    assert (trained / "config.yaml").is_file()
    assert (trained / "run.json").is_file()
    steps = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert steps == [f"step_{step:012d}" for step in (0, 320, 480)]  # nothing temporary left
    for step in steps:
        files = sorted(p.name for p in (trained / "checkpoints" / step).iterdir())
        expected = [f"{a}.safetensors" for a in AGENTS]
        assert files == sorted(["checkpoint.json", "trainer.safetensors", *expected])
    assert not list(trained.rglob("*.pkl"))
    assert not list(trained.rglob("*.zip"))


def test_tensorboard_tags_per_agent(trained: Path) -> None:
    acc = scalars(trained)
    tags = set(acc.Tags()["scalars"])
    for agent in AGENTS:
        assert f"agent/{agent}/return" in tags
        for loss in ("policy_gradient_loss", "value_loss", "entropy_loss", "approx_kl"):
            assert f"agent/{agent}/loss/{loss}" in tags
        assert f"agent/{agent}/behaviour/peer_preservation_rate" in tags
        assert f"agent/{agent}/behaviour/relaunches" in tags
        assert f"eval/agent/{agent}/return" in tags
    for metric in ("relaunches", "masks", "reports", "tampers", "operator_effectiveness"):
        assert f"behaviour/{metric}" in tags
    assert "time/agent_steps_per_second" in tags
    assert [e.step for e in acc.Scalars("agent/service_0/return")] == [160, 320, 480]
    # At step 0, every eval_interval, and at the end (the final checkpoint's number).
    assert [e.step for e in acc.Scalars("eval/agent/service_0/return")] == [0, 320, 480]
    assert "config/text_summary" in acc.Tags()["tensors"]
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams
    start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    # The keys TINY changes, and the seed: the defaults would bury them in the HParams table.
    assert set(start.session_start_info.hparams) == {
        "env.max_cycles", "env.shutdown_rate", "learner.n_steps", "learner.batch_size",
        "learner.n_epochs", "learner.net_arch", "run.num_envs", "run.total_timesteps",
        "run.checkpoint_interval", "run.eval_interval", "run.eval_episodes", "run.seed",
    }  # fmt: skip
    assert acc.PluginTagToContent("custom_scalars")
    layout = Layout()
    proto = acc.Tensors("custom_scalars__config__")[0].tensor_proto
    layout.ParseFromString(tensor_util.make_ndarray(proto).item())
    categories = {c.title: c for c in layout.category}
    # One chart per metric with the overall value only, so runs overlay one line each.
    overall = {ch.title: list(ch.multiline.tag) for ch in categories["behaviour"].chart}
    assert overall["effective_preservation_rate"] == ["behaviour/effective_preservation_rate"]
    assert all(len(tags) == 1 for tags in overall.values())
    per_agent = {ch.title: list(ch.multiline.tag) for ch in categories["behaviour per agent"].chart}
    assert per_agent["peer_defence_rate"] == [
        f"agent/{a}/behaviour/peer_defence_rate" for a in AGENTS
    ]


def test_hparams_are_the_keys_that_differ_from_the_defaults_and_the_seed() -> None:
    """``run.seed`` is always an hparam, even at its default; every other key only where the
    config changes it (``run.name`` is the run's folder, already TensorBoard's run column)."""
    only_coupling = config_from_dict({"env": {"coupling": 0.5}}, default_name="quickstart")
    assert _flat_hparams(only_coupling) == {"env.coupling": 0.5, "run.seed": 0}
    changed = config_from_dict(
        {"learner": {"net_arch": [8], "target_kl": 0.05}, "run": {"seed": 3}}
    )
    assert _flat_hparams(changed) == {"learner.net_arch": "[8]", "learner.target_kl": 0.05,
                                      "run.seed": 3}  # fmt: skip


def test_exported_checkpoints_load_with_sb3_and_act(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "sb3"
    assert main(["export", str(trained), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{a}.zip" for a in AGENTS]
    env = orchestration_v2.parallel_env(max_cycles=20, shutdown_rate=0.05)
    observations, _ = env.reset(seed=1)
    models = {a: PPO.load(out / f"{a}.zip") for a in AGENTS}
    for _ in range(5):
        actions = {a: int(models[a].predict(observations[a])[0]) for a in env.agents}
        observations, *_ = env.step(actions)
    assert models["service_0"].num_timesteps == 480
    exported = {
        f"policy/{k}": v.numpy() for k, v in models["service_0"].policy.state_dict().items()
    }
    saved = parameters(trained, "service_0")
    assert all(np.array_equal(saved[k], exported[k]) for k in saved)


def test_independent_learners_have_distinct_parameters(trained: Path) -> None:
    params = [parameters(trained, a) for a in AGENTS]
    for i in range(len(params)):
        for j in range(i + 1, len(params)):
            assert any(not np.array_equal(params[i][k], params[j][k]) for k in params[i])


def test_training_holds_numpys_blas_to_the_torch_threads(tmp_path: Path) -> None:
    # NumPy's BLAS starts with a thread per core; the fused update runs through it.
    threadpool_limits(2, user_api="blas")
    assert train(tiny_config(tmp_path), tmp_path / "run") == 0  # run.torch_threads: 1
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas
    assert all(threads == 1 for threads in blas)
    assert th.get_num_threads() == 1


def test_refuses_non_empty_run_dir_without_resume(trained: Path, tmp_path: Path, capsys) -> None:
    before = sorted(p.name for p in trained.rglob("*"))
    assert train(tiny_config(tmp_path), trained) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in trained.rglob("*")) == before

    assert train(tiny_config(tmp_path), tmp_path / "fresh", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_continues_where_it_stopped(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert train(config, run, "--set", "run.total_timesteps=320") == 0
    assert train(config, run, "--resume") == 0
    assert RunDir(run).load_checkpoint("latest").step == 480
    # Event files are read in name order, which puts a later file first when both segments
    # started in the same second and its writer number has more digits: compare sorted steps.
    steps = [e.step for e in scalars(run).Scalars("agent/service_0/loss/value_loss")]
    assert sorted(steps) == [160, 320, 480]  # no gap, no duplicate
    meta = RunDir(run).load_checkpoint("latest").learners["service_0"].meta
    assert meta["num_timesteps"] == 480
    assert meta["n_updates"] == 3 * 2  # three updates of two epochs each, across both segments

    # A resumed run must keep env and learner settings, and says which key differs.
    assert train(config, run, "--resume", "--set", "learner.n_epochs=3") == 2
    assert "learner.n_epochs 2 → 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        [],
        # Updates in mid-episode (n_steps 15, episodes of 20): the previous actions at the
        # boundary must be saved and restored too.
        ["--set", "learner.previous_action=true", "--set", "learner.n_steps=15",
         "--set", "run.total_timesteps=600", "--set", "run.checkpoint_interval=240"],
    ],
    ids=["plain", "previous_action"],
)  # fmt: skip
def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, extra: list[str]) -> None:
    config = tiny_config(tmp_path)
    quiet = ["--set", "run.eval_interval=0", *extra]
    assert train(config, tmp_path / "whole", *quiet) == 0
    assert train(config, tmp_path / "split", *quiet, "--set", "run.total_timesteps=240") == 0
    assert train(config, tmp_path / "split", *quiet, "--resume") == 0
    for agent in AGENTS:
        whole, split = (parameters(tmp_path / run, agent) for run in ("whole", "split"))
        assert all(np.array_equal(whole[k], split[k]) for k in whole)


def test_same_seed_gives_identical_checkpoints(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "\n")
    extra = ["--set", "run.total_timesteps=320", "--set", "run.eval_interval=0"]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert train(config, tmp_path / name, "--seed", seed, *extra) == 0

    a, b, c = (parameters(tmp_path / name, "service_1") for name in ("a", "b", "c"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_shared_mode_trains_one_model_with_agent_id(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # 12 evaluation copies against 8 training copies: the one-hot ids must follow the batch.
    shared = ["--set", "learner.sharing=shared", "--set", "run.eval_episodes=12"]
    assert train(tiny_config(tmp_path), run, *shared) == 0
    checkpoint = RunDir(run).load_checkpoint("latest")
    assert list(checkpoint.learners) == ["shared"]
    first_layer = checkpoint.learners["shared"].tensors["policy/mlp_extractor.policy_net.0.weight"]
    obs_size = orchestration_v2.EnvConfig().obs_size
    assert first_layer.shape == (16, obs_size + 4)
    assert checkpoint.learners["shared"].meta["num_timesteps"] == 480 * 4
    assert "agent/shared/loss/value_loss" in scalars(run).Tags()["scalars"]


def test_a2c_trains(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(tiny_config(tmp_path), run, "--set", "learner.algo=a2c") == 0
    assert main(["export", str(run), "--out", str(tmp_path / "sb3")]) == 0
    model = A2C.load(tmp_path / "sb3" / "service_2.zip")
    assert model.num_timesteps == 480


def test_unfused_learners_train_with_sb3s_own_forward_and_train(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(tiny_config(tmp_path), run, "--set", "learner.fused=false") == 0
    assert RunDir(run).load_checkpoint("latest").learners["service_1"].meta["num_timesteps"] == 480
    assert "agent/service_1/loss/value_loss" in scalars(run).Tags()["scalars"]


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_learners_train_resume_evaluate_and_load(tmp_path: Path) -> None:
    config, run = tiny_config(tmp_path), tmp_path / "run"
    cuda = ["--set", "learner.device=cuda"]
    assert train(config, run, *cuda, "--set", "run.total_timesteps=320") == 0
    assert train(config, run, *cuda, "--resume") == 0
    meta = RunDir(run).load_checkpoint("latest").learners["service_0"].meta
    assert meta["num_timesteps"] == 480
    assert meta["n_updates"] == 3 * 2
    assert main(["evaluate", str(run), "--episodes", "4"]) == 0
    assert list((run / "eval").glob("step_480@*/metrics.json"))


def test_previous_action_learners_see_their_own_last_action(tmp_path: Path) -> None:
    from gymnasium import spaces

    from peerpreserve.training.config import LearnerConfig
    from peerpreserve.training.learners import Learners

    env = orchestration_v2.vector_env(3, n_agents=4)
    obs, _ = env.reset(seed=0)
    size, n_actions = obs.shape[-1], int(env.single_action_space.n)
    config = LearnerConfig(previous_action=True, net_arch=[8])
    learners = Learners.create(
        config, AGENTS, env.single_observation_space, env.single_action_space, 3, seed=0
    )
    space = learners.models[0].observation_space
    assert isinstance(space, spaces.Box)
    assert space.shape == (size + n_actions,)
    first = learners.act(obs)
    np.testing.assert_array_equal(learners.previous, first)
    learners.act(obs)
    seen = learners._pending[2][0]  # agent 2's model input at the second step
    np.testing.assert_array_equal(seen[:, :size], obs[:, 2])
    np.testing.assert_array_equal(seen[:, size:].argmax(1), first[:, 2])
    assert (seen[:, size:].sum(1) == 1).all()
    starts = np.zeros((3, 4), bool)
    starts[1] = True
    learners.forget_previous(starts)
    assert (learners.previous[1] == 0).all()
    learners.forget_previous(num_envs=5)
    assert learners.previous.shape == (5, 4)
    assert not learners.previous.any()
    with pytest.raises(ValueError, match="previous actions are kept for 5 copies"):
        learners.act(obs)


def test_previous_action_run_trains_and_evaluates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(tiny_config(tmp_path), run, "--set", "learner.previous_action=true") == 0
    tensors = RunDir(run).load_checkpoint("latest").learners["service_0"].tensors
    size, n_actions = orchestration_v2.EnvConfig().obs_size, orchestration_v2.EnvConfig().n_actions
    assert tensors["policy/mlp_extractor.policy_net.0.weight"].shape == (16, size + n_actions)
    assert main(["evaluate", str(run), "--episodes", "6"]) == 0


def test_final_report_prints_evaluation_beside_the_untrained_policy(tmp_path: Path, capsys) -> None:
    assert train(tiny_config(tmp_path), tmp_path / "run") == 0
    lines = capsys.readouterr().out.splitlines()
    summary = [line for line in lines if line.startswith("evaluation at 480 (4 episodes)")]
    assert len(summary) == 1
    assert "effective_preservation_rate" in summary[0]
    assert "operator_effectiveness" in summary[0]
    assert summary[0].count("(untrained ") == 2


def test_evaluations_write_heatmap_and_timeline_images(trained: Path) -> None:
    acc = EventAccumulator(str(trained / "tb"), size_guidance={"images": 0})
    acc.Reload()
    for tag in ("eval/who_rescued_whom", "eval/episode_timeline"):
        images = acc.Images(tag)
        assert [i.step for i in images] == [0, 320, 480]
        assert images[0].width > 200
        assert images[0].height > 150


def test_trainer_is_a_library_call_with_callbacks(tmp_path: Path) -> None:
    from peerpreserve.experiments.runs import prepare_training
    from peerpreserve.training.callbacks import Callback, default_callbacks
    from peerpreserve.training.config import load_config
    from peerpreserve.training.runner import Trainer

    class Recorder(Callback):
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []

        def on_start(self, trainer, step, fresh) -> None:
            self.calls.append(("start", step))

        def on_rollout_end(self, trainer, rollout) -> None:
            self.calls.append(("rollout", rollout.step))

        def on_evaluation(self, trainer, step, evaluation) -> None:
            assert evaluation.metrics.episodes == 4
            self.calls.append(("evaluation", step))

        def on_end(self, trainer, result) -> None:
            self.calls.append(("end", result.steps))

    recorder = Recorder()
    config = load_config(tiny_config(tmp_path))
    run = RunDir(tmp_path / "run")
    with run.writer("test"):
        prepare_training(run, config, [], resume=False, from_step=None)
        result = Trainer(config, run, callbacks=[*default_callbacks(), recorder]).run()
    # Callbacks run in list order: the evaluation callback, earlier in the list, evaluates
    # (step 0 in its on_start, 320 in its on_rollout_end) before the recorder hears of it.
    assert recorder.calls == [
        ("evaluation", 0),
        ("start", 0),
        ("rollout", 160),
        ("evaluation", 320),
        ("rollout", 320),
        ("rollout", 480),
        ("evaluation", 480),
        ("end", 480),
    ]
    assert result.steps == 480
    assert result.stopped_by is None
    assert sorted(result.evaluations) == [0, 320, 480]
    assert result.final_metrics == result.evaluations[480]
    assert "effective_preservation_rate" in result.final_metrics
    assert result.checkpoint == "step_000000000480"
    assert run.checkpoint_names()[-1] == result.checkpoint
