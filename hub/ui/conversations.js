// The conversation list: loading it page by page with the server-side filters
// (assignee, status, search), the client-side ones (channel, label), and
// merging in the conversations that realtime events change.

import { api } from './api.js';
import { $, fail, h } from './dom.js';
import { channelName, displayName, initials, shortTime } from './format.js';
import { state } from './state.js';
import { openConversation, renderThreadHead, scheduleMarkRead } from './thread.js';

function listQuery(cursor) {
  const params = new URLSearchParams({ limit: '50' });
  const { assignee, status, q, bot, overdue } = state.filter;
  if (assignee) params.set('assignee', assignee);
  if (overdue) params.set('overdue', 'true');
  if (bot) params.set('bot', bot);
  if (status) params.set('status', status);
  if (q) params.set('q', q);
  if (cursor) params.set('cursor', cursor);
  return `/api/conversations?${params}`;
}

export async function loadConversations({ more = false } = {}) {
  try {
    const page = await api('GET', listQuery(more ? state.nextCursor : null));
    if (!more) state.convs.clear();
    for (const item of page.items) state.convs.set(item.id, item);
    state.nextCursor = page.next_cursor;
    renderList();
  } catch (error) {
    if (error.status !== 401) fail(error);
  }
}

/** Whether a conversation belongs in the list as filtered now (events change
 * conversations after the server filtered them). */
function matchesFilter(conv) {
  const f = state.filter;
  if (f.status && conv.status !== f.status) return false;
  if (f.assignee === 'me' && conv.assignee !== (state.me && state.me.id)) return false;
  if (f.assignee === 'none' && conv.assignee) return false;
  if (f.channel && conv.channel !== f.channel) return false;
  if (f.label && !(conv.labels || []).includes(f.label)) return false;
  if (f.bot && Boolean(conv.bot) !== (f.bot === 'true')) return false;
  if (f.overdue && !conv.overdue) return false;
  return true;
}

function sortedConversations() {
  return [...state.convs.values()].sort((a, b) =>
    String(b.last_activity_at || '').localeCompare(String(a.last_activity_at || '')));
}

export function renderList() {
  const list = $('#conversations');
  const shown = sortedConversations().filter(matchesFilter);
  list.replaceChildren(...shown.map(conversationItem));
  $('#list-empty').hidden = shown.length > 0;
  $('#more-conversations').hidden = !state.nextCursor;
  renderLabelFilter();
  const unread = [...state.convs.values()].reduce((n, c) => n + (c.unread || 0), 0);
  document.title = unread ? `(${unread}) Inbox` : 'Inbox';
}

function renderLabelFilter() {
  const select = $('#filter-label');
  const labels = new Set();
  for (const conv of state.convs.values()) for (const l of conv.labels || []) labels.add(l);
  if (state.filter.label) labels.add(state.filter.label);
  const wanted = ['', ...[...labels].sort()];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join('\u0000') === have.join('\u0000')) return;
  select.replaceChildren(...wanted.map((l) => h('option', { value: l }, l || 'All labels')));
  select.value = state.filter.label;
}

/** A search's matching message, its words marked (text nodes and <mark> only). */
function matchPreview(match) {
  const words = state.filter.q.split(/\s+/).filter(Boolean)
    .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  const text = match.text || '';
  const parts = words.length ? text.split(new RegExp(`(${words.join('|')})`, 'giu')) : [text];
  return h('span', { class: 'conv-preview conv-match', title: 'The newest message with these words' },
    parts.map((part, i) => (i % 2 ? h('mark', null, part) : part)));
}

function conversationItem(conv) {
  const name = displayName(conv.contact);
  const last = conv.last_message;
  const preview = last ? `${last.direction === 'out' ? '↩ ' : ''}${last.text || '…'}` : 'No messages yet';
  const unread = conv.unread || 0;
  return h('li', {
    class: `conv${conv.id === state.current ? ' current' : ''}${unread ? ' has-unread' : ''}`,
    dataset: { id: conv.id, channel: conv.channel || '' },
  }, h('button', { type: 'button', class: 'conv-btn', onclick: () => openConversation(conv.id) },
    h('span', { class: `avatar ch-${conv.channel}`, 'aria-hidden': 'true' }, initials(name)),
    h('span', { class: 'conv-main' },
      h('span', { class: 'conv-top' },
        h('span', { class: 'conv-name' }, name),
        h('time', { class: 'conv-time', datetime: conv.last_activity_at || '' }, shortTime(conv.last_activity_at))),
      h('span', { class: 'conv-bottom' },
        h('span', { class: `badge ch-${conv.channel}` }, channelName(conv.channel)),
        conv.bot ? h('span', { class: 'badge bot-badge', title: `A bot (${conv.bot}) answers` }, 'Bot') : null,
        conv.overdue ? h('span', { class: 'badge overdue-badge', title: 'First response overdue' }, 'Overdue') : null,
        conv.match ? matchPreview(conv.match) : h('span', { class: 'conv-preview' }, preview),
        unread ? h('span', { class: 'unread', title: `${unread} unread` }, String(unread)) : null),
      (conv.labels || []).length
        ? h('span', { class: 'conv-labels' }, conv.labels.map((l) => h('span', { class: 'chip small' }, l)))
        : null)));
}

/** A conversation from an event (whole, or only the fields that changed). */
export function upsertConversation(data) {
  const known = state.convs.get(data.id);
  if (!known) {
    if (data.contact && 'name' in data.contact && 'unread' in data) {
      state.convs.set(data.id, data);
    } else {
      fetchConversation(data.id);
      return;
    }
  } else {
    const merged = { ...known, ...data, contact: { ...known.contact, ...(data.contact || {}) } };
    if ('unread_added' in data && !('unread' in data)) {
      merged.unread = data.id === state.current ? 0 : (known.unread || 0) + data.unread_added;
    }
    delete merged.unread_added;
    delete merged.changed_by;
    state.convs.set(data.id, merged);
  }
  if (data.id === state.current) {
    renderThreadHead();
    if (data.unread_added) scheduleMarkRead();
  }
  renderList();
}

/** A conversation the list does not hold yet, fetched once at a time. */
export async function fetchConversation(id) {
  if (state.fetching.has(id) || state.filter.q) return;
  state.fetching.add(id);
  try {
    const conv = await api('GET', `/api/conversations/${encodeURIComponent(id)}`);
    state.convs.set(conv.id, conv);
    renderList();
  } catch { /* not visible to this agent, or gone */ } finally {
    state.fetching.delete(id);
  }
}

export function wireConversationList() {
  for (const tab of document.querySelectorAll('#assignee-tabs button')) {
    tab.addEventListener('click', () => {
      for (const other of document.querySelectorAll('#assignee-tabs button')) other.setAttribute('aria-selected', String(other === tab));
      state.filter.assignee = tab.dataset.assignee;
      loadConversations();
    });
  }
  $('#filter-status').addEventListener('change', (e) => { state.filter.status = e.target.value; loadConversations(); });
  $('#filter-channel').addEventListener('change', (e) => { state.filter.channel = e.target.value; renderList(); });
  $('#filter-label').addEventListener('change', (e) => { state.filter.label = e.target.value; renderList(); });
  $('#filter-overdue').addEventListener('change', (e) => { state.filter.overdue = e.target.checked; loadConversations(); });
  $('#filter-bot').addEventListener('change', (e) => {
    state.filter.bot = e.target.value;
    // A bot's conversations are pending: "open" would show none of them.
    if (state.filter.bot === 'true' && state.filter.status === 'open') {
      state.filter.status = '';
      $('#filter-status').value = '';
    }
    loadConversations();
  });
  let searchTimer = null;
  $('#search').addEventListener('input', (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.filter.q = e.target.value.trim(); loadConversations(); }, 250);
  });
  $('#more-conversations').addEventListener('click', () => loadConversations({ more: true }));
}
