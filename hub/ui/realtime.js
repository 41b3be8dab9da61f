// The realtime feed: one WebSocket to /api/ws, reconnected with backoff, and
// each event it brings applied to the list, the open thread, the contact panel,
// the contacts page or the call screen-pop.

import { showLogin } from './auth.js';
import { showCallPop } from './callpop.js';
import { contactRenamed, loadContact, renderContact } from './contact-panel.js';
import { openContact, renderContactList } from './contacts.js';
import { fetchConversation, loadConversations, renderList, upsertConversation } from './conversations.js';
import { $ } from './dom.js';
import { onNotice, renderOverdue } from './scheduling.js';
import { contactsPage, state } from './state.js';
import { loadMessages, scheduleMarkRead, upsertMessage } from './thread.js';

function setWsState(value) {
  document.body.dataset.ws = value;
  const el = $('#ws-state');
  el.textContent = value === 'live' ? 'live' : value === 'connecting' ? 'connecting…' : 'offline';
  el.dataset.state = value;
}

/** Open the socket (closing any other); it reconnects until logout. */
export function connectSocket() {
  closeSocket();
  setWsState('connecting');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/api/ws`);
  state.ws = ws;
  ws.addEventListener('message', (event) => {
    let parsed;
    try { parsed = JSON.parse(event.data); } catch { return; }
    if (parsed && typeof parsed.type === 'string') onEvent(parsed.type, parsed.data || {});
  });
  ws.addEventListener('close', (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    setWsState('off');
    if (event.code === 4001) { showLogin('Your session ended; log in again.'); return; }
    if (!state.me) return;
    setTimeout(() => { if (state.me && !state.ws) connectSocket(); }, state.wsDelay);
    state.wsDelay = Math.min(state.wsDelay * 2, 15000);
  });
}

export function closeSocket() {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close();
  setWsState('off');
}

function onEvent(type, data) {
  switch (type) {
    case 'hello':
      setWsState('live');
      state.wsDelay = 1000;
      if (state.wsWasUp) {
        // Back after a break: what happened meanwhile is read again.
        loadConversations();
        if (state.current) loadMessages(state.current);
      }
      state.wsWasUp = true;
      break;
    case 'message.created':
    case 'message.updated':
      onMessage(type, data);
      break;
    case 'conversation.updated':
      if (data.id) upsertConversation(data);
      break;
    case 'call.incoming':
      showCallPop(data);
      break;
    case 'reminder.due':
    case 'sla.breached':
    case 'snooze.ended':
      onNotice(type, data);
      break;
    case 'contact.updated':
      // Not while the agent is editing it: the save answers with the new contact.
      if (state.contact && data.id === state.contact.id && !$('#contact').contains(document.activeElement)) {
        if (Array.isArray(data.identities)) renderContact(data);
        else loadContact(data.id);
      }
      if ('name' in data) contactRenamed(data);
      if (contactsPage.items.has(data.id) && Array.isArray(data.identities)) {
        contactsPage.items.set(data.id, { ...contactsPage.items.get(data.id), ...data });
        renderContactList();
      }
      break;
    case 'contact.merged':
      if (state.contact && (data.id === state.contact.id || data.merged_id === state.contact.id)) loadContact(data.id);
      if (contactsPage.items.delete(data.merged_id)) renderContactList();
      if (contactsPage.contact && contactsPage.contact.id === data.merged_id && !contactsPage.mergeOther) openContact(data.id);
      break;
    default:
      break;
  }
}

function onMessage(type, message) {
  if (!message.id) return;
  const conv = state.convs.get(message.conversation_id);
  if (type === 'message.created' && message.kind !== 'note' && message.status !== 'scheduled') {
    // An agent's reply answers the customer: no longer overdue (the first-response SLA).
    if (conv && message.direction === 'out' && message.sender && message.sender.type === 'agent') {
      conv.overdue = false;
      if (conv.id === state.current) renderOverdue(conv);
    }
    if (conv) {
      conv.last_message = { text: message.text, direction: message.direction, at: message.created_at };
      if (!conv.last_activity_at || message.created_at > conv.last_activity_at) conv.last_activity_at = message.created_at;
      renderList();
    } else {
      fetchConversation(message.conversation_id);
    }
  }
  if (message.conversation_id !== state.current) return;
  if (type === 'message.updated' && !state.messages.has(message.id)) return;
  upsertMessage(message);
  if (type === 'message.created' && message.direction === 'in') scheduleMarkRead();
}
