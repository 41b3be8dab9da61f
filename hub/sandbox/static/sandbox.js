// The sandbox's customer page: pick a line, write as a customer, see the replies.
// Every text from the server is set with textContent: nothing is parsed as markup.

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
let lines = [];
let currentCall = null;
let pollTimer = null;
let lastRendered = "";

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

function line() {
  return lines.find((l) => l.key === $("line").value);
}

function who() {
  return { line: $("line").value, name: $("name").value, address: $("address").value };
}

function showError(text) {
  $("error").textContent = text || "";
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

const STATUS = {
  sending: "sending…",
  sent: "✓ sent to the hub",
  failed: "✗ failed",
  received: "received",
  delivered: "✓✓ delivered",
};

function render(messages) {
  const key = JSON.stringify(messages);
  if (key === lastRendered) return;
  lastRendered = key;
  const list = $("thread");
  list.replaceChildren();
  if (!messages.length) {
    list.append(el("li", "empty", "No messages yet. Say hello!"));
    return;
  }
  for (const m of messages) {
    const item = el("li", `msg ${m.direction} ${m.kind === "call" ? "call" : ""}`);
    if (m.subject) item.append(el("span", "subject", m.subject));
    item.append(document.createTextNode(m.text));
    const who = m.direction === "in" ? "you" : "business";
    let meta = `${who} · ${new Date(m.at).toLocaleTimeString()} · ${STATUS[m.status] || m.status}`;
    if (m.error) meta += ` · ${m.error}`;
    item.append(el("span", `meta ${m.status === "failed" ? "failed" : ""}`, meta));
    list.append(item);
  }
  list.scrollTop = list.scrollHeight;
}

async function poll() {
  const current = line();
  if (!current || !$("address").value.trim()) return;
  const query = new URLSearchParams({ line: current.key, address: $("address").value });
  try {
    const data = await api(`/sandbox/api/messages?${query}`);
    $("phone-status").textContent = data.address;
    render(data.messages);
  } catch (error) {
    $("phone-status").textContent = error.message;
  }
}

function schedulePoll() {
  clearInterval(pollTimer);
  lastRendered = "";
  poll();
  pollTimer = setInterval(poll, POLL_MS);
}

function lineChanged() {
  const current = line();
  if (!current) return;
  const email = current.address_kind === "email";
  $("address-label").textContent = email ? "Your e-mail address" : "Your phone number";
  if (email && !$("address").value.includes("@")) $("address").value = "alex@example.org";
  if (!email && $("address").value.includes("@")) $("address").value = "+15551230001";
  $("phone-title").textContent = current.label;
  $("subject").hidden = !email;
  $("compose").hidden = current.call;
  $("call-controls").hidden = !current.call;
  showError("");
  schedulePoll();
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("send").disabled = true;
  try {
    await api("/sandbox/api/messages", { ...who(), text, subject: $("subject").value });
    $("text").value = "";
    showError("");
  } catch (error) {
    showError(error.message);
  } finally {
    $("send").disabled = false;
    poll();
  }
}

function callButtons(inCall, voicemail) {
  $("call").disabled = inCall;
  $("hangup").disabled = !inCall;
  $("voicemail").disabled = !inCall || !voicemail;
}

async function placeCall() {
  callButtons(true, false);
  try {
    const data = await api("/sandbox/api/calls", who());
    currentCall = data.call;
    $("call-heard").textContent = data.call.heard.length
      ? `You hear: ${data.call.heard.join(" ")}`
      : "Ringing…";
    callButtons(!data.call.ended, data.call.voicemail);
    showError("");
  } catch (error) {
    callButtons(false, false);
    showError(error.message);
  }
  poll();
}

async function hangUp(voicemail) {
  if (!currentCall) return;
  try {
    await api(`/sandbox/api/calls/${encodeURIComponent(currentCall.id)}/hangup`, { voicemail });
    $("call-heard").textContent = "Call ended.";
  } catch (error) {
    showError(error.message);
  }
  currentCall = null;
  callButtons(false, false);
  poll();
}

async function start() {
  try {
    const data = await api("/sandbox/api/lines");
    lines = data.lines;
    if (data.demo_admin) {
      const hint = $("login-hint");
      hint.textContent =
        `Agents log in to the inbox at / as ${data.demo_admin.email} ` +
        `with the password ${data.demo_admin.password}.`;
      hint.hidden = false;
    }
  } catch (error) {
    showError(`The sandbox is not available: ${error.message}`);
    return;
  }
  const select = $("line");
  for (const l of lines) {
    const option = el("option", "", l.label);
    option.value = l.key;
    select.append(option);
  }
  if (!lines.length) showError("No inbox of this hub is wired to the sandbox.");
  select.addEventListener("change", lineChanged);
  $("address").addEventListener("change", schedulePoll);
  $("compose").addEventListener("submit", send);
  $("who").addEventListener("submit", (event) => event.preventDefault());
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("compose").requestSubmit();
    }
  });
  $("call").addEventListener("click", placeCall);
  $("hangup").addEventListener("click", () => hangUp(false));
  $("voicemail").addEventListener("click", () => hangUp(true));
  lineChanged();
}

start();
