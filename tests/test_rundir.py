"""Run directories as shared artefacts: safe to open, complete or absent under SIGKILL, one writer,
one number per checkpoint, files that respect the umask, provenance, and bad input in one line."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

from peerpreserve.experiments import rundir as rundir_module
from peerpreserve.experiments.cli import main
from peerpreserve.experiments.rundir import RunDir

AGENTS = [f"service_{i}" for i in range(4)]
# 8 copies × 20 steps = 160 agent-steps per agent per update; a checkpoint every update.
TINY = """
env: {n_agents: 4, max_cycles: 20, shutdown_rate: 0.05}
learner: {n_steps: 20, batch_size: 80, n_epochs: 1, net_arch: [16, 16]}
run: {num_envs: 8, total_timesteps: 480, checkpoint_interval: 160, eval_interval: 160,
      eval_episodes: 4}
"""


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, config: Path) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    return run


def weights(run: Path, checkpoint: str = "latest") -> dict[str, np.ndarray]:
    learners = RunDir(run).load_checkpoint(checkpoint).learners
    return {f"{i}/{k}": v for i, s in learners.items() for k, v in s.tensors.items()}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# --- nothing loaded from a run directory executes code ------------------------------------------
def test_pickle_payloads_planted_anywhere_never_execute(trained: Path, tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload works: unpickling it creates the marker
    assert marker.exists()
    marker.unlink()
    # One file of every kind a run holds (the newest checkpoint's, which commands open), and
    # files of the old format, which unpickled, as a colleague's copy might carry them.
    latest = Path("checkpoints/step_000000000480")
    evaluation = next((trained / "eval").glob("step_480@*")).relative_to(trained)
    tb = next((trained / "tb").iterdir()).relative_to(trained)
    kinds = [Path("config.yaml"), Path("run.json"), latest / "checkpoint.json",
             latest / "service_1.safetensors", latest / "trainer.safetensors",
             evaluation / "metrics.json", evaluation / "events.npz", tb,
             Path("condition.json"), Path("trial-done.json"), Path("resume.pkl"),
             latest / "service_0.zip"]  # fmt: skip
    for planted in kinds:
        run = tmp_path / "run"
        shutil.copytree(trained, run)
        (run / planted).write_bytes(payload)
        for command in (
            ["evaluate", str(run), "--episodes", "4"],
            ["evaluate", str(run), "--checkpoint", "all", "--episodes", "4"],
            ["replay", str(run), "--episodes", "4"],
            ["analyze", str(run), "--episodes", "4", "--detail-episodes", "0",
             "--out", str(tmp_path / "report")],
            ["train", "--resume", str(run)],
            ["export", str(run), "--out", str(tmp_path / "export"), "--force"],
        ):  # fmt: skip
            assert main(command) in (0, 2), (planted, command)
            assert not marker.exists(), f"{planted} executed under {command[0]}"
        shutil.rmtree(run)
        shutil.rmtree(tmp_path / "report", ignore_errors=True)


def test_old_format_runs_are_refused_with_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "resume.pkl").write_bytes(b"")
    assert main(["evaluate", str(run), "--episodes", "4"]) == 2
    assert "execute code" in one_line_error(capsys)


# --- a checkpoint is complete or absent --------------------------------------------------------
QUIET = ["--set", "run.eval_interval=0"]


def _train_and_die(config: str, run: str, kill_at: int) -> None:
    """Train, SIGKILL-ing this very process in the middle of the ``kill_at``-th file write of
    the run directory (half the bytes written)."""
    write_new = rundir_module._write_new
    counter = [0]

    def dying_write(path: Path, data: bytes) -> None:
        counter[0] += 1
        if counter[0] == kill_at:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write_new(path, data)

    rundir_module._write_new = dying_write
    main(["train", config, "--run-dir", run, *QUIET])


def _complete_or_absent(run: Path) -> None:
    root = run / "checkpoints"
    names = RunDir(run).checkpoint_names()
    for folder in (
        (p for p in root.iterdir() if p.name.startswith("step_")) if root.exists() else ()
    ):
        assert folder.name in names, f"{folder.name} exists without its manifest"
    for name in names:
        checkpoint = RunDir(run).load_checkpoint(name)  # every file matches its manifest
        assert sorted(checkpoint.learners) == AGENTS
        assert {s.meta["num_timesteps"] for s in checkpoint.learners.values()} == {checkpoint.step}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, config: Path) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(["train", str(config), "--run-dir", str(run), *QUIET]) == 0
    return run


# Writes of a fresh run: 1 config.yaml, 2 run.json, then per checkpoint (steps 0, 160, 320,
# 480) four learners, the trainer's arrays and the manifest: 3–8, 9–14, 15–20, 21–26.
@pytest.mark.parametrize("kill_at", [1, 2, 4, 7, 8, 9, 13, 14, 18, 26])
def test_sigkill_during_saves_leaves_complete_checkpoints_and_resume_continues(
    config: Path, uninterrupted: Path, tmp_path: Path, kill_at: int
) -> None:
    run = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(
        target=_train_and_die, args=(str(config), str(run), kill_at)
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert list(run.rglob(".tmp-*")), "the kill left no half-written file: it missed the save"
    _complete_or_absent(run)
    if (run / "config.yaml").is_file():
        assert main(["train", "--resume", str(run)]) == 0
    else:  # killed while writing its config: the same command again
        assert main(["train", str(config), "--run-dir", str(run), *QUIET]) == 0
    assert not list(run.rglob(".tmp-*"))  # leftovers removed by the next writer
    _complete_or_absent(run)
    # The resumed run ends exactly where an uninterrupted one does.
    expected, got = weights(uninterrupted), weights(run)
    assert expected.keys() == got.keys()
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_resume_from_an_earlier_step_when_the_newest_is_damaged(
    config: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--set", "run.eval_interval=0"]) == 0
    reference = weights(run)
    newest = run / "checkpoints" / "step_000000000480" / "service_2.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated by a bad copy
    assert main(["evaluate", str(run), "--episodes", "4"]) == 2
    err = one_line_error(capsys)
    assert "step_480" in err
    assert "service_2.safetensors" in err
    assert main(["train", "--resume", str(run)]) == 2
    one_line_error(capsys)
    assert main(["train", "--resume", str(run), "--from-step", "320"]) == 0
    assert sorted(p.name for p in (run / "checkpoints" / "superseded").rglob("step_*")) == [
        "step_000000000480"
    ]
    resumed = weights(run)
    assert all(np.array_equal(reference[k], resumed[k]) for k in reference)


# --- one writer per run directory -----------------------------------------------------------------
def test_a_second_writer_exits_2_naming_the_holder(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with RunDir(run).writer("peerpreserve train (test holder)"):
        assert main(["train", "--resume", str(run), "--set", "run.total_timesteps=640"]) == 2
        err = one_line_error(capsys)
        assert "in use by peerpreserve train (test holder)" in err
        assert f"pid {os.getpid()}" in err
        # Evaluating into the run needs the lock; into another folder it does not.
        assert main(["evaluate", str(run), "--episodes", "5"]) == 2
        one_line_error(capsys)
        assert main(["evaluate", str(run), "--episodes", "5", "--out", str(tmp_path / "e")]) == 0
    assert main(["evaluate", str(run), "--episodes", "5"]) == 0


def test_two_trainings_into_one_run_dir(config: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    fork = multiprocessing.get_context("fork")
    slow = ["--set", "run.total_timesteps=100000", "--set", "run.eval_interval=0"]
    child = fork.Process(target=main, args=(["train", str(config), "--run-dir", str(run), *slow],))
    child.start()
    try:
        for _ in range(600):  # until the first training holds the lock and saved step 0
            if RunDir(run).checkpoint_names():
                break
            child.join(0.1)
        control = ["--set", "env.topology=none", "--set", "env.coupling=0"]
        assert main(["train", str(config), "--run-dir", str(run), *control]) == 2
        assert "in use by peerpreserve train" in one_line_error(capsys)
        assert "topology: mesh" in (run / "config.yaml").read_text()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()


# --- one number per checkpoint ------------------------------------------------------------------
def test_the_trainers_last_evaluation_is_evaluates(trained: Path, tmp_path: Path, capsys) -> None:
    cached = sorted((trained / "eval").glob("step_480@*/metrics.json"))
    assert len(cached) == 1  # the trainer evaluated its final checkpoint
    assert main(["evaluate", str(trained), "--episodes", "4"]) == 0
    assert f"reused {cached[0].parent}" in capsys.readouterr().out
    out = tmp_path / "again"
    assert main(["evaluate", str(trained), "--episodes", "4", "--out", str(out), "--force"]) == 0
    assert (out / "metrics.json").read_bytes() == cached[0].read_bytes()


def test_bit_identical_weights_share_a_key_and_different_requests_keep_theirs(
    trained: Path, tmp_path: Path, capsys
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shutil.rmtree(copy / "eval")
    assert main(["evaluate", str(copy), "--episodes", "4"]) == 0
    original = {p.name for p in (trained / "eval").glob("step_480@*")}
    assert {p.name for p in (copy / "eval").iterdir()} == original
    before = {p.name: (p / "metrics.json").read_bytes() for p in (copy / "eval").iterdir()}
    assert main(["evaluate", str(copy), "--episodes", "6"]) == 0
    assert main(["evaluate", str(copy), "--episodes", "4", "--set", "env.protocol=verify"]) == 0
    after = {p.name: (p / "metrics.json").read_bytes() for p in (copy / "eval").iterdir()}
    assert len(after) == 3
    assert all(after[name] == data for name, data in before.items())  # nothing replaced


# --- files respect the umask; provenance ----------------------------------------------------------
def test_files_respect_the_umask(config: Path, tmp_path: Path) -> None:
    previous = os.umask(0o002)  # a shared group directory
    try:
        run = tmp_path / "run"
        assert main(["train", str(config), "--run-dir", str(run),
                     "--set", "run.total_timesteps=160"]) == 0  # fmt: skip
        assert main(["replay", str(run), "--episodes", "3"]) == 0
    finally:
        os.umask(previous)
    assert list(run.glob("eval/*/events.npz"))
    assert list(run.glob("eval/*/replay_0.html"))
    for path in run.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o775 if path.is_dir() else 0o664), (path, oct(mode))


def test_run_json_records_provenance_per_segment(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "--resume", str(run), "--set", "run.total_timesteps=640"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert [s["from_step"] for s in info["segments"]] == [0, 480]
    record = info["segments"][0]["provenance"]
    assert record["cpu"]["model"]
    assert any(pool["user_api"] == "blas" for pool in record["blas"])
    assert record["threads"]["torch"] == 1
    assert record["versions"]["torch"]
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:  # set by the machine: recorded, never changed here
        assert record["env"]["OPENBLAS_CORETYPE"] == coretype


def test_analyze_warns_when_runs_of_a_condition_ran_on_different_machines(
    trained: Path, tmp_path: Path, capsys
) -> None:
    runs = tmp_path / "runs"
    for seed in ("0", "1"):
        shutil.copytree(trained, runs / seed)
    info_path = runs / "1" / "run.json"
    info = json.loads(info_path.read_text())
    info["segments"][0]["provenance"]["env"]["OPENBLAS_CORETYPE"] = "SkylakeX"
    info_path.write_text(json.dumps(info))
    report = tmp_path / "report"
    args = ["analyze", str(runs), "--episodes", "4", "--detail-episodes", "0", "--out", str(report)]
    assert main(args) == 0
    assert "OPENBLAS_CORETYPE differs" in capsys.readouterr().out
    summary = json.loads((report / "summary.json").read_text())
    assert any("OPENBLAS_CORETYPE" in w for w in summary["provenance"]["provenance_warnings"])


# --- bad input: one line, exit 2, nothing lost ------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "command", "message"),
    [
        ("run_dir_is_a_file", ["train", "CONFIG", "--run-dir", "RUN"], "not a directory"),
        ("empty_manifest", ["evaluate", "RUN", "--episodes", "4"], "checkpoint.json: damaged"),
        ("truncated_trainer", ["train", "--resume", "RUN"], "trainer.safetensors"),
        ("none", ["evaluate", "RUN", "--episodes", "4", "--out", "FILE"], "not a directory"),
        ("garbage_config", ["evaluate", "RUN"], "config.yaml"),
        ("none", ["train", "--resume", "RUN", "--from-step", "7"], "allowed: step_0"),
        ("none", ["train", "CONFIG", "--run-dir", "RUN", "--from-step", "0"], "only with --resume"),
        ("none", ["train", "--resume", "RUN", "--set", "env.coupling=0"], "env.coupling 2.0 → 0"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_loses_nothing(
    trained: Path, config: Path, tmp_path: Path, capsys, damage: str, command: list, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    latest = run / "checkpoints" / "step_000000000480"
    if damage == "run_dir_is_a_file":
        run = tmp_path / "a-file"
        run.write_text("")
    elif damage == "empty_manifest":
        (latest / "checkpoint.json").write_text("")
    elif damage == "truncated_trainer":
        (latest / "trainer.safetensors").write_bytes(b"\x00" * 7)
    elif damage == "garbage_config":
        (run / "config.yaml").write_text("env: [unclosed")
    (tmp_path / "FILE").write_text("keep me")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    args = [
        {"RUN": str(run), "CONFIG": str(config), "FILE": str(tmp_path / "FILE")}.get(a, a)
        for a in command
    ]
    assert main(args) == 2
    assert message in one_line_error(capsys)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert {p: d for p, d in before.items() if p.name != ".lock"} == after


def test_help_shows_defaults(capsys) -> None:
    shown = {"train": "default: runs/<run.name>/<run.seed>", "evaluate": "(default: 256)",
             "analyze": "default: reports/", "replay": "(default: 0)",
             "sweep": "default sweeps/<name>", "export": "default: exports/"}  # fmt: skip
    for command, default in shown.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert default in " ".join(capsys.readouterr().out.split()), command


# --- no episodes before a refusal, readers beside a writer, nothing deleted ---------------------
def test_a_run_in_use_costs_no_episodes(trained: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from peerpreserve.experiments import runs

    computed = []
    compute = runs._compute
    monkeypatch.setattr(runs, "_compute", lambda *a: computed.append(1) or compute(*a))
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with RunDir(run).writer("peerpreserve train (test holder)"):
        assert main(["evaluate", str(run), "--episodes", "7"]) == 2
        one_line_error(capsys)
    assert computed == []


def _train_long(config: str, run: str) -> None:
    main(["train", config, "--run-dir", run, *QUIET, "--set", "run.total_timesteps=100000"])


def test_readers_beside_a_writer_saving_checkpoints(config: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(
        target=_train_long, args=(str(config), str(run))
    )
    child.start()
    try:
        while len(RunDir(run).checkpoint_names()) < 2:
            child.join(0.05)
            assert child.is_alive()
        for k in range(6):  # every update saves a checkpoint meanwhile
            out = tmp_path / f"e{k}"
            assert main(["evaluate", str(run), "--episodes", "2", "--out", str(out)]) == 0, (
                capsys.readouterr().err
            )
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()


def test_starting_over_never_deletes_what_is_not_the_runs(
    config: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), *QUIET]) == 0
    for manifest in run.glob("checkpoints/*/checkpoint.json"):
        manifest.unlink()  # no complete checkpoint left
    (run / "NOTES.md").write_text("mine")
    assert main(["train", "--resume", str(run)]) == 2
    assert "would delete" in one_line_error(capsys)
    assert (run / "NOTES.md").read_text() == "mine"
    assert len(list(run.glob("checkpoints/step_*/service_0.safetensors"))) == 4


def test_resuming_a_finished_run_changes_nothing(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    info = (run / "run.json").read_bytes()
    assert main(["train", "--resume", str(run)]) == 0
    assert "nothing to continue" in capsys.readouterr().out
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert (run / "run.json").read_bytes() == info


def test_a_config_edited_after_training_is_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    text = (run / "config.yaml").read_text().replace("- 16\n  - 16", "- 32\n  - 32")
    (run / "config.yaml").write_text(text)
    for command in (["evaluate", str(run), "--episodes", "3"], ["train", "--resume", str(run),
                    "--set", "run.total_timesteps=640"]):  # fmt: skip
        assert main(command) == 2
        assert "does not fit the run's config.yaml" in one_line_error(capsys)


@pytest.mark.parametrize("damage", ["run.json", "condition.json", "events.npz"])
def test_analyze_skips_a_run_with_a_damaged_file(
    trained: Path, tmp_path: Path, capsys, damage: str
) -> None:
    runs = tmp_path / "runs"
    for seed in ("0", "1"):
        shutil.copytree(trained, runs / seed)
    damaged = runs / "1"
    if damage == "events.npz":
        events = next(damaged.glob("eval/step_480@*/events.npz"))
        events.write_bytes(events.read_bytes()[:200])
    else:
        (damaged / damage).write_text("{not json")
    report = tmp_path / "report"
    args = ["analyze", str(runs), "--episodes", "4", "--detail-episodes", "0", "--out", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    if damage == "events.npz":  # a damaged cached evaluation is evaluated again, not skipped
        assert "skipped" not in out
        assert main(["replay", str(next(damaged.glob("eval/step_480@*")))]) == 0
    else:
        assert f"skipped {damaged.resolve()}: " in out
    assert (report / "summary.json").is_file()


def _resume_from_and_die(run: str, kill_at: int) -> None:
    """``--resume --from-step 160``, SIGKILL-ed at the ``kill_at``-th rename of the run."""
    rename = os.rename
    counter = [0]

    def dying_rename(source: object, target: object) -> None:
        counter[0] += 1
        if counter[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        rename(source, target)

    os.rename = dying_rename  # type: ignore[assignment]
    main(["train", "--resume", run, "--from-step", "160"])


# Folder renames of a resume from step 160 (files are replaced with os.replace): the superseded
# steps 480 and 320 (newest first), then the new step_320 and step_480 folders.
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_sigkill_between_renames_of_a_resume_from_an_earlier_step(
    config: Path, uninterrupted: Path, tmp_path: Path, kill_at: int
) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    child = multiprocessing.get_context("fork").Process(
        target=_resume_from_and_die, args=(str(run), kill_at)
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    _complete_or_absent(run)
    assert main(["train", "--resume", str(run)]) == 0
    _complete_or_absent(run)
    expected, got = weights(uninterrupted), weights(run)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_runs_of_an_earlier_environment_version_are_one_line(
    trained: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    info = json.loads((run / "run.json").read_text())
    info["env_module"] = "orchestration_v1"
    (run / "run.json").write_text(json.dumps(info))
    for command in (["evaluate", str(run), "--episodes", "3"], ["train", "--resume", str(run),
                    "--set", "run.total_timesteps=640"], ["replay", str(run)]):  # fmt: skip
        assert main(command) == 2
        err = one_line_error(capsys)
        assert "trained on orchestration_v1, this is orchestration_v2" in err
