// The reply box: sending replies and private notes (an e-mail subject when the
// channel is e-mail), canned responses typed as /shortcut, and the WhatsApp
// 24-hour window or the API's last refusal shown above it.

import { api } from './api.js';
import { pendingFiles, renderTemplates, sendWithFiles, wireAttachments } from './attachments.js';
import { renderList } from './conversations.js';
import { $, h } from './dom.js';
import { DAY, hoursLeft } from './format.js';
import { currentConv, state } from './state.js';
import { upsertMessage } from './thread.js';

/** WhatsApp's 24-hour window, from the conversation's last_inbound_at when the API
 * gives it, else from the newest customer message loaded. */
function windowInfo(conv) {
  if (!conv || conv.channel !== 'whatsapp') return null;
  let last = conv.last_inbound_at ? Date.parse(conv.last_inbound_at) : NaN;
  if (Number.isNaN(last)) {
    for (const m of state.messages.values()) {
      if (m.direction === 'in' && m.kind !== 'note') {
        const at = Date.parse(m.created_at);
        if (!Number.isNaN(at) && (Number.isNaN(last) || at > last)) last = at;
      }
    }
  }
  if (Number.isNaN(last)) return { open: false, text: 'No customer message yet: only a template can start this chat.' };
  const left = last + DAY - Date.now();
  if (left > 0) return { open: true, text: `24-hour window open: closes in ${hoursLeft(left)}.` };
  return { open: false, text: '24-hour window closed: a free-form reply will be refused; send a template.' };
}

export function renderWindowState() {
  const conv = currentConv();
  const el = $('#window-state');
  const refusal = conv && state.refusals.get(conv.id);
  const info = windowInfo(conv);
  if (refusal) {
    el.dataset.state = 'refused';
    el.textContent = `Reply refused: ${refusal}`;
    el.hidden = false;
  } else if (info) {
    el.dataset.state = info.open ? 'open' : 'closed';
    el.textContent = info.text;
    el.hidden = false;
  } else {
    el.hidden = true;
  }
  renderTemplates(info ? info.open : true);
}

async function sendReply(event) {
  if (event) event.preventDefault();
  const conv = currentConv();
  const box = $('#reply-text');
  const text = box.value.trim();
  const files = pendingFiles();
  if (!conv || (!text && !files.length)) return;
  const isPrivate = $('#reply-private').checked;
  const body = { text, private: isPrivate };
  const subject = $('#reply-subject').value.trim();
  if (conv.channel === 'email' && subject && !isPrivate) body.subject = subject;
  $('#reply-send').disabled = true;
  $('#reply-error').textContent = '';
  try {
    const message = files.length
      ? await sendWithFiles(conv, text, isPrivate, body.subject)
      : await api('POST', `/api/conversations/${encodeURIComponent(conv.id)}/messages`, body);
    box.value = '';
    state.refusals.delete(conv.id);
    hideCanned();
    // The realtime feed may have brought this message first, and its later
    // status too (a send that failed at once): the answer is older news then.
    if (state.current === conv.id && !state.messages.has(message.id)) upsertMessage(message);
    if (!isPrivate) {
      conv.last_message = { text: message.text, direction: 'out', at: message.created_at };
      renderList();
    }
  } catch (error) {
    if (error.code === 'reply_refused') state.refusals.set(conv.id, error.message);
    $('#reply-error').textContent = error.message;
    renderWindowState();
  } finally {
    $('#reply-send').disabled = false;
  }
}

async function loadCanned() {
  if (state.canned !== null) return state.canned;
  try {
    const data = await api('GET', '/api/canned');
    const items = Array.isArray(data) ? data : (data && data.items) || [];
    state.canned = items.filter((c) => c && typeof c.shortcut === 'string' && typeof c.text === 'string');
  } catch {
    state.canned = [];
  }
  return state.canned;
}

async function onReplyInput() {
  const value = $('#reply-text').value;
  const match = value.match(/^\/([\w-]*)$/);
  if (!match) { hideCanned(); return; }
  const all = await loadCanned();
  const wanted = match[1].toLowerCase();
  const found = all.filter((c) => c.shortcut.toLowerCase().startsWith(wanted)).slice(0, 8);
  if (!found.length) { hideCanned(); return; }
  state.cannedActive = 0;
  const list = $('#canned');
  list.replaceChildren(...found.map((c, i) => h('li', { role: 'option', 'aria-selected': String(i === 0) },
    h('button', { type: 'button', onclick: () => useCanned(c) },
      h('strong', null, `/${c.shortcut}`), ' ', h('span', null, c.text)))));
  list.found = found;
  list.hidden = false;
}

export function hideCanned() {
  const list = $('#canned');
  list.hidden = true;
  list.found = [];
}

function useCanned(item) {
  $('#reply-text').value = item.text;
  hideCanned();
  $('#reply-text').focus();
}

function onReplyKey(event) {
  const list = $('#canned');
  if (!list.hidden && list.found && list.found.length) {
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      const n = list.found.length;
      state.cannedActive = (state.cannedActive + (event.key === 'ArrowDown' ? 1 : n - 1)) % n;
      [...list.children].forEach((li, i) => li.setAttribute('aria-selected', String(i === state.cannedActive)));
      return;
    }
    if (event.key === 'Enter' || event.key === 'Tab') {
      event.preventDefault();
      useCanned(list.found[state.cannedActive]);
      return;
    }
    if (event.key === 'Escape') { hideCanned(); return; }
  }
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendReply();
  }
}

export function wireComposer() {
  wireAttachments();
  $('#reply').addEventListener('submit', sendReply);
  $('#reply-text').addEventListener('keydown', onReplyKey);
  $('#reply-text').addEventListener('input', onReplyInput);
  $('#reply-private').addEventListener('change', (e) => { $('#reply').classList.toggle('private', e.target.checked); });
  setInterval(renderWindowState, 60000);
}
