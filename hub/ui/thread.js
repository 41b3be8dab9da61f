// The open conversation: its head (contact, channel, status, assignee, labels),
// its messages (newest last, older ones on demand), assigning, resolving,
// snoozing, and marking it read while the agent looks at it.

import { api } from './api.js';
import { hideCanned, renderWindowState } from './composer.js';
import { loadContact } from './contact-panel.js';
import { renderList } from './conversations.js';
import { $, fail, toast } from './dom.js';
import { channelName, DAY, displayName, longTime } from './format.js';
import { renderBotState } from './handoff.js';
import { renderLabelsEditor } from './labels.js';
import { keepBottom, messageItem } from './messages.js';
import { renderOverdue } from './scheduling.js';
import { currentConv, state } from './state.js';

export async function openConversation(id) {
  if (state.current !== id) {
    state.current = id;
    state.messages.clear();
    state.olderCursor = null;
    $('#messages').replaceChildren();
    $('#reply-text').value = '';
    $('#reply-error').textContent = '';
    hideCanned();
  }
  document.body.dataset.view = 'thread';
  $('#thread-empty').hidden = true;
  $('#thread').hidden = false;
  if (!state.convs.has(id)) {
    try {
      state.convs.set(id, await api('GET', `/api/conversations/${encodeURIComponent(id)}`));
    } catch (error) {
      fail(error);
      return;
    }
  }
  renderList();
  renderThreadHead();
  const conv = currentConv();
  await Promise.all([loadMessages(id), loadContact(conv.contact && conv.contact.id)]);
  if (conv.unread) markRead();
  // The thread loads after its head: an agent may already be typing elsewhere
  // (a template's parameters, the subject), and keeps the focus there.
  const typing = document.activeElement && document.activeElement.matches('input, textarea, select');
  if (!typing) $('#reply-text').focus({ preventScroll: true });
}

export function scheduleMarkRead() {
  clearTimeout(state.readTimer);
  state.readTimer = setTimeout(markRead, 300);
}

async function markRead() {
  const conv = currentConv();
  if (!conv || document.hidden) return;
  conv.unread = 0;
  renderList();
  try {
    await api('PATCH', `/api/conversations/${encodeURIComponent(conv.id)}`, { unread: 0 });
  } catch { /* the next event corrects the count */ }
}

export function renderThreadHead() {
  const conv = currentConv();
  if (!conv) return;
  $('#thread-name').textContent = displayName(conv.contact);
  const badge = $('#thread-channel');
  badge.textContent = channelName(conv.channel);
  badge.className = `badge ch-${conv.channel}`;
  $('#thread-inbox').textContent = conv.inbox || '';
  let status = conv.status || '';
  if (conv.status === 'snoozed' && conv.snooze_until) status += ` until ${longTime(conv.snooze_until)}`;
  $('#thread-status').textContent = status;
  const mine = state.me && conv.assignee === state.me.id;
  $('#thread-assignee').textContent = conv.assignee ? `· assigned to ${mine ? 'me' : 'another agent'}` : '· unassigned';
  $('#assign-me').textContent = mine ? 'Unassign' : 'Assign to me';
  $('#resolve').textContent = conv.status === 'resolved' ? 'Reopen' : 'Resolve';
  renderLabelsEditor($('#thread-labels'), conv.labels || [], (labels) => patchConversation({ labels }));
  $('#reply-subject').hidden = conv.channel !== 'email';
  renderBotState();
  renderOverdue(conv);
  renderWindowState();
}

async function patchConversation(fields) {
  const conv = currentConv();
  if (!conv) return;
  try {
    const updated = await api('PATCH', `/api/conversations/${encodeURIComponent(conv.id)}`, fields);
    state.convs.set(updated.id, { ...conv, ...updated });
    renderThreadHead();
    renderList();
  } catch (error) {
    fail(error);
  }
}

export async function loadMessages(id, { older = false } = {}) {
  const params = new URLSearchParams({ limit: '50' });
  if (older && state.olderCursor) params.set('before', state.olderCursor);
  try {
    const page = await api('GET', `/api/conversations/${encodeURIComponent(id)}/messages?${params}`);
    if (state.current !== id) return;
    const list = $('#messages');
    const items = page.items.slice().reverse();
    const fresh = items.filter((m) => !state.messages.has(m.id));
    for (const m of fresh) state.messages.set(m.id, m);
    const nodes = fresh.map(messageItem);
    if (older) list.prepend(...nodes);
    else list.append(...nodes);
    state.olderCursor = page.next_cursor;
    $('#older').hidden = !page.next_cursor;
    if (!older) {
      state.stick = true;
      keepBottom();
    }
    renderWindowState();
  } catch (error) {
    if (error.status !== 401) fail(error);
  }
}

/** A new or changed message of the open conversation, drawn in place. */
export function upsertMessage(message) {
  const list = $('#messages');
  const known = state.messages.get(message.id);
  const merged = known ? { ...known, ...message } : message;
  state.messages.set(message.id, merged);
  const node = messageItem(merged);
  const old = list.querySelector(`li[data-id="${CSS.escape(message.id)}"]`);
  if (old) {
    old.replaceWith(node);
  } else {
    list.append(node);
    if (state.stick || message.direction === 'out') {
      state.stick = true;
      keepBottom();
    }
  }
  renderWindowState();
}

export function wireThread() {
  $('#messages').addEventListener('scroll', () => {
    const list = $('#messages');
    state.stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }, { passive: true });
  $('#older').addEventListener('click', () => state.current && loadMessages(state.current, { older: true }));
  $('#back').addEventListener('click', () => { document.body.dataset.view = 'list'; });
  $('#contact-back').addEventListener('click', () => { document.body.dataset.view = 'thread'; });
  $('#thread-name').addEventListener('click', () => { document.body.dataset.view = 'contact'; });
  $('#assign-me').addEventListener('click', () => {
    const conv = currentConv();
    if (!conv || !state.me) return;
    patchConversation({ assignee_id: conv.assignee === state.me.id ? null : state.me.id });
  });
  $('#resolve').addEventListener('click', () => {
    const conv = currentConv();
    if (conv) patchConversation({ status: conv.status === 'resolved' ? 'open' : 'resolved' });
  });
  $('#snooze-go').addEventListener('click', () => {
    const value = $('#snooze-until').value;
    const until = value ? new Date(value) : null;
    if (!until || Number.isNaN(until.getTime())) { toast('Choose when the snooze ends', 'error'); return; }
    patchConversation({ status: 'snoozed', snooze_until: until.toISOString() });
    $('#snooze').open = false;
  });
  $('#snooze').addEventListener('toggle', () => {
    const input = $('#snooze-until');
    if (!input.value) {
      const tomorrow = new Date(Date.now() + DAY);
      tomorrow.setHours(9, 0, 0, 0);
      const pad = (n) => String(n).padStart(2, '0');
      input.value = `${tomorrow.getFullYear()}-${pad(tomorrow.getMonth() + 1)}-${pad(tomorrow.getDate())}T09:00`;
    }
  });
  document.addEventListener('visibilitychange', () => {
    const conv = currentConv();
    if (!document.hidden && conv && conv.unread) markRead();
  });
}
