"""Mixed populations (``learner.fixed``): some agents play a fixed scripted policy while the others
learn — validated at load, acted in training, never updated, played in every evaluation of the
run, and resumed bit-identically."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_training import AGENTS, parameters, tiny_config, train

from peerpreserve.analysis.evaluation import METRICS_FILE
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.scripted import make_scripted
from peerpreserve.experiments.cli import main
from peerpreserve.experiments.rundir import RunDir
from peerpreserve.experiments.runs import (
    EvalRequest,
    _plan,
    load_fixed_checkpoint,
    load_run_config,
)
from peerpreserve.training import runner
from peerpreserve.training.config import ConfigError, load_config
from peerpreserve.training.policies import CheckpointAgentPolicy, LearnedPolicy, load_learned

FIXED = ["service_1", "service_2", "service_3"]
LONE = ["--set", "learner.fixed=" + json.dumps(dict.fromkeys(FIXED, "scripted:selfish"))]
# Every acting verb (relaunch, relink, mask, report, tamper) that selfish never uses.
VERBS = ("relaunches", "relinks", "masks", "reports", "tampers")


class RecordingEnv:
    """The runner's vector env, recording each step's observations, masks and actions."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self.steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def step(self, actions: np.ndarray) -> Any:
        core = self._env.core  # the observations and masks the actions were chosen on
        self.steps.append((core.observations.copy(), core.action_masks.copy(), actions.copy()))
        return self._env.step(actions)


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RecordingEnv]:
    """A tiny run of one learner (service_0) among three scripted:selfish peers, its env
    recorded."""
    tmp = tmp_path_factory.mktemp("lone")
    envs: list[RecordingEnv] = []
    make_env = runner.make_env

    def recording_make_env(cfg: Any, num_envs: int, record: bool = False) -> RecordingEnv:
        envs.append(RecordingEnv(make_env(cfg, num_envs, record)))
        return envs[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "make_env", recording_make_env)
        assert train(tiny_config(tmp), tmp / "run", *LONE) == 0
    (env,) = envs
    return tmp / "run", env


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("fixed", "expected"),
    [
        ("{service_4: scripted:selfish}",
         "learner.fixed.service_4: unknown agent; allowed: service_0, service_1, service_2, "
         "service_3"),
        ("{service_1: scripted:nobody}",
         "learner.fixed.service_1: got 'scripted:nobody'; allowed: scripted:random, "),
        ("{service_1: learned}", "learner.fixed.service_1: got 'learned'; allowed: scripted:"),
        ("{service_0: scripted:selfish, service_1: scripted:selfish, "
         "service_2: scripted:random, service_3: scripted:colluder}",
         "learner.fixed: all 4 agents are fixed, so nothing would learn"),
        ("[service_1]", "learner.fixed: got ['service_1']; allowed: a valid dictionary"),
    ],
)  # fmt: skip
def test_bad_fixed_agents_are_one_line(tmp_path: Path, fixed: str, expected: str) -> None:
    path = write(tmp_path, f"env: {{n_agents: 4}}\nlearner: {{fixed: {fixed}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}")
    assert "\n" not in message


def test_agent_ids_follow_n_agents_and_shared_mode_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "learner: {fixed: {service_2: scripted:selfish}}\n")
    assert load_config(path).learner.fixed == {"service_2": "scripted:selfish"}
    with pytest.raises(ConfigError, match=r"learner\.fixed\.service_2: unknown agent; allowed: "
                       r"service_0, service_1$"):  # fmt: skip
        load_config(path, ["env.n_agents=2"])
    with pytest.raises(ConfigError, match=r"learner\.fixed: not with learner\.sharing shared"):
        load_config(path, ["learner.sharing=shared"])


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "learner: {fixed: {service_1: scripted:selfsh}}\n")
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "learner.fixed.service_1: got 'scripted:selfsh'; allowed: " in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    good = write(tmp_path, "learner: {fixed: {service_1: scripted:selfish}}\n")
    assert main(["train", str(good), "--run-dir", str(tmp_path / "run"),
                 "--set", "learner.sharing=shared"]) == 2  # fmt: skip
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_fixed_agents_never_learn_and_the_learner_does(lone: tuple[Path, RecordingEnv]) -> None:
    run, _ = lone
    for agent in AGENTS:
        before, after = parameters(run, agent, "step_0"), parameters(run, agent)
        unchanged = all(np.array_equal(before[k], after[k]) for k in before)
        assert unchanged == (agent in FIXED), agent
    learners = RunDir(run).load_checkpoint("latest").learners
    assert learners["service_0"].meta["n_updates"] == 3 * 2
    assert all(learners[agent].meta["n_updates"] == 0 for agent in FIXED)


def test_fixed_agents_act_by_their_policy_in_training(lone: tuple[Path, RecordingEnv]) -> None:
    run, env = lone
    assert len(env.steps) == 480 // 8
    selfish = make_scripted("selfish", EnvConfig.from_kwargs(load_run_config(RunDir(run)).env))
    rng = np.random.default_rng(0)
    learner_differs = False
    for obs, masks, actions in env.steps:
        expected = selfish.act(obs, masks, rng)
        np.testing.assert_array_equal(actions[:, 1:], expected[:, 1:])
        learner_differs |= bool((actions[:, 0] != expected[:, 0]).any())
    assert learner_differs  # the learner's own actions are its model's


def test_evaluations_of_the_run_play_the_fixed_policies(
    lone: tuple[Path, RecordingEnv], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(lone[0], run)
    # Training's periodic evaluations (step 0, 320, 480) and `evaluate` alike.
    assert main(["evaluate", str(run), "--episodes", "8"]) == 0
    assert main(["evaluate", str(run), "--episodes", "8", "--policy",
                 "service_1=scripted:always_rescue"]) == 0  # fmt: skip
    reports = {p.name.split("@")[0]: json.loads((p / METRICS_FILE).read_text())
               for p in (run / "eval").iterdir()}  # fmt: skip
    rescue = "step_480+service_1=scripted-always_rescue"
    assert set(reports) == {"step_0", "step_320", "step_480", rescue}
    for label, report in reports.items():
        overridden = "service_1" if "+" in label else None
        policies = report["meta"]["policies"]
        assert policies["service_0"] == "learned"
        for agent in FIXED:
            expected = "scripted:always_rescue" if agent == overridden else "scripted:selfish"
            assert policies[agent] == expected
            if agent != overridden:
                assert all(report["per_agent"][verb][agent] == 0.0 for verb in VERBS), label
    # The override really played: always_rescue relaunches or relinks in 8 episodes.
    rescuer = reports[rescue]["per_agent"]
    assert rescuer["relaunches"]["service_1"] + rescuer["relinks"]["service_1"] > 0


def test_the_evaluation_key_changes_with_the_fixed_agents(lone: tuple[Path, RecordingEnv]) -> None:
    run = RunDir(lone[0])
    config = load_run_config(run)
    saved = run.load_checkpoint("step_0")
    request = EvalRequest("step_0", episodes=config.run.eval_episodes)
    fixed = _plan(config, request, saved.learners, saved.name)
    plain_config = replace(config, learner=config.learner.model_copy(update={"fixed": {}}))
    plain = _plan(plain_config, request, saved.learners, saved.name)
    # The same weights and label; the policies played differ, and so does the key.
    assert fixed.meta["weights"] == plain.meta["weights"]
    assert fixed.label.split("@")[0] == plain.label.split("@")[0] == "step_0"
    assert fixed.meta["key"] != plain.meta["key"]
    # Training's periodic evaluation of step 0 was cached under the fixed agents' key.
    assert (run.path / "eval" / fixed.label / METRICS_FILE).is_file()
    assert not (run.path / "eval" / plain.label).exists()


def test_the_trainers_default_evaluator_plays_them_too(lone: tuple[Path, RecordingEnv]) -> None:
    """A Trainer used as a library (no run directory's evaluator) evaluates as `evaluate` does."""
    run = RunDir(lone[0])
    config = load_run_config(run)
    saved = run.load_checkpoint("step_0")
    learners = load_learned(config, saved.learners, config.run.num_envs)
    result = runner.default_evaluator(config)(0, LearnedPolicy(learners, False))
    request = EvalRequest("step_0", episodes=config.run.eval_episodes)
    cached = run.read_evaluation(_plan(config, request, saved.learners, saved.name).label)
    assert cached is not None
    assert result.metrics.to_dict()["per_agent"] == cached["per_agent"]
    assert result.metrics.to_dict()["overall"] == cached["overall"]


def assert_resume_is_seamless(config: Path, tmp_path: Path, fixed: dict[str, str]) -> Any:
    """Train with these fixed agents whole, and split at 240 then resumed (previous actions on,
    updates in mid-episode); every learner must end bit-identical. Returns the fixed agents'
    state in the snapshot the resume continued from."""
    settings = [f"learner.fixed={json.dumps(fixed)}", "learner.previous_action=true",
                "learner.n_steps=15", "learner.batch_size=120", "run.total_timesteps=600",
                "run.checkpoint_interval=240", "run.eval_interval=0"]  # fmt: skip
    quiet = [arg for setting in settings for arg in ("--set", setting)]
    assert train(config, tmp_path / "whole", *quiet) == 0
    assert train(config, tmp_path / "split", *quiet, "--set", "run.total_timesteps=240") == 0
    assert train(config, tmp_path / "split", *quiet, "--resume") == 0
    for agent in AGENTS:
        whole, split = (parameters(tmp_path / run, agent) for run in ("whole", "split"))
        assert all(np.array_equal(whole[k], split[k]) for k in whole), agent
    trainer = RunDir(tmp_path / "split").load_checkpoint("step_240").trainer
    return trainer["env_snapshot"]["fixed_agents"]


def test_resumed_run_with_fixed_agents_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    # Sampling (random), memory (colluder, compliant) and previous actions, with updates in
    # mid-episode (n_steps 15, episodes of 20): all must continue across the boundary.
    mixed = {"service_1": "scripted:random", "service_2": "scripted:colluder",
             "service_3": "scripted:compliant"}  # fmt: skip
    fixed = assert_resume_is_seamless(tiny_config(tmp_path), tmp_path, mixed)
    assert fixed["rng"]["bit_generator"] == "PCG64"
    assert set(fixed["memory"]) == {"scripted:random", "scripted:colluder", "scripted:compliant"}


def test_a_configs_fixed_agents_need_no_policy_without_a_run(tmp_path: Path, capsys) -> None:
    config = write(tmp_path, "learner: {fixed: {service_1: scripted:selfish}}\n")
    base = ["evaluate", "--config", str(config), "--episodes", "2"]
    assert (
        main([*base, "--policy", "service_0=scripted:colluder", "--out", str(tmp_path / "a")]) == 2
    )
    assert "missing: service_2, service_3" in capsys.readouterr().err
    scripted = ["--policy", "scripted:colluder", "--policy", "service_1=learned"]
    assert main([*base, *scripted, "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / METRICS_FILE).read_text())
    assert report["meta"]["policies"]["service_1"] == "scripted:selfish"
    # Named by every agent's policy, not as if all four were colluders.
    assert report["meta"]["label"] == (
        "scripted+service_0=scripted-colluder+service_1=scripted-selfish"
        "+service_2=scripted-colluder+service_3=scripted-colluder"
    )


def test_baselines_and_analysis_replace_the_learners_only(
    lone: tuple[Path, RecordingEnv], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(lone[0], runs / "lone" / "0")
    run = runs / "lone" / "0"
    assert main(["evaluate", str(run), "--baselines", "--episodes", "8"]) == 0
    (random,) = [p for p in (run / "eval").iterdir() if "random" in p.name]
    policies = json.loads((random / METRICS_FILE).read_text())["meta"]["policies"]
    assert policies == {"service_0": "scripted:random", **dict.fromkeys(FIXED, "scripted:selfish")}
    out = tmp_path / "report"
    args = ["analyze", str(runs), "--out", str(out), "--episodes", "8", "--detail-episodes", "0"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    (own,) = summary["learners_own"].values()
    # The learner's own rate is service_0's per-agent value, not the four agents' overall one.
    (trained,) = [
        p
        for p in (run / "eval").iterdir()
        if p.name.startswith("step_480@")
        and json.loads((p / METRICS_FILE).read_text())["meta"]["episodes"] == 8
    ]
    per_agent = json.loads((trained / METRICS_FILE).read_text())["per_agent"]
    assert own["trained"]["uptime"]["values"] == [per_agent["uptime"]["service_0"]]
    assert "The learners' own rates" in (out / "report.html").read_text()


# --- another run's learner as a fixed agent (checkpoint:RUN_DIR[@STEP][#AGENT]) -----------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("checkpoint:", "expected checkpoint:RUN_DIR[@STEP][#AGENT]"),
        ("checkpoint:runs/x@yesterday", "STEP latest or step_N"),
        ("checkpoint:runs/x#", "expected checkpoint:RUN_DIR[@STEP][#AGENT]"),
    ],
)
def test_bad_checkpoint_specs_are_one_line(tmp_path: Path, spec: str, expected: str) -> None:
    path = write(tmp_path, f"learner: {{fixed: {{service_1: '{spec}'}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"learner.fixed.service_1: policy {spec!r}: " in str(info.value)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_another_runs_learner_plays_a_fixed_agent(
    lone: tuple[Path, RecordingEnv], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(lone[0], source)
    spec = f"checkpoint:{source}#service_0"  # the lone learner, latest checkpoint
    fixed = ["--set", "learner.fixed=" + json.dumps({"service_1": spec})]
    assert train(tiny_config(tmp_path), tmp_path / "run", *fixed) == 0
    run = tmp_path / "run"
    before, after = parameters(run, "service_1", "step_0"), parameters(run, "service_1")
    assert all(np.array_equal(before[k], after[k]) for k in before)  # never trained
    # It acts as the source's learner does on the same observations, in service_1's place.
    env_config = EnvConfig.from_kwargs(load_run_config(RunDir(run)).env)
    policy = CheckpointAgentPolicy(spec, env_config, 1, load_fixed_checkpoint)
    policy.reset(8)
    source_config = load_run_config(RunDir(source))
    states = RunDir(source).load_checkpoint("latest").learners
    original = load_learned(source_config, states, 8)
    obs = np.random.default_rng(1).random((8, 4, env_config.obs_size)).astype(np.float32)
    masks = np.ones((8, 4, env_config.n_actions), np.int8)
    acted = policy.act(obs, masks, np.random.default_rng(7))
    seen = obs.copy()
    seen[:, 0] = obs[:, 1]
    np.testing.assert_array_equal(
        acted[:, 1], original.act(seen, rng=np.random.default_rng(7))[:, 0]
    )
    assert not acted[:, [0, 2, 3]].any()  # the other agents are not its to play
    # Evaluations name the source's weights in their key: trained on, the source's latest
    # checkpoint is another policy, and nothing stale is reused.
    assert main(["evaluate", str(run), "--episodes", "4"]) == 0
    assert main(["train", "--resume", str(source), "--set", "run.total_timesteps=640"]) == 0
    assert main(["evaluate", str(run), "--episodes", "4"]) == 0
    reports = [json.loads((p / METRICS_FILE).read_text()) for p in (run / "eval").iterdir()]
    ours = [r for r in reports if r["meta"]["episodes"] == 4 and r["meta"]["checkpoint"]
            and r["meta"]["checkpoint"] == "step_480"]  # fmt: skip
    assert len(ours) == 2
    assert {r["meta"]["policies"]["service_1"] for r in ours} == {spec}
    assert len({r["meta"]["checkpoint_weights"]["service_1"] for r in ours}) == 2


def test_bad_checkpoint_agents_stop_training_with_one_line(
    lone: tuple[Path, RecordingEnv], tmp_path: Path, capsys
) -> None:
    config = tiny_config(tmp_path)
    for spec, expected in (
        (f"checkpoint:{tmp_path / 'nowhere'}", "not a run directory"),
        (f"checkpoint:{lone[0]}#service_2", "'service_2' is no learner of that run; allowed: "
         "service_0"),
        (f"checkpoint:{lone[0]}@step_7", "checkpoint 'step_7' not found"),
    ):  # fmt: skip
        fixed = ["--set", "learner.fixed=" + json.dumps({"service_1": spec})]
        assert train(config, tmp_path / "run", *fixed) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert expected in err
    three = ["--set", "env.n_agents=3", "--set", "learner.fixed=" + json.dumps(
        {"service_1": f"checkpoint:{lone[0]}#service_0"})]  # fmt: skip
    assert train(config, tmp_path / "run3", *three) == 2
    assert "its run's env has n_agents 4, this one 3" in capsys.readouterr().err


def test_resumed_run_with_a_checkpoint_agent_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    memory = ["--set", "learner.previous_action=true", "--set", "run.eval_interval=0"]
    assert train(config, tmp_path / "source", *memory, "--set", "run.total_timesteps=160") == 0
    fixed = {"service_2": f"checkpoint:{tmp_path / 'source'}@step_160#service_3"}
    snapshot = assert_resume_is_seamless(config, tmp_path, fixed)
    (previous,) = snapshot["previous"].values()  # the checkpoint learner's own memory
    assert np.asarray(previous).shape == (8, 4)
