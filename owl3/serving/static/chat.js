// owl3 chat page: talks to this server's /v1/chat/completions with streaming (fetch + ReadableStream,
// Server-Sent Events). Attachments go in as data: URLs, so the page needs no file access on the server.
// Everything the model or the server says is put on the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), prompt = $("prompt"), send = $("send"), fileInput = $("file");
const state = {
  model: null,        // the served model's name, from /v1/models
  kb: null,           // the server's knowledge base ({name, items}) when it was started with --kb
  history: [],        // OpenAI messages of the conversation so far (media as data: URLs)
  pending: [],        // attachments for the next message: {kind: "image"|"video", url, name}
  controller: null,   // AbortController of the answer being streamed
};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) {
      $("model").textContent = resp.status === 401 ? "API key needed (Settings)" : await errorMessage(resp);
      if (resp.status === 401) $("settings").open = true;
      return;
    }
    const body = await resp.json();
    const card = body.data[0];
    state.model = card.id;
    state.kb = card.knowledge_base || null;
    let line = `${state.model} · context ${card.max_model_len} tokens`;
    if (state.kb) line += ` · knowledge base ${state.kb.name} (${state.kb.items} items)`;
    $("model").textContent = line;
    $("kb-row").hidden = $("top-k-row").hidden = !state.kb;
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

// ------------------------------------------------------------------------------------------ rendering
function addMessage(role, text, media) {
  $("empty")?.remove();
  const box = document.createElement("div");
  box.className = "msg " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "assistant" ? (state.model || "owl3") : role;
  box.appendChild(label);
  if (media && media.length) {
    const strip = document.createElement("div");
    strip.className = "media";
    for (const m of media) strip.appendChild(preview(m, false));
    box.appendChild(strip);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  box.appendChild(body);
  log.appendChild(box);
  log.scrollTop = log.scrollHeight;
  return box;
}

function preview(item, controls) {
  const el = document.createElement(item.kind === "image" ? "img" : "video");
  el.src = item.url;
  el.title = item.name;
  if (item.kind === "image") el.alt = item.name;
  else { el.muted = true; el.controls = controls; }
  return el;
}

function renderPending() {
  const box = $("attachments");
  box.replaceChildren();
  state.pending.forEach((item, i) => {
    const chip = document.createElement("div");
    chip.className = "chip";
    chip.appendChild(preview(item, false));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove " + item.name;
    remove.onclick = () => { state.pending.splice(i, 1); renderPending(); };
    chip.appendChild(remove);
    box.appendChild(chip);
  });
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

fileInput.addEventListener("change", async () => {
  for (const file of fileInput.files) {
    const kind = file.type.startsWith("video/") ? "video" : file.type.startsWith("image/") ? "image" : null;
    if (!kind) continue;
    const item = { kind, name: file.name, url: await readAsDataURL(file) };
    if (kind === "video") state.pending = state.pending.filter((p) => p.kind !== "video");  // one video
    state.pending.push(item);
  }
  fileInput.value = "";
  renderPending();
  prompt.focus();
});

// ------------------------------------------------------------------------------------------ asking
function userMessage(text, media) {
  if (!media.length) return { role: "user", content: text };
  const parts = media.filter((m) => m.kind === "image").map((m) => ({ type: "image_url", image_url: { url: m.url } }));
  for (const m of media) if (m.kind === "video") parts.push({ type: "video_url", video_url: { url: m.url } });
  if (text) parts.push({ type: "text", text });
  return { role: "user", content: parts };
}

function requestBody() {
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.history] : [...state.history];
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Math.max(1, parseInt($("max-tokens").value, 10) || 256),
    temperature: Math.max(0, parseFloat($("temperature").value) || 0),
    media_io_kwargs: { video: { num_frames: Math.max(1, parseInt($("frames").value, 10) || 8) } },
  };
  if (state.model) body.model = state.model;
  if ($("attribution").value) body.attribution = $("attribution").value;
  if (state.kb && $("use-kb").checked) {
    body.retrieval = { top_k: Math.min(32, Math.max(1, parseInt($("top-k").value, 10) || 4)) };
  }
  return body;
}

// Yields the JSON payload of each `data:` event of a Server-Sent Events body, until `[DONE]`.
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function ask() {
  const text = prompt.value.trim();
  if (state.controller || (!text && !state.pending.length)) return;
  const media = state.pending;
  state.history.push(userMessage(text, media));
  addMessage("user", text, media);
  prompt.value = "";
  autosize();
  state.pending = [];
  renderPending();

  const box = addMessage("assistant", "");
  const out = box.querySelector(".text");
  box.classList.add("streaming");
  state.controller = new AbortController();
  setBusy(true);
  let answer = "", finish = null, usage = null, failed = null, citations = null, shares = null;
  const t0 = performance.now();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: state.controller.signal,
    });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    for await (const chunk of events(resp)) {
      if (chunk.error) { failed = chunk.error.message; break; }
      if (chunk.usage) usage = chunk.usage;
      if (chunk.citations) citations = chunk.citations;
      if (chunk.shares) shares = chunk.shares;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        out.textContent = answer;
        log.scrollTop = log.scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else failed = e.message;
  } finally {
    box.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
  if (failed !== null && !answer) {
    box.remove();
    state.history.pop();  // the turn did not happen: the question can be asked again
    addMessage("error", failed);
    return;
  }
  state.history.push({ role: "assistant", content: answer });
  const meta = document.createElement("div");
  meta.className = "meta";
  const secs = (performance.now() - t0) / 1000;
  const bits = [];
  if (finish && finish !== "stop") bits.push(finish === "length" ? "cut at max tokens" : finish);
  if (usage) bits.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} tokens`);
  bits.push(`${secs.toFixed(1)} s`);
  if (failed) bits.push("error: " + failed);
  meta.textContent = bits.join(" · ");
  box.appendChild(meta);
  if (citations && citations.length) box.appendChild(sources(citations));
  if (shares && shares.length) box.appendChild(shareBars(shares, $("attribution").value));
}

// Each image's (and video frame's) share of the answer, with a bar: where the answer's hyper-attention
// fell ("attention") or what the answer depends on ("gradient"); docs/rag.md.
function shareBars(shares, measure) {
  const box = document.createElement("details");
  box.className = "sources-box";
  box.open = true;
  const summary = document.createElement("summary");
  summary.textContent = `${measure} shares`;
  const list = document.createElement("ul");
  list.className = "shares";
  for (const s of shares) {
    const li = document.createElement("li");
    const pct = (100 * s.share).toFixed(1);
    li.textContent = `${s.label} ${pct}% ` + "\u2588".repeat(Math.round(20 * s.share));
    list.appendChild(li);
  }
  box.append(summary, list);
  return box;
}

// The knowledge items an answer was given: id, retrieval score, the answer's share of attention on the
// item's image, and its text (all as text).
function sources(citations) {
  const list = document.createElement("ol");
  list.className = "sources";
  for (const c of citations) {
    const li = document.createElement("li");
    const share = c.share === null || c.share === undefined ? "no image" : `${(100 * c.share).toFixed(1)}%`;
    li.textContent = `${c.id} · score ${c.score.toFixed(4)} · share ${share}` + (c.text ? ` · ${c.text}` : "");
    list.appendChild(li);
  }
  const box = document.createElement("details");
  box.className = "sources-box";
  box.open = true;
  const summary = document.createElement("summary");
  summary.textContent = `Sources (${citations.length})`;
  box.append(summary, list);
  return box;
}

function setBusy(busy) {
  send.textContent = busy ? "Stop" : "Send";
  send.classList.toggle("stop", busy);
}

function autosize() {
  prompt.style.height = "auto";
  prompt.style.height = Math.min(prompt.scrollHeight + 2, 192) + "px";
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  if (state.controller) state.controller.abort();
  else ask();
});
prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!state.controller) ask();
  }
});
prompt.addEventListener("input", autosize);
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.pending = [];
  renderPending();
  log.replaceChildren();
  prompt.focus();
});
$("api-key").addEventListener("change", loadModel);
loadModel();
