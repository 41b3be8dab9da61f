// The audit log page (admins): who changed what, when and from where, newest
// first, filtered by agent, action and dates (GET /api/audit), a page at a time.
// Everything shown is text (dom.js `h`): an entry's detail may hold customer data.

import { api } from './api.js';
import { $, fail, h } from './dom.js';

// The actions the hub records (hub/services/audit.py), grouped for the filter.
const ACTIONS = [
  ['Logins', ['login', 'login.failed', 'logout', 'login.lock_cleared']],
  ['Conversations', ['message.replied', 'note.added', 'conversation.status', 'conversation.assigned', 'conversation.labels']],
  ['Contacts', ['contact.created', 'contact.updated', 'contact.merged', 'contacts.imported', 'contacts.exported']],
  ['Agents and teams', ['agent.created', 'agent.updated', 'team.created', 'team.updated']],
  ['Other', ['campaign.created', 'campaign.start', 'campaign.pause', 'campaign.cancel', 'canned.created', 'canned.updated', 'canned.deleted', 'greetings.updated']],
];

let built = false;
let cursor = null;

function page() {
  return $('#audit-page');
}

function detailText(detail) {
  return Object.entries(detail || {})
    .map(([key, value]) => `${key}: ${typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value)}`)
    .join(' · ');
}

function entryRow(entry) {
  const who = entry.agent ? (entry.agent.name || entry.agent.email || entry.agent.id) : '(not logged in)';
  return h('tr', { class: 'audit-entry', dataset: { action: entry.action } },
    h('td', null, h('time', { datetime: entry.at || '' }, entry.at ? new Date(entry.at).toLocaleString() : '')),
    h('td', { class: 'audit-agent' }, who),
    h('td', { class: 'audit-action' }, entry.action),
    h('td', { class: 'audit-target' }, entry.target || ''),
    h('td', { class: 'audit-address' }, entry.address || ''),
    h('td', { class: 'audit-detail' }, detailText(entry.detail)));
}

function dayStart(value, next = false) {
  if (!value) return null;
  const date = new Date(`${value}T00:00:00`);
  if (next) date.setDate(date.getDate() + 1);
  return date.toISOString();
}

function query() {
  const params = new URLSearchParams({ limit: '50' });
  const agent = $('#audit-agent').value;
  const action = $('#audit-action').value;
  const from = dayStart($('#audit-from').value);
  const to = dayStart($('#audit-to').value, true);  // the whole last day
  if (agent) params.set('agent', agent);
  if (action) params.set('action', action);
  if (from) params.set('from', from);
  if (to) params.set('to', to);
  if (cursor) params.set('cursor', cursor);
  return params;
}

async function load(more = false) {
  if (!more) cursor = null;
  const body = $('#audit-list tbody');
  try {
    const data = await api('GET', `/api/audit?${query()}`);
    if (!more) body.replaceChildren();
    body.append(...data.items.map(entryRow));
    cursor = data.next_cursor;
    $('#audit-more').hidden = !cursor;
    $('#audit-empty').hidden = body.children.length > 0;
    $('#audit-error').textContent = '';
  } catch (error) {
    $('#audit-error').textContent = error.message;
    fail(error);
  }
}

async function agentOptions() {
  const select = $('#audit-agent');
  try {
    const data = await api('GET', '/api/agents');
    const items = data.items || data;
    select.append(...items.map((agent) => h('option', { value: agent.id }, agent.name || agent.email)));
  } catch (error) {
    fail(error);
  }
}

function build() {
  const root = page();
  root.replaceChildren(
    h('h1', null, 'Audit log'),
    h('form', { id: 'audit-filters', class: 'audit-filters', onsubmit: (event) => { event.preventDefault(); load(); } },
      h('label', null, 'Agent ', h('select', { id: 'audit-agent' },
        h('option', { value: '' }, 'Anyone'), h('option', { value: 'none' }, '(not logged in)'))),
      h('label', null, 'Action ', h('select', { id: 'audit-action' },
        h('option', { value: '' }, 'Any'),
        ACTIONS.map(([group, names]) => h('optgroup', { label: group }, names.map((name) => h('option', { value: name }, name)))))),
      h('label', null, 'From ', h('input', { id: 'audit-from', type: 'date' })),
      h('label', null, 'To ', h('input', { id: 'audit-to', type: 'date' })),
      h('button', { type: 'submit' }, 'Show'),
      h('span', { id: 'audit-error', class: 'error', role: 'alert' })),
    h('table', { id: 'audit-list', class: 'audit-table' },
      h('thead', null, h('tr', null, ['When', 'Who', 'Action', 'Target', 'From', 'Detail'].map((t) => h('th', null, t)))),
      h('tbody')),
    h('p', { id: 'audit-empty', class: 'hint', hidden: true }, 'Nothing recorded matches.'),
    h('button', { id: 'audit-more', type: 'button', class: 'ghost', hidden: true, onclick: () => load(true) }, 'More'));
  agentOptions();
}

export function showAuditPage() {
  if (!built) {
    build();
    built = true;
  }
  load();
}
