// The chat page of `chatbaker serve`: talks to the server's own OpenAI-style API
// (GET /v1/models, POST /v1/chat/completions with stream: true). No framework,
// no build step: the file is served as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log");
const input = $("input");
const sendButton = $("send");
const stopButton = $("stop");
const status = $("status");
const KEY_STORE = "chatbaker.apiKey";
const SETTINGS_STORE = "chatbaker.settings";
const SETTING_IDS = ["system", "temperature", "top-p", "max-tokens"];

// The conversation the model has seen: what goes in `messages` next time.
// A refused message never enters it (the model never saw it).
let history = [];
let modelId = null;
let running = null; // the AbortController of the stream in progress

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showStatus(text) {
  status.textContent = text;
  status.hidden = !text;
}

// Who said it, for screen readers (the bubbles' places show it on screen).
const SPEAKERS = { user: "You: ", assistant: "ChatBaker: ", notice: "Notice: " };

function addMessage(kind, text) {
  const item = document.createElement("li");
  item.className = `message ${kind}`;
  const speaker = document.createElement("span");
  speaker.className = "visually-hidden";
  speaker.textContent = SPEAKERS[kind.split(" ")[0]];
  item.append(speaker);
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  log.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function addNote(item, text) {
  const note = document.createElement("div");
  note.className = "note";
  note.textContent = text;
  item.append(note);
  // The note is the bubble's last line: keep it in view, not below the fold.
  item.scrollIntoView({ block: "end" });
}

// The OpenAI error body {"error": {"message", "code", ...}}, or a line saying what came instead.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) {
    // not JSON: the status line below says enough
  }
  return { message: `HTTP ${response.status} ${response.statusText}`, code: null };
}

async function loadModel() {
  try {
    const response = await fetch("v1/models", { headers: authHeaders() });
    if (!response.ok) {
      const error = await errorOf(response);
      showStatus(response.status === 401
        ? "This server needs an API key: enter it under Settings."
        : `Could not list the models: ${error.message}`);
      if (response.status === 401) $("settings").open = true;
      return;
    }
    const models = (await response.json()).data || [];
    modelId = models.length ? models[0].id : null;
    $("model").textContent = modelId || "no model";
    showStatus(modelId ? "" : "The server lists no model.");
  } catch (err) {
    showStatus(`The server cannot be reached: ${err.message}`);
  }
}

function requestBody(messages) {
  const number = (id) => Number($(id).value);
  return {
    model: modelId,
    messages,
    stream: true,
    temperature: number("temperature"),
    top_p: number("top-p"),
    max_tokens: number("max-tokens"),
  };
}

// Server-Sent Events: events end with a blank line; each `data:` line carries
// one JSON chunk, and `data: [DONE]` ends the stream.
async function readStream(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

function setRunning(controller) {
  running = controller;
  sendButton.disabled = Boolean(controller);
  stopButton.disabled = !controller;
}

async function send() {
  const text = input.value.trim();
  if (!text || running) return;
  if (!modelId) await loadModel();
  if (!modelId) return;
  input.value = "";
  const userItem = addMessage("user", text);
  const system = $("system").value.trim();
  const turns = [...history, { role: "user", content: text }];
  const messages = system ? [{ role: "system", content: system }, ...turns] : turns;
  const controller = new AbortController();
  setRunning(controller);
  let answer = null;
  let answerText = "";
  let finish = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(requestBody(messages)),
      signal: controller.signal,
    });
    if (!response.ok) {
      const error = await errorOf(response);
      if (error.code === "content_filter") {
        userItem.classList.add("refused");
        // The server's reason says what was refused; the model never saw the message.
        addMessage("notice", `${error.message.replace(/\.?\s*$/, ".")} Please rephrase it and try again.`);
      } else {
        userItem.classList.add("failed");
        addMessage("notice error", `The server refused the request (HTTP ${response.status}): ${error.message}`);
        if (response.status === 401) $("settings").open = true;
      }
      return;
    }
    answer = addMessage("assistant", "");
    answer.setAttribute("aria-busy", "true");
    const answerBody = answer.querySelector(".text");
    await readStream(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = (chunk.choices || [])[0];
      if (!choice) return;
      const piece = (choice.delta && choice.delta.content) || "";
      if (piece) {
        answerText += piece;
        answerBody.textContent = answerText;
        answer.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    if (answerText) {
      history = [...turns, { role: "assistant", content: answerText }];
    } else {
      // Nothing to show: say so rather than leave a blank bubble; the turn is not kept.
      answer.classList.add("empty");
      addNote(answer, "(the model gave an empty answer; this turn is not kept)");
    }
    if (finish === "length") addNote(answer, "(cut at max tokens)");
  } catch (err) {
    if (err.name === "AbortError") {
      // What was shown stays in the conversation, as in other chat pages,
      // unless "New chat" (which also aborts) has just cleared it.
      if (answer && answer.isConnected && answerText) {
        answer.dataset.state = "stopped";
        addNote(answer, "(stopped)");
        history = [...turns, { role: "assistant", content: answerText }];
      } else if (userItem.isConnected) {
        // Stopped before any text: no empty turn enters the history.
        if (answer) answer.remove();
        addNote(userItem, "(stopped before the answer began; not kept)");
      }
    } else {
      addMessage("notice error", `The answer failed: ${err.message}`);
    }
  } finally {
    controller.abort(); // a stream left after an error would hold a batch slot
    if (answer) answer.setAttribute("aria-busy", "false");
    setRunning(null);
    input.focus();
  }
}

function saveSettings() {
  const values = Object.fromEntries(SETTING_IDS.map((id) => [id, $(id).value]));
  localStorage.setItem(SETTINGS_STORE, JSON.stringify(values));
}

function restoreSettings() {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
  } catch (_) {
    // a damaged entry: keep the defaults
  }
  for (const id of SETTING_IDS) if (saved[id] !== undefined) $(id).value = saved[id];
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

input.addEventListener("keydown", (event) => {
  // Enter that confirms a Korean (IME) syllable is part of composing, not a
  // send: browsers flag it with isComposing, older ones with keyCode 229.
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  send();
});

stopButton.addEventListener("click", () => {
  if (running) running.abort();
});

$("new-chat").addEventListener("click", () => {
  if (running) running.abort();
  history = [];
  log.replaceChildren();
  input.focus();
});

$("api-key").addEventListener("change", () => {
  localStorage.setItem(KEY_STORE, $("api-key").value.trim());
  loadModel();
});

for (const id of SETTING_IDS) $(id).addEventListener("change", saveSettings);

restoreSettings();
loadModel();
input.focus();
