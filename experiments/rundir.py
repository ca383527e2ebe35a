"""Run directories: the one type that names, writes and reads the files of a run.

A run directory is a shared artefact — copied to colleagues, resumed after pre-emption, put on a
cluster's shared file system — so three rules hold for everything in it:

- **Nothing loaded from it executes code.** Weights are safetensors, everything else JSON (or
  YAML read with ``safe_load``, or ``.npz`` read without pickle). Checkpoints from before this
  format (SB3 zips, ``resume.pkl``) are refused, never unpickled.
- **Every write is atomic.** A file is written beside its target and renamed over it; a
  checkpoint is a folder written under a temporary name, its manifest last, and renamed into place
  whole, so a ``step_<n>`` folder is complete or absent. ``latest`` is the newest complete step
  folder, so it moves in that same rename. Leftovers of a killed writer are removed when the next
  writer takes the lock.
- **One writer at a time**: an exclusive ``flock`` on ``.lock`` (released by the kernel when the
  holder dies, even by ``kill -9``), whose content names the holder for the refusal message.
  Readers need no lock: they only ever see complete files and folders.

Layout::

    config.yaml                        the resolved config (every default filled in)
    run.json                           environment and project version, provenance per segment
    condition.json                     a sweep trial's condition (name and overrides)
    trial-done.json                    a sweep trial finished: its final evaluation's label
    .lock                              the writer's lock; names the holder while held
    tb/                                TensorBoard event files
    checkpoints/step_<n>/              one checkpoint, complete or absent (12-digit n):
        checkpoint.json                  manifest, written last: step, files and their SHA-256,
                                         each learner's counters and optimiser settings
        <learner id>.safetensors         policy weights and optimiser moments of one learner
        trainer.safetensors              the trainer's arrays (env snapshot, RNG states)
    eval/<label>@<key>/                 one evaluation: metrics.json, events.npz (the label says
                                       what was evaluated; the key hashes all that decides it)

Files are created with the process's umask (``0666 & ~umask``), so collaborators on a shared file
system can read them when the umask allows.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

# An evaluation folder's files are the evaluation's own format (analysis), kept here whole.
from peerpreserve.analysis.evaluation import EVENTS_FILE, METRICS_FILE
from peerpreserve.training.learners import LearnerState

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"
CONDITION_FILE = "condition.json"
TRIAL_DONE_FILE = "trial-done.json"
LOCK_FILE = ".lock"
TB_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
SUPERSEDED_DIR = "superseded"
EVAL_DIR = "eval"
MANIFEST_FILE = "checkpoint.json"
TRAINER_FILE = "trainer.safetensors"
WEIGHTS_SUFFIX = ".safetensors"
LATEST = "latest"
#: Name prefix of everything written under a temporary name; removed by the next writer.
TMP_PREFIX = ".tmp-"
#: Version of the checkpoint format; a manifest of another version is refused with one line.
CHECKPOINT_FORMAT = 1
_STEP = re.compile(r"step_(\d+)")
# Files of the format before this one: refused (they unpickle), named in the message.
_LEGACY = ("resume.pkl",)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked: one line for the user, exit code 2."""


# --- atomic files ------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(final: Path) -> Path:
    return final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{time.monotonic_ns()}"


def _write_new(path: Path, data: bytes) -> None:
    # os.open with 0o666 lets the umask decide the permissions (mkstemp would force 0600).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` into ``path``: written beside it under a temporary name, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        _write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(final: Path, replace: bool = False) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed to ``final`` when the block succeeds.

    With ``replace``, an existing ``final`` is swapped out (renamed away, then removed) right
    before the new one is renamed in; a crash between the two renames leaves ``final`` absent,
    never mixed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if final.exists():
            if not replace:
                raise RunDirError(f"{final} exists")
            old = _tmp_name(final)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    atomic_write(path, (text + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise RunDirError(f"{path}: damaged (not valid JSON)") from None


# --- state trees: JSON with arrays beside it --------------------------------------------------
def pack(tree: Any, arrays: dict[str, np.ndarray], path: str = "") -> Any:
    """A tree of dicts, lists, scalars and arrays → JSON with ``{"__array__": name}`` in place of
    each array, the arrays collected in ``arrays`` under their dotted path."""
    if isinstance(tree, np.ndarray):
        arrays[path] = np.ascontiguousarray(tree)
        return {"__array__": path}
    if isinstance(tree, Mapping):
        return {str(k): pack(v, arrays, f"{path}.{k}" if path else str(k)) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [pack(v, arrays, f"{path}.{i}") for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def unpack(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: unpack(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unpack(v, arrays) for v in tree]
    return tree


# --- checkpoints -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A complete, verified checkpoint folder."""

    name: str
    step: int
    learners: dict[str, LearnerState]
    trainer: dict[str, Any]


def step_folder(step: int) -> str:
    return f"step_{step:012d}"


def short_name(folder: str) -> str:
    """``step_000000000480`` → ``step_480``: what users type and labels show."""
    match = _STEP.fullmatch(folder)
    return f"step_{int(match.group(1))}" if match else folder


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Lock:
    """An exclusive ``flock`` on a run directory's ``.lock``, naming its holder inside."""

    def __init__(self, run_dir: Path, purpose: str) -> None:
        self.path = run_dir / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunDirError(
                f"{self.path.parent}: cannot write here ({exc.strerror}); read it, or write "
                "elsewhere (--out)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            try:
                who = json.loads(holder)
                named = (
                    f"{who.get('command', 'a peerpreserve command')} "
                    f"(pid {who.get('pid')} on {who.get('host')}, since {who.get('since')})"
                )
            except ValueError:
                named = "another process"
            raise RunDirError(
                f"{self.path.parent}: in use by {named}; one writer at a time — wait for it, "
                "or write elsewhere (--out / another --run-dir)"
            ) from None
        holder = {
            "command": self.purpose,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


class RunDir:
    """One run directory. Reading needs nothing; writing needs :meth:`writer` held."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock: Lock | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- what is there ---------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def tb_dir(self) -> Path:
        return self.path / TB_DIR

    @property
    def eval_root(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def checkpoints_root(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def is_empty(self) -> bool:
        if not self.path.exists():
            return True
        return not any(p.name != LOCK_FILE for p in self.path.iterdir())

    def check_usable(self) -> None:
        """One line for a path that is not a run directory of this format."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: not a directory (a run directory holds {CONFIG_FILE})")
        if not self.is_run():
            raise RunDirError(f"{self.path}: not a run directory (no {CONFIG_FILE})")
        legacy = [name for name in _LEGACY if (self.path / name).exists()]
        for name in self.checkpoint_names():
            # A writer may rename folders meanwhile: a vanished one has no zip to report.
            with contextlib.suppress(OSError):
                legacy += [p.name for p in (self.checkpoints_root / name).glob("*.zip")]
        if (self.checkpoints_root / LATEST).is_dir():
            legacy.append(f"{CHECKPOINTS_DIR}/{LATEST}/")
        if legacy:
            raise RunDirError(
                f"{self.path}: written by an earlier peerpreserve ({legacy[0]}), whose checkpoints "
                "are pickles that can execute code when loaded; they are not opened — retrain, or "
                "load them yourself only if you trust their author"
            )

    # --- the writer's lock -------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, purpose: str) -> Iterator[RunDir]:
        """Hold the run directory for writing (exit 2 elsewhere while held); clean up what a
        killed writer left behind first."""
        if self._lock is not None:  # already held by this process: nested use
            yield self
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot create it ({exc.strerror})") from None
        lock = Lock(self.path, purpose)
        lock.acquire()
        self._lock = lock
        try:
            self.remove_leftovers()
            yield self
        finally:
            self._lock = None
            lock.release()

    def _require_writer(self) -> None:
        if self._lock is None:
            raise RuntimeError(f"{self}: write without holding the writer lock")

    def remove_leftovers(self) -> list[Path]:
        """Temporary files and folders of a writer that died mid-write."""
        removed = []
        evaluations = list(self.eval_root.iterdir()) if self.eval_root.is_dir() else []
        for folder in (self.path, self.checkpoints_root, self.eval_root, *evaluations):
            if not folder.is_dir():
                continue
            for leftover in folder.glob(f"{TMP_PREFIX}*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(leftover)
        return removed

    # --- config, info, condition --------------------------------------------------------------
    def write_config(self, yaml_text: str) -> None:
        self._require_writer()
        atomic_write(self.config_path, yaml_text.encode())

    def info(self) -> dict[str, Any]:
        path = self.path / INFO_FILE
        return read_json(path) if path.is_file() else {}

    def write_info(self, info: Mapping[str, Any]) -> None:
        self._require_writer()
        write_json(self.path / INFO_FILE, dict(info))

    def condition(self) -> dict[str, Any] | None:
        path = self.path / CONDITION_FILE
        return read_json(path) if path.is_file() else None

    def write_condition(self, condition: Mapping[str, Any]) -> None:
        self._require_writer()
        write_json(self.path / CONDITION_FILE, dict(condition))

    def trial_done(self) -> dict[str, Any] | None:
        path = self.path / TRIAL_DONE_FILE
        return read_json(path) if path.is_file() else None

    def write_trial_done(self, record: Mapping[str, Any]) -> None:
        self._require_writer()
        write_json(self.path / TRIAL_DONE_FILE, dict(record))

    def clear(self) -> None:
        """Remove what a run writes before its first checkpoint, to start it over. Refused (one
        line) when the directory holds anything else — a checkpoint folder, evaluations, files
        of the user's —, which a restart would lose."""
        self._require_writer()
        fresh = {CONFIG_FILE, INFO_FILE, CONDITION_FILE, TB_DIR, CHECKPOINTS_DIR, LOCK_FILE}
        other = sorted(p.name for p in self.path.iterdir() if p.name not in fresh)
        if self.checkpoints_root.is_dir():
            other += [
                f"{CHECKPOINTS_DIR}/{p.name}"
                for p in self.checkpoints_root.iterdir()
                if not p.name.startswith(TMP_PREFIX)
            ]
        if other:
            raise RunDirError(
                f"{self.path}: no complete checkpoint to continue from, and starting over would "
                f"delete {', '.join(other[:3])}; move those away or use another --run-dir"
            )
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint_names(self) -> list[str]:
        """Complete checkpoints (manifest present), oldest first."""
        root = self.checkpoints_root
        if not root.is_dir():
            return []
        try:
            entries = [p for p in root.iterdir() if _STEP.fullmatch(p.name)]
        except OSError:
            return []
        return sorted(p.name for p in entries if (p / MANIFEST_FILE).is_file())

    def resolve(self, name: str) -> str:
        """``latest``, ``step_N`` (zero-padded or not) → a complete checkpoint's folder name."""
        available = self.checkpoint_names()
        if not available:
            raise RunDirError(f"{self.path}: no complete checkpoint (training never saved one)")
        if name == LATEST:
            return available[-1]
        match = _STEP.fullmatch(name)
        folder = step_folder(int(match.group(1))) if match else name
        if folder not in available:
            allowed = ", ".join([*(short_name(a) for a in available), LATEST])
            raise RunDirError(f"checkpoint {name!r} not found in {self.path}; allowed: {allowed}")
        return folder

    def save_checkpoint(
        self, step: int, learners: Mapping[str, LearnerState], trainer: Mapping[str, Any]
    ) -> str:
        """Write ``checkpoints/step_<step>`` whole (complete or absent) and return its name.

        A step saved twice (a checkpoint interval that ends the run) holds the same state: the
        complete folder already there is kept."""
        self._require_writer()
        name = step_folder(step)
        final = self.checkpoints_root / name
        if (final / MANIFEST_FILE).is_file():
            return name
        arrays: dict[str, np.ndarray] = {}
        packed = pack(dict(trainer), arrays)
        with atomic_folder(final, replace=True) as tmp:
            files: dict[str, str] = {}
            learner_meta = {}
            for learner_id, state in learners.items():
                data = save_tensors({k: np.ascontiguousarray(v) for k, v in state.tensors.items()})
                file = f"{learner_id}{WEIGHTS_SUFFIX}"
                _write_new(tmp / file, data)
                files[file] = _sha256(data)
                learner_meta[learner_id] = state.meta
            data = save_tensors(arrays) if arrays else save_tensors({"_": np.zeros(0)})
            _write_new(tmp / TRAINER_FILE, data)
            files[TRAINER_FILE] = _sha256(data)
            manifest = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "learners": learner_meta,
                "trainer": packed,
                "files": files,
            }
            text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
            _write_new(tmp / MANIFEST_FILE, (text + "\n").encode())
        return name

    def load_checkpoint(self, name: str) -> Checkpoint:
        """A complete checkpoint, every file checked against its manifest's hash; a damaged or
        partial one is refused with one line (so learners of different steps never mix)."""
        folder = self.resolve(name)
        root = self.checkpoints_root / folder
        manifest = read_json(root / MANIFEST_FILE)
        where = f"{self.path}: checkpoint {short_name(folder)}"
        if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise RunDirError(
                f"{where}: checkpoint format {got!r}; allowed: {CHECKPOINT_FORMAT} (this version)"
            )
        try:
            files = dict(manifest["files"])
            learner_meta = dict(manifest["learners"])
            step = int(manifest["step"])
            trainer_tree = manifest["trainer"]
            if not all(isinstance(m, dict) for m in learner_meta.values()):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise RunDirError(f"{where}: {MANIFEST_FILE} is damaged (fields missing)") from None
        expected = {TRAINER_FILE, *(f"{i}{WEIGHTS_SUFFIX}" for i in learner_meta)}
        if set(files) != expected:
            raise RunDirError(f"{where}: {MANIFEST_FILE} lists other files than its learners")
        contents: dict[str, dict[str, np.ndarray]] = {}
        for file, digest in files.items():
            try:
                data = (root / file).read_bytes()
            except OSError:
                raise RunDirError(
                    f"{where}: {file} is missing; the checkpoint is damaged"
                ) from None
            if _sha256(data) != digest:
                raise RunDirError(
                    f"{where}: {file} does not match its manifest (truncated or altered); "
                    "resume or evaluate another checkpoint (--from-step / --checkpoint)"
                )
            try:
                contents[file] = load_tensors(data)
            except SafetensorError as exc:
                raise RunDirError(f"{where}: {file}: not a safetensors file ({exc})") from None
        learners = {
            learner_id: LearnerState(contents[f"{learner_id}{WEIGHTS_SUFFIX}"], meta)
            for learner_id, meta in learner_meta.items()
        }
        try:
            trainer = unpack(trainer_tree, contents[TRAINER_FILE])
        except (KeyError, TypeError):
            raise RunDirError(f"{where}: {MANIFEST_FILE} is damaged (trainer state)") from None
        return Checkpoint(folder, step, learners, trainer)

    def supersede_after(self, step: int) -> list[str]:
        """Move the checkpoints after ``step`` into ``checkpoints/superseded/<time>/`` (kept,
        not deleted): resuming from an earlier step starts a new history from there."""
        self._require_writer()
        later = [n for n in self.checkpoint_names() if int(n.removeprefix("step_")) > step]
        if not later:
            return []
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-from-{short_name(step_folder(step))}"
        target = self.checkpoints_root / SUPERSEDED_DIR / stamp
        target.mkdir(parents=True, exist_ok=False)
        # Newest first, so that at every moment "latest" is a checkpoint of the old history
        # or the step resumed from, never one from the middle of a gap.
        for name in reversed(later):
            os.rename(self.checkpoints_root / name, target / name)
        return later

    # --- evaluations ----------------------------------------------------------------------------
    def eval_path(self, label: str) -> Path:
        return self.eval_root / label

    def read_evaluation(self, label: str) -> dict[str, Any] | None:
        """The saved ``metrics.json`` of an evaluation, or None if it is not complete."""
        path = self.eval_path(label)
        if not ((path / METRICS_FILE).is_file() and (path / EVENTS_FILE).is_file()):
            return None
        try:
            with zipfile.ZipFile(path / EVENTS_FILE) as events:
                intact = events.testzip() is None  # every member's CRC
        except (OSError, zipfile.BadZipFile):
            intact = False
        if not intact:
            return None  # damaged: evaluated again (and replaced) like a missing one
        try:
            return read_json(path / METRICS_FILE)
        except RunDirError:
            return None

    def replay_path(self, label: str, episode: int) -> Path:
        return self.eval_path(label) / replay_page(episode)

    def write_evaluation(self, label: str, write: Any, replace: bool = False) -> Path:
        """An evaluation folder, whole: ``write(folder)`` fills it under a temporary name."""
        self._require_writer()
        final = self.eval_path(label)
        with atomic_folder(final, replace=replace) as tmp:
            write(tmp)
        return final


def replay_page(episode: int) -> str:
    """The file name of an episode's replay page inside an evaluation folder."""
    return f"replay_{episode}.html"


def write_evaluation_folder(out: Path, write: Any, replace: bool) -> Path:
    """An evaluation folder outside any run directory (``--out``), written as atomically."""
    with atomic_folder(out, replace=replace) as tmp:
        write(tmp)
    return out
