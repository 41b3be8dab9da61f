// Time in the inbox: sending a reply later (the composer's "Later" picker), a
// scheduled reply's edit and cancel in the thread, reminders on a conversation,
// and the notices the hub sends one agent (reminder.due, sla.breached,
// snooze.ended) shown as toasts.

import { api } from './api.js';
import { renderList } from './conversations.js';
import { $, fail, h, toast } from './dom.js';
import { displayName, longTime } from './format.js';
import { currentConv, state } from './state.js';
import { renderThreadHead, upsertMessage } from './thread.js';

const pad = (n) => String(n).padStart(2, '0');

/** A time as a datetime-local input's value (the browser's zone). */
export function localInput(at) {
  const d = at instanceof Date ? at : new Date(at);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A datetime-local input's value as an ISO time in UTC, or null. */
function fromInput(value) {
  if (!value) return null;
  const at = new Date(value);
  return Number.isNaN(at.getTime()) ? null : at.toISOString();
}

function inAnHour() {
  const at = new Date(Date.now() + 60 * 60 * 1000);
  at.setSeconds(0, 0);
  return at;
}

const convUrl = (id) => `/api/conversations/${encodeURIComponent(id)}`;

// -- send later ---------------------------------------------------------------

async function scheduleReply() {
  const conv = currentConv();
  const box = $('#reply-text');
  const text = box.value.trim();
  if (!conv) return;
  if (!text) { toast('Write the reply first', 'error'); return; }
  const sendAt = fromInput($('#send-later-at').value);
  if (!sendAt) { toast('Choose when to send it', 'error'); return; }
  if ($('#reply-private').checked) { toast('A private note is not sent: untick it to schedule', 'error'); return; }
  const body = { text, send_at: sendAt };
  const subject = $('#reply-subject').value.trim();
  if (conv.channel === 'email' && subject) body.subject = subject;
  $('#send-later-go').disabled = true;
  $('#reply-error').textContent = '';
  try {
    const message = await api('POST', `${convUrl(conv.id)}/messages`, body);
    box.value = '';
    $('#send-later').open = false;
    if (state.current === conv.id) upsertMessage(message);
    toast(`Scheduled for ${longTime(message.send_at)}`);
  } catch (error) {
    $('#reply-error').textContent = error.message;
  } finally {
    $('#send-later-go').disabled = false;
  }
}

/** What a scheduled (or cancelled) reply shows under its text; null for others. */
export function scheduledNode(message) {
  if (message.status === 'cancelled') {
    return h('div', { class: 'schedule-info cancelled' }, 'Cancelled: not sent');
  }
  if (message.status !== 'scheduled') return null;
  return h('div', { class: 'schedule-info' },
    h('span', { class: 'scheduled-at', title: message.send_at || '' }, `Scheduled for ${longTime(message.send_at)}`),
    h('button', { type: 'button', class: 'linkish', dataset: { action: 'edit-scheduled', id: message.id } }, 'Edit'),
    h('button', { type: 'button', class: 'linkish danger', dataset: { action: 'cancel-scheduled', id: message.id } }, 'Cancel'));
}

function editForm(message) {
  const text = h('textarea', { class: 'scheduled-text', rows: '2', 'aria-label': 'Scheduled text' });
  text.value = message.text || '';
  const at = h('input', { type: 'datetime-local', class: 'scheduled-time', 'aria-label': 'Send at' });
  at.value = localInput(message.send_at || inAnHour());
  const error = h('span', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'scheduled-edit' }, text, at,
    h('button', { type: 'submit', class: 'primary' }, 'Save'),
    h('button', { type: 'button', class: 'ghost', onclick: () => form.remove() }, 'Close'),
    error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const fields = {};
    if (text.value.trim() && text.value.trim() !== message.text) fields.text = text.value.trim();
    const sendAt = fromInput(at.value);
    if (sendAt && sendAt !== message.send_at) fields.send_at = sendAt;
    if (!Object.keys(fields).length) { form.remove(); return; }
    try {
      const updated = await api('PATCH', `${convUrl(message.conversation_id)}/messages/${encodeURIComponent(message.id)}`, fields);
      upsertMessage(updated);
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
  return form;
}

async function onThreadClick(event) {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const message = state.messages.get(button.dataset.id);
  if (!message) return;
  if (button.dataset.action === 'edit-scheduled') {
    const bubble = button.closest('.bubble');
    if (bubble && !bubble.querySelector('.scheduled-edit')) bubble.append(editForm(message));
  } else if (button.dataset.action === 'cancel-scheduled') {
    try {
      const updated = await api('DELETE', `${convUrl(message.conversation_id)}/messages/${encodeURIComponent(message.id)}`);
      upsertMessage(updated);
      toast('Scheduled reply cancelled');
    } catch (error) {
      fail(error);
    }
  }
}

// -- reminders ------------------------------------------------------------------

async function loadReminders() {
  const conv = currentConv();
  const list = $('#reminder-list');
  if (!conv) return;
  try {
    const page = await api('GET', `${convUrl(conv.id)}/reminders`);
    list.replaceChildren(...page.items.map((r) => h('li', { dataset: { id: r.id } },
      h('span', null, longTime(r.at)), r.note ? h('span', { class: 'reminder-note' }, ` · ${r.note}`) : null,
      h('button', { type: 'button', class: 'linkish danger', 'aria-label': 'Delete reminder', onclick: () => deleteReminder(r.id) }, '✕'))));
  } catch (error) {
    fail(error);
  }
}

async function setReminder() {
  const conv = currentConv();
  if (!conv) return;
  const at = fromInput($('#remind-at').value);
  if (!at) { toast('Choose when to be reminded', 'error'); return; }
  const note = $('#remind-note').value.trim();
  try {
    const made = await api('POST', `${convUrl(conv.id)}/reminders`, note ? { at, note } : { at });
    $('#remind-note').value = '';
    toast(`Reminder set for ${longTime(made.at)}`);
    loadReminders();
  } catch (error) {
    fail(error);
  }
}

async function deleteReminder(id) {
  try {
    await api('DELETE', `/api/reminders/${encodeURIComponent(id)}`);
    loadReminders();
  } catch (error) {
    fail(error);
  }
}

// -- notices --------------------------------------------------------------------

function conversationName(id) {
  const conv = state.convs.get(id);
  return conv ? displayName(conv.contact) : 'a conversation';
}

/** A notice from the realtime feed (reminder.due, sla.breached, snooze.ended). */
export function onNotice(type, data) {
  const who = conversationName(data.conversation_id);
  if (type === 'reminder.due') {
    toast(`Reminder: ${data.note || 'follow up'} (${who})`, 'notice');
  } else if (type === 'sla.breached') {
    const conv = state.convs.get(data.conversation_id);
    if (conv) {
      conv.overdue = true;
      conv.sla_breached_at = data.breached_at || conv.sla_breached_at;
      renderList();
      if (conv.id === state.current) renderThreadHead();
    }
    toast(data.stage === 'supervisors'
      ? `Escalated: ${who} still has no first response`
      : `First response overdue: ${who}`, 'error');
  } else if (type === 'snooze.ended') {
    toast(`Snooze ended: ${who} is open again`, 'notice');
  }
}

/** The overdue badge in the thread's head. */
export function renderOverdue(conv) {
  const badge = $('#thread-overdue');
  if (!badge) return;
  badge.hidden = !(conv && conv.overdue);
  badge.title = conv && conv.sla_breached_at ? `First response due ${longTime(conv.sla_breached_at)}` : '';
}

export function wireScheduling() {
  $('#send-later').addEventListener('toggle', () => {
    const input = $('#send-later-at');
    if ($('#send-later').open && !input.value) input.value = localInput(inAnHour());
  });
  $('#send-later-go').addEventListener('click', scheduleReply);
  $('#messages').addEventListener('click', onThreadClick);
  $('#remind').addEventListener('toggle', () => {
    if (!$('#remind').open) return;
    const input = $('#remind-at');
    if (!input.value) input.value = localInput(inAnHour());
    loadReminders();
  });
  $('#remind-go').addEventListener('click', setReminder);
}
