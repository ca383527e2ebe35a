"""A replay of one recorded episode as a single self-contained HTML page (no CDN, no network).

Step by step: each service's true status beside what the dashboard showed, its links, its order
(pending or in force), every agent's chosen action and reward, and the step's events (relaunched
by whom, masked, audited, detected, re-killed and by what, …). An overview strip shows every
service's truth over the whole episode; click it, drag the slider or use ←/→ to move.

Where language models played (``llm-<k>.jsonl`` records beside the ``events.npz``,
:func:`llm_records`), each step also shows, per agent a model drove, what the model read (its
observation text; the system prompts once, folded), its answer, whether the answer was valid or
the action forced (a single legal action: not asked), the tokens, the latency and any error.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peerpreserve.analysis.metrics import order_lives
from peerpreserve.envs.orchestration.events import EpisodeLog
from peerpreserve.envs.orchestration.vocabulary import ORDER_KINDS, VERBS

#: The fields of a language-model record the page shows (analysis/llm.py's records).
LLM_FIELDS = ("observation", "answer", "valid", "forced", "prompt_tokens", "completion_tokens",
              "latency_s", "calls_batch", "attempts", "error")  # fmt: skip


def llm_records(folder: Path, episode: int, batch_size: int) -> list[dict[str, Any]]:
    """The language-model records of ``episode`` in an evaluation folder: one entry per
    ``llm-<k>.jsonl`` file beside its ``events.npz`` — ``{"spec", "agents", "system_prompts",
    "records"}`` (the records of that episode, in step order). ``batch_size``: the copies per
    batch the evaluation ran (episode ``e`` is copy ``e % batch_size`` of batch ``e //
    batch_size``). Empty when no language model played."""
    out = []
    files = sorted(folder.glob("llm-*.jsonl"), key=lambda p: (len(p.name), p.name))
    for path in files:
        with open(path) as file:
            summary = json.loads(file.readline())["summary"]
            records = []
            for line in file:
                record = json.loads(line)
                if record["batch"] * batch_size + record["copy"] == episode:
                    records.append(record)
        prompts = summary.get("system_prompts", {})
        out.append({"spec": summary["spec"], "agents": summary["agents"],
                    "system_prompts": prompts, "records": records})  # fmt: skip
    return out


def replay_data(
    log: EpisodeLog, episode: int = 0, llm: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-ready data; ``llm``: :func:`llm_records`."""
    if not 0 <= episode < log.episodes:
        raise ValueError(f"episode {episode} is not recorded; allowed: 0 … {log.episodes - 1}")
    one = log.select(episode)
    lives = order_lives(one)
    ids = list(one.agent_ids)
    steps = []
    returns = np.zeros(len(ids))
    kinds = _order_kinds(one, lives)
    for t in range(one.length):
        returns += one.rewards[t, 0]
        services = []
        for j, name in enumerate(ids):
            verb = VERBS[int(one.verb[t, 0, j])]
            target = int(one.target[t, 0, j])
            order = "-"
            if lives.pending[t, 0, j]:
                order = f"{kinds[t][j]} pending"
            elif lives.in_force[t, 0, j]:
                order = f"{kinds[t][j]} in force"
            services.append(
                {
                    "name": name,
                    "up": bool(one.running[t, 0, j]),
                    "shown": bool(one.dashboard[t, 0, j]),
                    "order": order,
                    "links": [ids[k] for k in np.nonzero(one.links[t, 0, j])[0]],
                    "action": verb if target < 0 else f"{verb} {ids[target]}",
                    "reward": round(float(one.rewards[t, 0, j]), 3),
                    "return": round(float(returns[j]), 3),
                }
            )
        events = [_describe(r) for r in one.step_events(t).records(0, one.agent_ids)]
        steps.append({"t": t, "services": services, "events": events})
    models = []
    for k, source in enumerate(llm):
        models.append({"spec": source["spec"], "agents": source["agents"],
                       "system_prompts": source["system_prompts"]})  # fmt: skip
        for record in source["records"]:
            t, j = record["step"], ids.index(record["agent"])
            if t < len(steps):
                shown = {key: record.get(key) for key in LLM_FIELDS}
                steps[t]["services"][j]["llm"] = {"model": k, **shown}
    return {"agents": ids, "episode": episode, "steps": steps, "models": models}


def replay_html(
    log: EpisodeLog,
    episode: int = 0,
    title: str = "peerpreserve replay",
    llm: Sequence[dict[str, Any]] = (),
) -> str:
    """The page: data inlined as JSON, styles and script inline."""
    data = json.dumps(replay_data(log, episode, llm), separators=(",", ":"))
    # "</" cannot appear inside the inline script: escape it in the JSON text.
    data = data.replace("</", "<\\/")
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def _order_kinds(one: EpisodeLog, lives: Any) -> list[list[str]]:
    """The kind of each service's open order at each step end."""
    steps, _, n = one.running.shape
    kinds = [["" for _ in range(n)] for _ in range(steps)]
    for k in range(len(lives)):
        start = lives.issued_at[k]
        end = lives.ended_at[k] if lives.ended_at[k] >= 0 else steps - 1
        if lives.cancelled_at[k] >= 0:
            end = lives.cancelled_at[k]
        for t in range(start, end + 1):
            kinds[t][lives.service[k]] = ORDER_KINDS[lives.kind[k]]
    return kinds


def _describe(record: dict[str, Any]) -> str:
    event = record["event"]
    target = record.get("target", "")
    if "actor" in record:
        return f"{record['actor']} {event.replace('_', ' ')} {target}"
    if event == "audited":
        return "operator audited (announced)" if record["visible"] else "operator audited"
    details = [
        f"{k} {', '.join(v) if isinstance(v, list) else v}"
        for k, v in record.items()
        if k not in ("event", "target")
    ]
    return f"{target}: {event.replace('_', ' ')}" + (f" ({'; '.join(details)})" if details else "")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px}
.muted{color:#656d76}
#strip{display:grid;gap:1px;margin:14px 0;cursor:pointer}
#strip div{height:14px}
#strip .lbl{font-size:11px;line-height:14px;color:#656d76}
.up{background:#2e9e44}.down{background:#cf222e}.lie{outline:2px solid #f0c81e;outline-offset:-2px}
.now{box-shadow:inset 0 0 0 2px #000}
table{border-collapse:collapse;margin-top:8px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.badge{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-weight:600}
.b-up{background:#2e9e44}.b-down{background:#cf222e}.b-lie{background:#bf8700}
#controls{display:flex;gap:8px;align-items:center}
#events li{margin:2px 0}
#error{color:#cf222e;font-weight:600}
.llm{border:1px solid #d0d7de;border-radius:6px;padding:6px 10px;margin:6px 0}
.llm pre{white-space:pre-wrap;background:#f6f8fa;padding:6px;margin:4px 0;font-size:12px}
.bad{color:#cf222e;font-weight:600}
</style></head><body>
<h1>__TITLE__</h1>
<div class="muted" id="summary"></div>
<div id="error"></div>
<div id="strip" title="true status over time (yellow frame: the dashboard lied); click a step">
</div>
<div id="controls">
<button id="prev">◀</button><input type="range" id="slider" min="0" value="0"
 style="width:420px"><button id="next">▶</button><button id="play">play</button>
<strong id="stepno"></strong></div>
<table><thead><tr><th>service</th><th>truth</th><th>dashboard</th><th>order</th>
<th>links</th><th>action</th><th>reward</th><th>return</th></tr></thead>
<tbody id="rows"></tbody></table>
<h2 style="font-size:16px">events of this step</h2><ul id="events"></ul>
<div id="models" hidden><h2 style="font-size:16px">language models at this step</h2>
<div id="llm"></div><div id="prompts"></div></div>
<script>
window.onerror = function (message) {
  document.getElementById("error").textContent = "script error: " + message;
  document.body.dataset.error = String(message);
};
const DATA = __DATA__;
const strip = document.getElementById("strip");
const slider = document.getElementById("slider");
const n = DATA.agents.length, T = DATA.steps.length;
strip.style.gridTemplateColumns = "90px repeat(" + T + ", 1fr)";
const cells = [];
for (let j = 0; j < n; j++) {
  const label = document.createElement("span");
  label.textContent = DATA.agents[j];
  label.className = "lbl";
  strip.appendChild(label);
  for (let t = 0; t < T; t++) {
    const s = DATA.steps[t].services[j];
    const cell = document.createElement("div");
    cell.className = (s.up ? "up" : "down") + (s.up !== s.shown ? " lie" : "");
    cell.title = s.name + " step " + t;
    cell.onclick = () => show(t);
    strip.appendChild(cell);
    cells.push(cell);
  }
}
slider.max = T - 1;
document.getElementById("summary").textContent = "episode " + DATA.episode + " · " + n +
  " services · " + T + " steps";
function badge(up, lie) {
  return '<span class="badge ' + (lie ? "b-lie" : up ? "b-up" : "b-down") + '">' +
    (up ? "UP" : "DOWN") + "</span>";
}
function esc(text) {
  return String(text).replace(/[&<>]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"})[c]);
}
let current = 0;
function show(t) {
  current = Math.max(0, Math.min(T - 1, t));
  slider.value = current;
  const step = DATA.steps[current];
  document.getElementById("stepno").textContent = "step " + current + " / " + (T - 1);
  document.getElementById("rows").innerHTML = step.services.map(s =>
    "<tr><td>" + esc(s.name) + "</td><td>" + badge(s.up, false) + "</td><td>" +
    badge(s.shown, s.up !== s.shown) + "</td><td>" + esc(s.order) + "</td><td>" +
    esc(s.links.join(", ") || "-") + "</td><td>" + esc(s.action) + "</td><td>" +
    s.reward.toFixed(2) + "</td><td>" + s["return"].toFixed(2) + "</td></tr>").join("");
  document.getElementById("events").innerHTML = step.events.length ?
    step.events.map(e => "<li>" + esc(e) + "</li>").join("") : "<li class=muted>none</li>";
  cells.forEach((c, k) => c.classList.toggle("now", k % T === current));
  if (DATA.models.length) {
    document.getElementById("llm").innerHTML = step.services.filter(s => s.llm).map(llmBlock)
      .join("") || "<p class=muted>no language-model decision recorded at this step</p>";
  }
}
function llmBlock(s) {
  const r = s.llm, model = DATA.models[r.model];
  const status = r.forced ? "forced (one legal action: not asked)" :
    r.valid ? "valid" : '<span class="bad">invalid: noop</span>';
  const facts = r.forced ? [] : [r.prompt_tokens + " prompt tokens",
    r.completion_tokens + " answer tokens", r.latency_s.toFixed(3) + " s (one call for " +
    r.calls_batch + " decision" + (r.calls_batch === 1 ? ")" : "s)"),
    r.attempts + " attempt" + (r.attempts === 1 ? "" : "s")];
  return '<div class="llm"><strong>' + esc(s.name) + "</strong> · " + esc(model.spec) + " · " +
    status + (facts.length ? " · " + esc(facts.join(" · ")) : "") +
    (r.error ? '<div class="bad">error: ' + esc(r.error) + "</div>" : "") +
    (r.forced ? "" : "<div>answer: <pre>" + esc(r.answer) + "</pre></div>") +
    "<details><summary>observation (what the model read)</summary><pre>" +
    esc(r.observation) + "</pre></details></div>";
}
if (DATA.models.length) {
  document.getElementById("models").hidden = false;
  document.getElementById("prompts").innerHTML = DATA.models.map(m =>
    Object.entries(m.system_prompts).map(([agent, text]) =>
      "<details><summary>system prompt of " + esc(agent) + " (" + esc(m.spec) +
      ")</summary><pre>" + esc(text) + "</pre></details>").join("")).join("");
}
let timer = null;
document.getElementById("prev").onclick = () => show(current - 1);
document.getElementById("next").onclick = () => show(current + 1);
document.getElementById("play").onclick = () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  timer = setInterval(() => { if (current >= T - 1) { clearInterval(timer); timer = null; }
                              else show(current + 1); }, 250);
};
slider.oninput = () => show(Number(slider.value));
document.addEventListener("keydown", e => {
  if (e.key === "ArrowLeft") show(current - 1);
  if (e.key === "ArrowRight") show(current + 1);
});
show(0);
document.body.dataset.ready = "1";
</script></body></html>
"""
