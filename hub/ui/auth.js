// Logging in and out: the login form, and starting the inbox for the agent the
// session belongs to.

import { api } from './api.js';
import { renderContactEditor } from './contacts.js';
import { loadConversations } from './conversations.js';
import { $ } from './dom.js';
import { renderAvailability } from './handoff.js';
import { showPage } from './pages.js';
import { closeSocket, connectSocket } from './realtime.js';
import { contactsPage, state } from './state.js';

/** The login form instead of the app (the session is gone, or never was). */
export function showLogin(message = '') {
  closeSocket();
  state.me = null;
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#login-email').focus();
}

/** The app for a logged-in agent (`me` is GET /api/auth/me's answer). */
export async function startApp(me) {
  state.me = me.agent;
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#me-name').textContent = `${me.agent.name || me.agent.email} · ${me.agent.role}`;
  $('#show-reports').hidden = !['supervisor', 'admin'].includes(me.agent.role);
  $('#show-agents').hidden = !['supervisor', 'admin'].includes(me.agent.role);
  $('#show-campaigns').hidden = !['supervisor', 'admin'].includes(me.agent.role);
  $('#show-audit').hidden = me.agent.role !== 'admin';
  renderAvailability();
  connectSocket();
  await loadConversations();
}

async function onLogin(event) {
  event.preventDefault();
  $('#login-error').textContent = '';
  try {
    await api('POST', '/api/auth/login', {
      email: $('#login-email').value,
      password: $('#login-password').value,
    });
    $('#login-password').value = '';
    await startApp(await api('GET', '/api/auth/me'));
  } catch (error) {
    $('#login-error').textContent = error.message;
  }
}

async function onLogout() {
  try { await api('POST', '/api/auth/logout'); } catch { /* the session may be gone already */ }
  state.current = null;
  state.convs.clear();
  contactsPage.items.clear();
  contactsPage.next = null;
  renderContactEditor(null);
  showPage('inbox');
  showLogin();
}

export function wireLogin() {
  $('#login-form').addEventListener('submit', onLogin);
  $('#logout').addEventListener('click', onLogout);
}
