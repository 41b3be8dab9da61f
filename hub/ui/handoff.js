// Bots and people: the "Take over" button and the bot badge of the open
// conversation, the agent's availability switch in the top bar, and the agents
// page (availability and capacity; admins change capacity).

import { api } from './api.js';
import { renderList } from './conversations.js';
import { $, fail, h, toast } from './dom.js';
import { renderThreadHead } from './thread.js';
import { currentConv, state } from './state.js';

/** The open conversation's bot badge and "Take over" button (called with its head). */
export function renderBotState() {
  const conv = currentConv();
  const bot = conv && conv.bot;
  const badge = $('#thread-bot');
  badge.hidden = !bot;
  badge.textContent = bot ? `Bot: ${bot}` : '';
  $('#take-over').hidden = !bot;
  $('#assign-me').hidden = Boolean(bot); // taking over assigns it
  $('#reply-text').placeholder = bot
    ? `A bot (${bot}) is answering; your reply takes the conversation over`
    : 'Reply… (Enter sends, Shift+Enter new line, /shortcut for canned responses)';
}

async function takeOver() {
  const conv = currentConv();
  if (!conv || !conv.bot) return;
  const button = $('#take-over');
  button.disabled = true;
  try {
    const updated = await api('POST', `/api/conversations/${encodeURIComponent(conv.id)}/takeover`);
    state.convs.set(updated.id, { ...conv, ...updated });
    toast('The conversation is yours; the bot has stopped');
  } catch (error) {
    fail(error);
  } finally {
    button.disabled = false;
  }
  renderThreadHead();
  renderList();
}

/** The availability switch shows the agent's own availability. */
export function renderAvailability() {
  const select = $('#availability');
  const value = (state.me && state.me.availability) || 'online';
  select.value = value;
  select.dataset.value = value;
}

async function setAvailability(event) {
  const select = event.target;
  try {
    const agent = await api('PUT', '/api/agents/me/availability', { availability: select.value });
    state.me = { ...state.me, ...agent };
    toast(`You are ${agent.availability}`);
  } catch (error) {
    fail(error);
  }
  renderAvailability();
}

// -- the agents page ---------------------------------------------------------------

export async function showAgentsPage() {
  $('#agents-error').textContent = '';
  try {
    const page = await api('GET', '/api/agents');
    renderAgents(page.items || []);
  } catch (error) {
    $('#agents-error').textContent = error.message;
  }
}

function renderAgents(agents) {
  const admin = Boolean(state.me && state.me.role === 'admin');
  const rows = agents.map((agent) => h('tr', { dataset: { id: agent.id } },
    h('td', null, agent.name || ''),
    h('td', null, agent.email || ''),
    h('td', null, agent.role || ''),
    h('td', null, h('span', { class: `availability-dot av-${agent.availability}` }, agent.availability || 'online')),
    h('td', null, admin ? capacityEditor(agent) : (agent.capacity === null ? 'no limit' : String(agent.capacity)))));
  $('#agents-list tbody').replaceChildren(...rows);
}

function capacityEditor(agent) {
  const input = h('input', {
    type: 'number', min: '1', step: '1', class: 'capacity',
    'aria-label': `Capacity of ${agent.name || agent.email}`,
    placeholder: 'no limit',
  });
  input.value = agent.capacity === null || agent.capacity === undefined ? '' : String(agent.capacity);
  const save = async () => {
    const text = input.value.trim();
    const capacity = text === '' ? null : Number(text);
    if (capacity !== null && !(Number.isInteger(capacity) && capacity >= 1)) {
      toast('Capacity: a whole number from 1, or empty for no limit', 'error');
      return;
    }
    try {
      const updated = await api('PATCH', `/api/agents/${encodeURIComponent(agent.id)}`, { capacity });
      agent.capacity = updated.capacity;
      toast(`Capacity of ${updated.name || updated.email}: ${updated.capacity === null ? 'no limit' : updated.capacity}`);
    } catch (error) {
      fail(error);
    }
  };
  return h('form', { class: 'capacity-form', novalidate: true, onsubmit: (e) => { e.preventDefault(); save(); } },
    input, h('button', { type: 'submit' }, 'Save'));
}

export function wireHandoff() {
  $('#take-over').addEventListener('click', takeOver);
  $('#availability').addEventListener('change', setAvailability);
}
