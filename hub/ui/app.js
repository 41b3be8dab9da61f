// The agents' inbox. Plain JS, no build step, nothing from the network.
//
// Security rules this file keeps: customer text only ever reaches the page as
// text nodes (textContent, never innerHTML); URLs from messages are used only
// when they are http(s), or data:image for images; every state-changing request
// repeats the hub_csrf cookie in the X-CSRF-Token header.

const DAY = 24 * 60 * 60 * 1000;
const CHANNELS = {
  whatsapp: 'WhatsApp', sms: 'SMS', telegram: 'Telegram', email: 'E-mail', voice: 'Voice', form: 'Form',
};
const TICKS = {
  queued: ['◷', 'Queued'], sending: ['◷', 'Sending'], sent: ['✓', 'Sent'],
  delivered: ['✓✓', 'Delivered'], read: ['✓✓', 'Read'], unknown: ['?', 'Status unknown'],
};

const state = {
  me: null,
  convs: new Map(),      // id -> conversation
  nextCursor: null,
  filter: { assignee: '', status: 'open', channel: '', label: '', q: '' },
  current: null,         // open conversation id
  messages: new Map(),   // id -> message of the open conversation
  olderCursor: null,
  contact: null,         // the contact shown in the panel
  refusals: new Map(),   // conversation id -> the API's refusal of the last reply
  canned: null,          // [{shortcut, text}] once loaded ([] when there is no API)
  cannedActive: 0,
  fetching: new Set(),   // conversation ids being fetched after an event
  ws: null,
  wsDelay: 1000,
  wsWasUp: false,
  callpop: null,
  readTimer: null,
  stick: true,          // keep the thread scrolled to its newest message
};

// -- small helpers ---------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

/** Only http(s) URLs, or data:image (raster) ones when `image`; else null. */
export function safeUrl(raw, { image = false } = {}) {
  if (typeof raw !== 'string') return null;
  const text = raw.trim();
  if (image && /^data:image\/(png|jpe?g|gif|webp|bmp|avif);/i.test(text)) return text;
  let url;
  try { url = new URL(text, location.href); } catch { return null; }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
}

/** An element; string children become text nodes, never markup. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'href' || key === 'src') {
      const safe = safeUrl(value, { image: tag === 'img' });
      if (safe) el.setAttribute(key, safe);
    } else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)hub_csrf=([^;]*)/);
  return match ? decodeURIComponent(match[1].replace(/^"|"$/g, '')) : '';
}

class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken();
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    if (response.status === 401 && path !== '/api/auth/login') showLogin();
    throw new ApiFailure(response.status, error.code || 'http', error.message || `HTTP ${response.status}`);
  }
  return data;
}

function toast(text, kind = 'info') {
  const el = $('#toast');
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

function fail(error) {
  toast(error && error.message ? error.message : String(error), 'error');
}

function channelName(channel) {
  return CHANNELS[channel] || channel || '?';
}

function displayName(contact) {
  return (contact && contact.name) || 'Unknown contact';
}

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  return (parts.slice(0, 2).map((p) => [...p][0]).join('') || '?').toUpperCase();
}

function shortTime(iso) {
  if (!iso) return '';
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return '';
  const now = new Date();
  if (at.toDateString() === now.toDateString()) {
    return at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  return at.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function longTime(iso) {
  if (!iso) return '';
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? '' : at.toLocaleString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '';
  const total = Math.max(0, Math.round(Number(seconds)));
  const m = Math.floor(total / 60);
  const s = String(total % 60).padStart(2, '0');
  return `${m}:${s}`;
}

function hoursLeft(ms) {
  const minutes = Math.max(0, Math.floor(ms / 60000));
  const hours = Math.floor(minutes / 60);
  return hours ? `${hours} h ${minutes % 60} min` : `${minutes} min`;
}

// -- login -------------------------------------------------------------------------

function showLogin(message = '') {
  closeSocket();
  state.me = null;
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#login-email').focus();
}

async function startApp(me) {
  state.me = me.agent;
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#me-name').textContent = `${me.agent.name || me.agent.email} · ${me.agent.role}`;
  $('#show-reports').hidden = !['supervisor', 'admin'].includes(me.agent.role);
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
  cp.items.clear();
  cp.next = null;
  renderContactEditor(null);
  showPage('inbox');
  showLogin();
}

// -- the conversation list ---------------------------------------------------------

function listQuery(cursor) {
  const params = new URLSearchParams({ limit: '50' });
  const { assignee, status, q } = state.filter;
  if (assignee) params.set('assignee', assignee);
  if (status) params.set('status', status);
  if (q) params.set('q', q);
  if (cursor) params.set('cursor', cursor);
  return `/api/conversations?${params}`;
}

async function loadConversations({ more = false } = {}) {
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
  return true;
}

function sortedConversations() {
  return [...state.convs.values()].sort((a, b) =>
    String(b.last_activity_at || '').localeCompare(String(a.last_activity_at || '')));
}

function renderList() {
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
        h('span', { class: 'conv-preview' }, preview),
        unread ? h('span', { class: 'unread', title: `${unread} unread` }, String(unread)) : null),
      (conv.labels || []).length
        ? h('span', { class: 'conv-labels' }, conv.labels.map((l) => h('span', { class: 'chip small' }, l)))
        : null)));
}

function upsertConversation(data) {
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

async function fetchConversation(id) {
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

// -- one conversation ----------------------------------------------------------------

function currentConv() {
  return state.current ? state.convs.get(state.current) : null;
}

async function openConversation(id) {
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
  $('#reply-text').focus({ preventScroll: true });
}

function scheduleMarkRead() {
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

function renderThreadHead() {
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

async function loadMessages(id, { older = false } = {}) {
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

function keepBottom() {
  const list = $('#messages');
  if (state.stick) list.scrollTop = list.scrollHeight;
}

function upsertMessage(message) {
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

// -- rendering messages --------------------------------------------------------------

function ticks(message) {
  if (message.direction !== 'out' || message.kind === 'note' || !message.status) return null;
  if (message.status === 'failed') {
    const reason = message.error || 'no reason given';
    return h('span', { class: 'ticks failed', dataset: { status: 'failed' }, title: reason },
      `⚠ Failed: ${reason}`);
  }
  const [mark, label] = TICKS[message.status] || ['', message.status];
  return h('span', {
    class: `ticks ${message.status}`, dataset: { status: message.status }, title: label, 'aria-label': label,
  }, mark);
}

function attachmentNode(attachment) {
  const type = String(attachment.content_type || '');
  const name = attachment.filename || attachment.name || (type ? type.split('/')[0] : 'file');
  if (type.startsWith('image/') || (!type && /^data:image\//.test(attachment.url || ''))) {
    const src = safeUrl(attachment.url, { image: true });
    if (src) {
      const link = safeUrl(attachment.url);
      // The image grows the thread when it loads: keep the newest message in view.
      const img = h('img', { src, alt: name, class: 'media-img', onload: keepBottom });
      return link ? h('a', { href: link, target: '_blank', rel: 'noopener noreferrer' }, img) : img;
    }
  }
  const url = safeUrl(attachment.url);
  if (!url) return h('span', { class: 'file unsafe' }, `${name} (unsafe link withheld)`);
  if (type.startsWith('audio/')) return h('audio', { controls: true, preload: 'none', src: url });
  if (type.startsWith('video/')) return h('video', { controls: true, preload: 'none', src: url, class: 'media-video' });
  return h('a', { class: 'file', href: url, target: '_blank', rel: 'noopener noreferrer', download: '' },
    `⤓ ${name}`);
}

/** An e-mail body split into what was written and the quoted history. */
export function splitQuoted(text) {
  const lines = String(text || '').split(/\r?\n/);
  const start = lines.findIndex((line, i) =>
    /^On .+wrote:\s*$/.test(line)
    || /^-{2,}\s*Original Message\s*-{2,}/i.test(line)
    || /^From: .+/.test(line) && i > 0 && !lines[i - 1].trim()
    || (line.startsWith('>') && lines.slice(i).every((l) => l.startsWith('>') || !l.trim())));
  if (start <= 0) return [lines.join('\n'), start === 0 ? '' : ''];
  return [lines.slice(0, start).join('\n').trimEnd(), lines.slice(start).join('\n')];
}

function callNode(message) {
  const call = message.call || {};
  const voicemail = message.kind === 'voicemail';
  const way = call.direction === 'out' ? 'Outgoing call' : 'Incoming call';
  const statusText = {
    ringing: 'ringing', answered: 'answered', missed: 'missed', completed: 'completed',
  }[call.status] || call.status || '';
  const parts = [voicemail ? 'Voicemail' : way, statusText, duration(call.duration)].filter(Boolean);
  const recording = safeUrl(call.recording_url);
  return h('div', { class: 'call' },
    h('div', { class: 'call-line' }, h('span', { class: 'call-icon', 'aria-hidden': 'true' }, voicemail ? '✉' : '☎'),
      parts.join(' · ')),
    recording ? h('audio', { controls: true, preload: 'none', src: recording, class: 'recording' }) : null,
    message.text ? h('p', { class: 'text' }, message.text) : null);
}

function emailNode(message) {
  const [body, quoted] = splitQuoted(message.text);
  return h('div', { class: 'email' },
    h('div', { class: 'subject' }, message.subject || '(no subject)'),
    h('p', { class: 'text' }, body),
    quoted ? h('details', { class: 'quoted' }, h('summary', null, 'Quoted history'), h('pre', null, quoted)) : null);
}

function extraNode(message) {
  const nodes = [];
  const loc = message.location;
  if (loc && typeof loc === 'object') {
    const where = [loc.name, loc.address].filter(Boolean).join(', ');
    nodes.push(h('p', { class: 'extra' }, `Location: ${where ? `${where} ` : ''}(${loc.latitude ?? loc.lat}, ${loc.longitude ?? loc.lon})`));
  }
  const card = message.contact;
  if (card && typeof card === 'object') {
    const phones = (card.phones || []).join(', ');
    nodes.push(h('p', { class: 'extra' }, `Contact card: ${card.name || 'Contact card'}${phones ? ` · ${phones}` : ''}`));
  }
  const button = message.button;
  if (button && typeof button === 'object') {
    nodes.push(h('p', { class: 'extra' }, `Button: ${button.text || button.payload || 'button'}`));
  }
  return nodes;
}

function senderLabel(message) {
  const type = message.sender && message.sender.type;
  if (message.kind === 'note') return 'Private note';
  if (type === 'bot') return 'Bot';
  if (type === 'system') return 'System';
  if (type === 'agent') return state.me && message.sender.id === state.me.id ? 'You' : 'Agent';
  return null;
}

function messageItem(message) {
  const type = message.sender && message.sender.type;
  const kind = message.kind || 'text';
  if (kind === 'event' || (type === 'system' && message.direction !== 'out')) {
    return h('li', { class: 'msg system', dataset: { id: message.id, kind } },
      h('span', { class: 'text' }, message.text || ''), h('time', { datetime: message.created_at || '' }, shortTime(message.created_at)));
  }
  const classes = ['msg', message.direction === 'out' ? 'out' : 'in', `kind-${kind}`];
  if (kind === 'note') classes.push('note');
  if (type === 'bot') classes.push('bot');
  if (type === 'system') classes.push('sys');
  let body;
  if (kind === 'call' || kind === 'voicemail') body = [callNode(message)];
  else if (kind === 'email' || message.subject) body = [emailNode(message)];
  else body = [message.text ? h('p', { class: 'text' }, message.text) : null];
  const attachments = (message.attachments || []).filter((a) => a && typeof a === 'object');
  const label = senderLabel(message);
  return h('li', { class: classes.join(' '), dataset: { id: message.id, kind } },
    h('div', { class: 'bubble' },
      label ? h('div', { class: 'sender' }, label) : null,
      body,
      attachments.length ? h('div', { class: 'attachments' }, attachments.map(attachmentNode)) : null,
      extraNode(message),
      h('div', { class: 'meta' },
        h('time', { datetime: message.created_at || '', title: longTime(message.created_at) }, shortTime(message.created_at)),
        ticks(message))));
}

// -- the reply box -------------------------------------------------------------------

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

function renderWindowState() {
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
}

async function sendReply(event) {
  if (event) event.preventDefault();
  const conv = currentConv();
  const box = $('#reply-text');
  const text = box.value.trim();
  if (!conv || !text) return;
  const isPrivate = $('#reply-private').checked;
  const body = { text, private: isPrivate };
  const subject = $('#reply-subject').value.trim();
  if (conv.channel === 'email' && subject && !isPrivate) body.subject = subject;
  $('#reply-send').disabled = true;
  $('#reply-error').textContent = '';
  try {
    const message = await api('POST', `/api/conversations/${encodeURIComponent(conv.id)}/messages`, body);
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

function hideCanned() {
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

// -- labels ---------------------------------------------------------------------------

function renderLabelsEditor(container, labels, onChange) {
  // The input survives re-renders (events redraw the head): a label being typed
  // is neither lost nor unfocused.
  container.labels = labels;
  container.onLabels = onChange;
  let input = container.querySelector('input.label-input');
  if (!input) {
    input = h('input', { type: 'text', placeholder: '+ label', 'aria-label': 'Add a label', class: 'label-input', maxlength: '64' });
    input.addEventListener('keydown', (event) => {
      if (event.key !== 'Enter') return;
      event.preventDefault();
      const label = input.value.trim();
      if (label && !container.labels.includes(label)) container.onLabels([...container.labels, label]);
      input.value = '';
    });
    container.append(input);
  }
  for (const chip of [...container.querySelectorAll('.chip')]) chip.remove();
  input.before(...labels.map((label) => h('span', { class: 'chip' }, label,
    h('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove label ${label}`, onclick: () => container.onLabels(container.labels.filter((l) => l !== label)) }, '×'))));
}

// -- the contact panel -----------------------------------------------------------------

async function loadContact(id) {
  if (!id) { renderContact(null); return; }
  try {
    renderContact(await api('GET', `/api/contacts/${encodeURIComponent(id)}`));
  } catch (error) {
    if (error.status !== 401) renderContact(null);
  }
}

function birthdayText(birthday) {
  if (!birthday || !birthday.month || !birthday.day) return null;
  const date = new Date(Date.UTC(birthday.year || 2000, birthday.month - 1, birthday.day));
  const opts = { month: 'long', day: 'numeric', timeZone: 'UTC' };
  if (birthday.year) opts.year = 'numeric';
  return date.toLocaleDateString([], opts);
}

function localTime(zone) {
  try {
    return new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', timeZone: zone });
  } catch {
    return null;
  }
}

function row(label, ...value) {
  return [h('dt', null, label), h('dd', null, ...value)];
}

function renderContact(contact) {
  state.contact = contact;
  const box = $('#contact');
  if (!contact) {
    box.replaceChildren(h('p', { class: 'empty' }, 'No contact selected.'));
    return;
  }
  const nameInput = h('input', { id: 'contact-name', type: 'text', value: contact.name || '', 'aria-label': 'Name', maxlength: '200' });
  const nameForm = h('form', { class: 'name-form', onsubmit: (event) => {
    event.preventDefault();
    patchContact(contact.id, { name: nameInput.value.trim() || null });
  } }, nameInput, h('button', { type: 'submit' }, 'Save'));
  const labels = h('div', { class: 'labels-editor' });
  renderLabelsEditor(labels, contact.labels || [], (next) => patchContact(contact.id, { labels: next }));
  const identities = contact.identities || [];
  const zone = contact.timezone;
  const opted = Object.entries(contact.opted_out || {});
  const attributes = Object.entries(contact.attributes || {});
  const others = (contact.conversations || []).filter((c) => c.id !== state.current);
  box.replaceChildren(
    h('div', { class: 'contact-top' },
      h('span', { class: 'avatar big', 'aria-hidden': 'true' }, initials(contact.name)),
      h('div', { class: 'contact-name', id: 'contact-display-name' }, displayName(contact))),
    nameForm,
    h('dl', { class: 'facts' },
      row('Identities', identities.length
        ? h('ul', { class: 'identities' }, identities.map((i) => h('li', null, h('span', { class: 'kind' }, i.kind), ' ', i.value)))
        : '—'),
      row('Birthday', birthdayText(contact.birthday) || '—'),
      row('Time zone', zone ? `${zone}${localTime(zone) ? ` (now ${localTime(zone)})` : ''}` : '—'),
      contact.locale ? row('Locale', contact.locale) : null,
      row('Opt-out', opted.length
        ? h('ul', { class: 'optouts' }, opted.map(([medium, out]) =>
          h('li', { class: out ? 'opted-out' : 'opted-in' }, `${channelName(medium)}: ${out ? 'opted out' : 'subscribed'}`)))
        : 'subscribed everywhere'),
      attributes.length ? row('Attributes', h('dl', { class: 'attributes' },
        attributes.map(([k, v]) => [h('dt', null, k), h('dd', null, String(v))]))) : null),
    h('h3', null, 'Labels'),
    labels,
    h('h3', null, 'Earlier conversations'),
    others.length
      ? h('ul', { class: 'earlier' }, others.map((c) => h('li', null,
        h('button', { type: 'button', class: 'linkish', onclick: () => openConversation(c.id) },
          `${channelName(c.channel)} · ${c.inbox || ''} · ${c.status || ''} · ${shortTime(c.last_activity_at)}`))))
      : h('p', { class: 'empty' }, 'None.'),
  );
}

async function patchContact(id, fields) {
  try {
    const contact = await api('PATCH', `/api/contacts/${encodeURIComponent(id)}`, fields);
    renderContact(contact);
    contactRenamed(contact);
    toast('Contact saved');
  } catch (error) {
    fail(error);
  }
}

function contactRenamed(contact) {
  if (!('name' in contact)) return;
  for (const conv of state.convs.values()) {
    if (conv.contact && conv.contact.id === contact.id) conv.contact = { ...conv.contact, name: contact.name };
  }
  renderList();
  renderThreadHead();
}

// -- the screen-pop -------------------------------------------------------------------

function showCallPop(data) {
  state.callpop = data;
  const card = data.contact || {};
  const phones = card.phones || [];
  const emails = card.emails || [];
  $('#callpop-card').replaceChildren(
    h('div', { class: 'contact-top' },
      h('span', { class: 'avatar big', 'aria-hidden': 'true' }, initials(card.name)),
      h('div', null,
        h('div', { class: 'contact-name', id: 'callpop-name' }, card.name || 'Unknown caller'),
        h('div', { class: 'callpop-from' }, data.from || phones[0] || ''))),
    h('dl', { class: 'facts' },
      phones.length ? row('Phones', phones.join(', ')) : null,
      emails.length ? row('E-mails', emails.join(', ')) : null,
      (card.labels || []).length ? row('Labels', card.labels.map((l) => h('span', { class: 'chip small' }, l))) : null,
      row('Inbox', data.inbox || '')));
  $('#callpop').hidden = false;
  if (card.id) {
    api('GET', `/api/contacts/${encodeURIComponent(card.id)}`).then((full) => {
      if (state.callpop !== data) return;
      const facts = $('#callpop-card .facts');
      const birthday = birthdayText(full.birthday);
      if (birthday) facts.append(...row('Birthday', birthday));
      if (full.timezone) facts.append(...row('Time zone', full.timezone));
    }).catch(() => {});
  }
}

function hideCallPop() {
  state.callpop = null;
  $('#callpop').hidden = true;
}

// -- reports ---------------------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';
const CHANNEL_COLORS = {
  whatsapp: '#22c55e', sms: '#8b5cf6', telegram: '#0ea5e9', email: '#f59e0b', voice: '#ec4899', form: '#64748b',
};

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  for (const child of children.flat()) if (child) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function seconds(value) {
  if (value === null || value === undefined) return '—';
  const s = Math.round(Number(value));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Stacked bars: one per day, one colour per channel, of `pick(volume)`. */
function dayChart(title, days, pick) {
  const channels = [...new Set(days.flatMap((d) => Object.keys(d.channels || {})))].sort();
  const totals = days.map((d) => channels.reduce((n, c) => n + pick((d.channels || {})[c] || {}), 0));
  const max = Math.max(1, ...totals);
  const width = 640;
  const height = 200;
  const pad = 28;
  const slot = (width - pad) / Math.max(1, days.length);
  const bar = Math.max(4, Math.min(40, slot * 0.6));
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height + 24}`, class: 'chart', role: 'img', 'aria-label': title });
  chart.append(svg('text', { x: 0, y: 12, class: 'axis' }, String(max)));
  chart.append(svg('line', { x1: pad, y1: height, x2: width, y2: height, class: 'baseline' }));
  days.forEach((day, i) => {
    let y = height;
    const x = pad + i * slot + (slot - bar) / 2;
    for (const channel of channels) {
      const value = pick((day.channels || {})[channel] || {});
      if (!value) continue;
      const h2 = (value / max) * (height - 20);
      y -= h2;
      chart.append(svg('rect', { x, y, width: bar, height: h2, fill: CHANNEL_COLORS[channel] || '#94a3b8' },
        svg('title', null, `${day.date} · ${channelName(channel)}: ${value}`)));
    }
    if (days.length <= 16 || i % Math.ceil(days.length / 16) === 0) {
      chart.append(svg('text', { x: x + bar / 2, y: height + 16, class: 'axis', 'text-anchor': 'middle' }, day.date.slice(5)));
    }
  });
  const legend = h('ul', { class: 'legend' }, channels.map((c) => {
    const swatch = h('span', { class: 'swatch' });
    swatch.style.background = CHANNEL_COLORS[c] || '#94a3b8';
    return h('li', null, swatch, channelName(c));
  }));
  return h('figure', { class: 'card chart-card' }, h('figcaption', null, title), chart, legend);
}

function statCard(label, value, detail) {
  return h('div', { class: 'card stat' }, h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value' }, value), detail ? h('div', { class: 'stat-detail' }, detail) : null);
}

async function loadReports() {
  const from = $('#reports-from').value;
  const to = $('#reports-to').value;
  $('#reports-error').textContent = '';
  try {
    const report = await api('GET', `/api/reports/summary?${new URLSearchParams({ from, to })}`);
    renderReports(report);
  } catch (error) {
    $('#reports-error').textContent = error.message;
  }
}

function renderReports(report) {
  const totals = report.totals || {};
  const first = report.first_response || {};
  const resolution = report.resolution || {};
  const days = report.days || [];
  $('#reports-body').replaceChildren(
    h('div', { class: 'stats' },
      statCard('Conversations', String(totals.conversations ?? 0)),
      statCard('Messages in / out', `${totals.messages_in ?? 0} / ${totals.messages_out ?? 0}`),
      statCard('First response', seconds(first.median), `median · p90 ${seconds(first.p90)} · ${first.unanswered ?? 0} unanswered`),
      statCard('Resolution', seconds(resolution.median), `median · p90 ${seconds(resolution.p90)} · ${resolution.count ?? 0} resolved`)),
    h('div', { class: 'charts' },
      dayChart('Conversations per channel per day', days, (v) => v.conversations || 0),
      dayChart('Messages per channel per day', days, (v) => (v.messages_in || 0) + (v.messages_out || 0))),
    h('div', { class: 'card' }, h('h2', null, 'Per agent'),
      h('table', { class: 'agents-table' },
        h('thead', null, h('tr', null, ['Agent', 'Replies', 'Notes', 'Assigned', 'Resolved', 'First response (median / p90)', 'Resolution (median / p90)'].map((t) => h('th', null, t)))),
        h('tbody', null, (report.agents || []).map((a) => h('tr', null,
          h('td', null, a.name || a.email || a.id),
          h('td', null, String(a.replies)), h('td', null, String(a.notes)),
          h('td', null, String(a.conversations_assigned)), h('td', null, String(a.conversations_resolved)),
          h('td', null, `${seconds(a.first_response && a.first_response.median)} / ${seconds(a.first_response && a.first_response.p90)}`),
          h('td', null, `${seconds(a.resolution && a.resolution.median)} / ${seconds(a.resolution && a.resolution.p90)}`))))))
  );
}

function showPage(name) {
  const reports = name === 'reports';
  const contacts = name === 'contacts';
  $('#reports').hidden = !reports;
  $('#contacts-page').hidden = !contacts;
  document.querySelector('main.panes').hidden = reports || contacts;
  $('#show-reports').setAttribute('aria-pressed', String(reports));
  $('#show-contacts').setAttribute('aria-pressed', String(contacts));
  $('#show-inbox').setAttribute('aria-pressed', String(!reports && !contacts));
  if (contacts) showContactsPage();
  if (reports) {
    if (!$('#reports-to').value) {
      const today = new Date();
      $('#reports-to').value = isoDay(today);
      $('#reports-from').value = isoDay(new Date(today.getTime() - 6 * DAY));
    }
    loadReports();
  }
}

// -- the contacts page ------------------------------------------------------------------

const cp = {
  items: new Map(),     // id -> contact of the list, in the server's order
  next: null,           // cursor of the next page
  q: '',
  seq: 0,               // the newest search asked (older answers are dropped)
  contact: null,        // the contact in the editor
  mergeSeq: 0,
  mergeOther: null,     // the contact picked to merge into the one in the editor
};

function canSupervise() {
  return Boolean(state.me && ['supervisor', 'admin'].includes(state.me.role));
}

async function loadContacts({ more = false } = {}) {
  const seq = ++cp.seq;
  const params = new URLSearchParams({ limit: '25' });
  if (cp.q) params.set('q', cp.q);
  if (more && cp.next) params.set('cursor', cp.next);
  try {
    const page = await api('GET', `/api/contacts?${params}`);
    if (seq !== cp.seq) return;
    if (!more) cp.items.clear();
    for (const item of page.items) cp.items.set(item.id, item);
    cp.next = page.next_cursor;
    renderContactList();
  } catch (error) {
    if (error.status !== 401) fail(error);
  }
}

function contactSummary(contact) {
  return [...(contact.phones || []), ...(contact.emails || []), contact.telegram ? `Telegram ${contact.telegram}` : null]
    .filter(Boolean).join(' · ');
}

function contactListItem(contact) {
  const name = displayName(contact);
  return h('li', { class: `contact-item${cp.contact && cp.contact.id === contact.id ? ' current' : ''}`, dataset: { id: contact.id } },
    h('button', { type: 'button', class: 'conv-btn', onclick: () => openContact(contact.id) },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name)),
      h('span', { class: 'conv-main' },
        h('span', { class: 'conv-name contact-item-name' }, name),
        h('span', { class: 'conv-preview contact-item-ids' }, contactSummary(contact) || 'no phone or e-mail'),
        (contact.labels || []).length
          ? h('span', { class: 'conv-labels' }, contact.labels.map((l) => h('span', { class: 'chip small' }, l)))
          : null)));
}

function renderContactList() {
  const shown = [...cp.items.values()];
  $('#contacts-list').replaceChildren(...shown.map(contactListItem));
  $('#contacts-empty').hidden = shown.length > 0;
  $('#more-contacts').hidden = !cp.next;
}

async function openContact(id) {
  try {
    const contact = await api('GET', `/api/contacts/${encodeURIComponent(id)}`);
    renderContactEditor(contact);
    $('#contacts-page').dataset.cview = 'detail';
  } catch (error) {
    if (error.status !== 401) fail(error);
  }
}

/** "1990-05-17" or "05-17" as the API's {month, day, year}; null when empty;
 * undefined when it is not a date. */
export function parseBirthday(text) {
  const value = String(text || '').trim();
  if (!value) return null;
  const match = value.match(/^(?:(\d{4})-)?(\d{1,2})-(\d{1,2})$/);
  if (!match) return undefined;
  const year = match[1] ? Number(match[1]) : null;
  const month = Number(match[2]);
  const day = Number(match[3]);
  const check = new Date(Date.UTC(year || 2000, month - 1, day));
  if (check.getUTCMonth() !== month - 1 || check.getUTCDate() !== day) return undefined;
  return { month, day, year };
}

function birthdayValue(birthday) {
  if (!birthday || !birthday.month || !birthday.day) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${birthday.year ? `${birthday.year}-` : ''}${pad(birthday.month)}-${pad(birthday.day)}`;
}

function splitList(text, separator) {
  return [...new Set(String(text || '').split(separator).map((v) => v.trim()).filter(Boolean))];
}

function field(label, input) {
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), input);
}

function attributeRow(key = '', value = '') {
  const rowEl = h('div', { class: 'attr-row' },
    h('input', { type: 'text', class: 'attr-key', value: key, placeholder: 'name', 'aria-label': 'Attribute name', maxlength: '64' }),
    h('input', { type: 'text', class: 'attr-value', value, placeholder: 'value', 'aria-label': 'Attribute value', maxlength: '1000' }));
  rowEl.append(h('button', { type: 'button', class: 'chip-x attr-remove', 'aria-label': 'Remove attribute', onclick: () => rowEl.remove() }, '×'));
  return rowEl;
}

function timeZoneList() {
  if (timeZoneList.cached) return timeZoneList.cached;
  let zones = [];
  try { zones = Intl.supportedValuesOf('timeZone'); } catch { zones = []; }
  timeZoneList.cached = h('datalist', { id: 'ce-timezones' }, zones.map((z) => h('option', { value: z })));
  return timeZoneList.cached;
}

function renderContactEditor(contact) {
  cp.contact = contact;
  cp.mergeOther = null;
  const box = $('#contact-editor');
  if (!contact) {
    box.replaceChildren(h('p', { class: 'empty' }, 'Choose a contact.'));
    renderContactList();
    return;
  }
  const input = (id, label, value, extra = {}) => field(label, h('input', { id, type: 'text', value: value || '', ...extra }));
  const attributes = h('div', { id: 'ce-attributes', class: 'attr-rows' },
    Object.entries(contact.attributes || {}).map(([k, v]) => attributeRow(k, String(v))));
  const opted = Object.entries(contact.opted_out || {});
  const identities = contact.identities || [];
  const form = h('form', { id: 'contact-edit-form', class: 'contact-form', onsubmit: (event) => {
    event.preventDefault();
    saveContactEditor();
  } },
  input('ce-name', 'Name', contact.name, { maxlength: '200' }),
  field('Phones (one a line)', h('textarea', { id: 'ce-phones', rows: '2' }, (contact.phones || []).join('\n'))),
  field('E-mails (one a line)', h('textarea', { id: 'ce-emails', rows: '2' }, (contact.emails || []).join('\n'))),
  input('ce-birthday', 'Birthday (YYYY-MM-DD or MM-DD)', birthdayValue(contact.birthday), { placeholder: 'MM-DD', inputmode: 'numeric' }),
  input('ce-timezone', 'Time zone', contact.timezone, { list: 'ce-timezones', placeholder: 'Europe/Paris', maxlength: '64' }),
  input('ce-locale', 'Locale', contact.locale, { placeholder: 'en-US', maxlength: '35' }),
  input('ce-labels', 'Labels (comma-separated)', (contact.labels || []).join(', ')),
  h('div', { class: 'field' }, h('span', { class: 'field-label' }, 'Attributes'), attributes,
    h('button', { type: 'button', class: 'ghost add-attr', onclick: () => attributes.append(attributeRow()) }, '+ attribute')),
  h('div', { class: 'form-bar' },
    h('span', { id: 'ce-error', class: 'error', role: 'alert' }),
    h('button', { id: 'ce-save', type: 'submit', class: 'primary' }, 'Save')));
  box.replaceChildren(
    h('div', { class: 'contact-top' },
      h('span', { class: 'avatar big', 'aria-hidden': 'true' }, initials(contact.name)),
      h('div', { class: 'contact-name', id: 'ce-display-name' }, displayName(contact))),
    h('dl', { class: 'facts' },
      row('Identities', identities.length
        ? h('ul', { class: 'identities', id: 'ce-identities' }, identities.map((i) => h('li', null, h('span', { class: 'kind' }, i.kind), ' ', i.value)))
        : '—'),
      row('Opt-out', h('ul', { class: 'optouts', id: 'ce-optouts' }, opted.length
        ? opted.map(([medium, out]) => h('li', { class: out ? 'opted-out' : 'opted-in' }, `${channelName(medium)}: ${out ? 'opted out' : 'subscribed'}`))
        : h('li', null, 'subscribed everywhere'))),
      (contact.conversations || []).length ? row('Conversations', String(contact.conversations.length)) : null),
    timeZoneList(),
    form,
    ...(canSupervise() ? [mergeBox(contact)] : []));
  renderContactList();
}

async function saveContactEditor() {
  const contact = cp.contact;
  if (!contact) return;
  const error = $('#ce-error');
  error.textContent = '';
  const birthday = parseBirthday($('#ce-birthday').value);
  if (birthday === undefined) { error.textContent = 'Birthday: write YYYY-MM-DD or MM-DD'; return; }
  const attributes = {};
  for (const key of Object.keys(contact.attributes || {})) attributes[key] = null;
  for (const rowEl of $('#ce-attributes').querySelectorAll('.attr-row')) {
    const key = rowEl.querySelector('.attr-key').value.trim();
    if (!key) continue;
    attributes[key] = rowEl.querySelector('.attr-value').value;
  }
  const fields = {
    name: $('#ce-name').value.trim() || null,
    phones: splitList($('#ce-phones').value, /[\n,;]/),
    emails: splitList($('#ce-emails').value, /[\n,;]/),
    birthday,
    timezone: $('#ce-timezone').value.trim() || null,
    locale: $('#ce-locale').value.trim() || null,
    labels: splitList($('#ce-labels').value, ','),
    attributes,
  };
  $('#ce-save').disabled = true;
  try {
    const saved = await api('PATCH', `/api/contacts/${encodeURIComponent(contact.id)}`, fields);
    if (cp.items.has(saved.id)) cp.items.set(saved.id, saved);
    renderContactEditor(saved);
    contactRenamed(saved);
    if (state.contact && state.contact.id === saved.id) renderContact(saved);
    toast('Contact saved');
  } catch (failure) {
    const el = $('#ce-error');
    if (el) el.textContent = failure.message;
    const button = $('#ce-save');
    if (button) button.disabled = false;
  }
}

// Merging: pick another contact by search, confirm, then show the one that is left.

function mergeBox(contact) {
  const results = h('ul', { id: 'merge-results', class: 'merge-results' });
  const confirmBox = h('div', { id: 'merge-confirm-box', class: 'merge-confirm', hidden: true });
  const search = h('input', {
    id: 'merge-search', type: 'search', placeholder: 'Find the duplicate: name, phone, e-mail', 'aria-label': 'Find a contact to merge',
  });
  let timer = null;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => searchMergeCandidates(contact.id, search.value.trim()), 250);
  });
  return h('details', { id: 'merge-box', class: 'merge-box' },
    h('summary', null, 'Merge a duplicate into this contact'),
    h('p', { class: 'hint' }, 'The other contact’s phones, e-mails and conversations move here; it is then deleted. This cannot be undone.'),
    search, results, confirmBox);
}

async function searchMergeCandidates(keepId, q) {
  const seq = ++cp.mergeSeq;
  const results = $('#merge-results');
  if (!q) { results.replaceChildren(); return; }
  try {
    const page = await api('GET', `/api/contacts?${new URLSearchParams({ q, limit: '10' })}`);
    if (seq !== cp.mergeSeq || !cp.contact || cp.contact.id !== keepId) return;
    const others = page.items.filter((c) => c.id !== keepId);
    results.replaceChildren(...(others.length
      ? others.map((c) => h('li', { dataset: { id: c.id } },
        h('button', { type: 'button', class: 'linkish', onclick: () => pickMerge(c) },
          h('span', { class: 'merge-name' }, displayName(c)), ' ', h('span', { class: 'muted' }, contactSummary(c)))))
      : [h('li', { class: 'empty' }, 'No other contact matches.')]));
  } catch (error) {
    if (error.status !== 401) fail(error);
  }
}

function pickMerge(other) {
  const keep = cp.contact;
  if (!keep) return;
  cp.mergeOther = other;
  const box = $('#merge-confirm-box');
  box.replaceChildren(
    h('p', { id: 'merge-question' }, 'Merge “', h('strong', null, displayName(other)), '” (', contactSummary(other) || 'no phone or e-mail',
      ') into “', h('strong', null, displayName(keep)), '”?'),
    h('div', { class: 'form-bar' },
      h('button', { id: 'merge-cancel', type: 'button', onclick: () => { cp.mergeOther = null; box.hidden = true; } }, 'Cancel'),
      h('button', { id: 'merge-confirm', type: 'button', class: 'primary danger', onclick: confirmMerge }, 'Merge')));
  box.hidden = false;
}

async function confirmMerge() {
  const keep = cp.contact;
  const other = cp.mergeOther;
  if (!keep || !other) return;
  $('#merge-confirm').disabled = true;
  try {
    const merged = await api('POST', `/api/contacts/${encodeURIComponent(keep.id)}/merge`, { other_id: other.id });
    cp.items.delete(other.id);
    if (cp.items.has(merged.id)) cp.items.set(merged.id, merged);
    renderContactEditor(merged);
    toast(`Merged into ${displayName(merged)}`);
  } catch (error) {
    fail(error);
    const button = $('#merge-confirm');
    if (button) button.disabled = false;
  }
}

// Import and export (the API allows both to supervisors and admins only).

async function importContacts(file) {
  const result = $('#import-result');
  result.hidden = false;
  result.dataset.state = 'busy';
  result.replaceChildren(h('p', null, `Importing ${file.name}…`));
  try {
    const response = await fetch('/api/contacts/import', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'text/csv', Accept: 'application/json', 'X-CSRF-Token': csrfToken() },
      body: file,
    });
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    if (!response.ok) {
      if (response.status === 401) showLogin();
      const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
      throw new ApiFailure(response.status, 'import', message);
    }
    result.dataset.state = 'done';
    const reasons = data.reasons || [];
    result.replaceChildren(...[
      h('p', { class: 'import-counts' },
        h('span', { id: 'import-rows' }, `${data.rows} rows`), ' · ',
        h('span', { id: 'import-created' }, `${data.created} created`), ' · ',
        h('span', { id: 'import-merged' }, `${data.merged} merged`), ' · ',
        h('span', { id: 'import-rejected', class: data.rejected ? 'opted-out' : null }, `${data.rejected} rejected`)),
      reasons.length
        ? h('ul', { id: 'import-reasons', class: 'import-reasons' },
          reasons.map((r) => h('li', null, `Line ${r.row}: ${r.reason}`)))
        : null,
      data.rejected > reasons.length ? h('p', { class: 'hint' }, `(${data.rejected - reasons.length} more not listed)`) : null,
    ].filter(Boolean));
    loadContacts();
  } catch (error) {
    result.dataset.state = 'failed';
    result.replaceChildren(h('p', { class: 'error' }, `Import failed: ${error.message}`));
  }
}

function showContactsPage() {
  $('#contacts-io').hidden = !canSupervise();
  if (!cp.items.size) loadContacts();
}

// -- realtime -------------------------------------------------------------------------

function setWsState(value) {
  document.body.dataset.ws = value;
  const el = $('#ws-state');
  el.textContent = value === 'live' ? 'live' : value === 'connecting' ? 'connecting…' : 'offline';
  el.dataset.state = value;
}

function connectSocket() {
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

function closeSocket() {
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
    case 'contact.updated':
      // Not while the agent is editing it: the save answers with the new contact.
      if (state.contact && data.id === state.contact.id && !$('#contact').contains(document.activeElement)) {
        if (Array.isArray(data.identities)) renderContact(data);
        else loadContact(data.id);
      }
      if ('name' in data) contactRenamed(data);
      if (cp.items.has(data.id) && Array.isArray(data.identities)) {
        cp.items.set(data.id, { ...cp.items.get(data.id), ...data });
        renderContactList();
      }
      break;
    case 'contact.merged':
      if (state.contact && (data.id === state.contact.id || data.merged_id === state.contact.id)) loadContact(data.id);
      if (cp.items.delete(data.merged_id)) renderContactList();
      if (cp.contact && cp.contact.id === data.merged_id && !cp.mergeOther) openContact(data.id);
      break;
    default:
      break;
  }
}

function onMessage(type, message) {
  if (!message.id) return;
  const conv = state.convs.get(message.conversation_id);
  if (type === 'message.created' && message.kind !== 'note') {
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

// -- wiring -----------------------------------------------------------------------------

function wire() {
  $('#login-form').addEventListener('submit', onLogin);
  $('#logout').addEventListener('click', onLogout);
  $('#show-inbox').addEventListener('click', () => showPage('inbox'));
  $('#show-reports').addEventListener('click', () => showPage('reports'));
  $('#show-contacts').addEventListener('click', () => showPage('contacts'));
  let contactsTimer = null;
  $('#contacts-search').addEventListener('input', (e) => {
    clearTimeout(contactsTimer);
    contactsTimer = setTimeout(() => { cp.q = e.target.value.trim(); loadContacts(); }, 250);
  });
  $('#more-contacts').addEventListener('click', () => loadContacts({ more: true }));
  $('#cp-back').addEventListener('click', () => { $('#contacts-page').dataset.cview = 'list'; });
  $('#contacts-import').addEventListener('change', (e) => {
    const file = e.target.files && e.target.files[0];
    e.target.value = '';
    if (file) importContacts(file);
  });
  $('#reports-range').addEventListener('submit', (event) => { event.preventDefault(); loadReports(); });
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
  let searchTimer = null;
  $('#search').addEventListener('input', (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.filter.q = e.target.value.trim(); loadConversations(); }, 250);
  });
  $('#more-conversations').addEventListener('click', () => loadConversations({ more: true }));
  $('#messages').addEventListener('scroll', () => {
    const list = $('#messages');
    state.stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }, { passive: true });
  $('#older').addEventListener('click', () => state.current && loadMessages(state.current, { older: true }));
  $('#back').addEventListener('click', () => { document.body.dataset.view = 'list'; });
  $('#contact-back').addEventListener('click', () => { document.body.dataset.view = 'thread'; });
  $('#thread-name').addEventListener('click', () => { document.body.dataset.view = 'contact'; });
  $('#reply').addEventListener('submit', sendReply);
  $('#reply-text').addEventListener('keydown', onReplyKey);
  $('#reply-text').addEventListener('input', onReplyInput);
  $('#reply-private').addEventListener('change', (e) => { $('#reply').classList.toggle('private', e.target.checked); });
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
  $('#callpop-dismiss').addEventListener('click', hideCallPop);
  $('#callpop-open').addEventListener('click', () => {
    const data = state.callpop;
    hideCallPop();
    if (data && data.conversation_id) openConversation(data.conversation_id);
    else if (data && data.contact && data.contact.id) loadContact(data.contact.id);
    document.body.dataset.view = 'contact';
  });
  document.addEventListener('visibilitychange', () => {
    const conv = currentConv();
    if (!document.hidden && conv && conv.unread) markRead();
  });
  setInterval(renderWindowState, 60000);
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
