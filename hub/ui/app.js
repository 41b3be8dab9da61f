// The agents' inbox. Plain JS, no build step, nothing from the network: this
// module is the page's entry; it wires the modules beside it and starts.
//
// Security rules every module keeps: customer text only ever reaches the page as
// text nodes (textContent, never innerHTML, see dom.js); URLs from messages are
// used only when they are http(s), or data:image for images (safeUrl); every
// state-changing request repeats the hub_csrf cookie in the X-CSRF-Token header
// (api.js).
//
// The modules, by room: state.js (all shared state), dom.js, format.js, api.js;
// auth.js (login), pages.js (inbox / contacts / reports), conversations.js (the
// list), thread.js (the open conversation), messages.js (drawing one message),
// composer.js (the reply box), labels.js, contact-panel.js, callpop.js,
// handoff.js (take over, availability, the agents page), scheduling.js (send
// later, reminders, the SLA's and reminders' notices),
// contacts.js (the contacts page), greetings.js (the greetings settings page),
// reports.js, realtime.js (the WebSocket).
// They import each other's functions freely; import cycles are harmless as no
// module runs anything when loaded except this one, once all are loaded.

import { api, csrfToken } from './api.js';
import { showLogin, startApp, wireLogin } from './auth.js';
import { wireCallPop } from './callpop.js';
import { wireComposer } from './composer.js';
import { wireContactsPage } from './contacts.js';
import { wireConversationList } from './conversations.js';
import { wireHandoff } from './handoff.js';
import { wirePages } from './pages.js';
import { wireReports } from './reports.js';
import { wireScheduling } from './scheduling.js';
import { wireThread } from './thread.js';

// What the page's module used to export, for whoever imports it.
export { parseBirthday } from './contacts.js';
export { safeUrl } from './dom.js';
export { splitQuoted } from './messages.js';

function wire() {
  wireLogin();
  wirePages();
  wireContactsPage();
  wireReports();
  wireConversationList();
  wireThread();
  wireComposer();
  wireCallPop();
  wireHandoff();
  wireScheduling();
}

async function boot() {
  wire();
  // No CSRF cookie: no session either (they are set and cleared together).
  if (!csrfToken()) { showLogin(); return; }
  try {
    await startApp(await api('GET', '/api/auth/me'));
  } catch {
    showLogin();
  }
}

boot();
