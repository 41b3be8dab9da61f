// The composer's files and WhatsApp templates.
//
// Files: a paperclip button (several at once) or drag and drop onto the reply box;
// the chosen files are listed (name, size, a remove button) until the reply is
// sent as multipart/form-data; a file the channel refuses shows the API's message.
//
// Templates: when a WhatsApp conversation's 24-hour window is closed, the composer
// offers the inbox's approved templates (GET /api/inboxes/{id}/templates): pick
// one, fill its parameters, send. Customer text never becomes markup (dom.js `h`).

import { ApiFailure, api, csrfToken } from './api.js';
import { $, h } from './dom.js';
import { currentConv } from './state.js';

const pending = [];
const templateCache = new Map(); // inbox:medium -> items (or an error message)

function humanSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** The files chosen for the next reply. */
export function pendingFiles() {
  return pending.slice();
}

export function clearFiles() {
  pending.length = 0;
  renderFiles();
}

function addFiles(list) {
  for (const file of list) pending.push(file);
  renderFiles();
}

function renderFiles() {
  const box = $('#reply-files');
  if (!box) return;
  box.replaceChildren(...pending.map((file, index) => h('li', { class: 'reply-file' },
    h('span', { class: 'reply-file-name' }, file.name || 'file'), ' ',
    h('span', { class: 'reply-file-size' }, humanSize(file.size)), ' ',
    h('button', {
      type: 'button', class: 'link', 'aria-label': `Remove ${file.name}`,
      onclick: () => { pending.splice(index, 1); renderFiles(); },
    }, '×'))));
  box.hidden = pending.length === 0;
}

/** Send a reply (or a private note) with the pending files; the API's message. */
export async function sendWithFiles(conv, text, isPrivate, subject) {
  const form = new FormData();
  if (text) form.append('text', text);
  form.append('private', isPrivate ? 'true' : 'false');
  if (subject) form.append('subject', subject);
  for (const file of pending) form.append('file', file, file.name);
  const response = await fetch(`/api/conversations/${encodeURIComponent(conv.id)}/messages`, {
    method: 'POST',
    headers: { Accept: 'application/json', 'X-CSRF-Token': csrfToken() },
    credentials: 'same-origin',
    body: form,
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiFailure(response.status, error.code || 'http', error.message || `HTTP ${response.status}`);
  }
  clearFiles();
  return data;
}

// -- templates -----------------------------------------------------------------------

async function loadTemplates(conv) {
  const key = `${conv.inbox}:${conv.channel}`;
  if (templateCache.has(key)) return templateCache.get(key);
  let found;
  try {
    const query = conv.channel ? `?medium=${encodeURIComponent(conv.channel)}&limit=100` : '?limit=100';
    const data = await api('GET', `/api/inboxes/${encodeURIComponent(conv.inbox)}/templates${query}`);
    found = (data && data.items) || [];
  } catch (error) {
    found = { error: error.message };
  }
  templateCache.set(key, found);
  return found;
}

/** Offer the templates when a WhatsApp conversation's window is closed. */
export async function renderTemplates(windowOpen) {
  const panel = $('#reply-templates');
  if (!panel) return;
  const conv = currentConv();
  if (!conv || conv.channel !== 'whatsapp' || windowOpen) {
    panel.hidden = true;
    panel.replaceChildren();
    panel.dataset.conv = '';
    return;
  }
  if (panel.dataset.conv === conv.id) return; // shown, or being loaded
  panel.dataset.conv = conv.id;
  const items = await loadTemplates(conv);
  if (currentConv() !== conv || panel.dataset.conv !== conv.id) return;
  if (!Array.isArray(items)) {
    panel.replaceChildren(h('p', { class: 'error' }, `Templates: ${items.error}`));
    panel.hidden = false;
    return;
  }
  const select = h('select', { id: 'template-pick', 'aria-label': 'Template' },
    h('option', { value: '' }, 'Choose an approved template…'),
    ...items.map((t, i) => h('option', { value: String(i) }, `${t.name} (${t.language})`)));
  const preview = h('p', { id: 'template-body', class: 'template-body' });
  const params = h('div', { id: 'template-params', class: 'template-params' });
  const error = h('span', { id: 'template-error', class: 'error', role: 'alert' });
  const send = h('button', { id: 'template-send', type: 'button', class: 'primary', disabled: true }, 'Send template');
  select.addEventListener('change', () => {
    const t = items[Number(select.value)];
    preview.textContent = t ? t.body : '';
    params.replaceChildren(...(t ? t.parameters : []).map((name) => h('label', null, `{{${name}}} `,
      h('input', { type: 'text', 'data-param': name, 'aria-label': `Parameter ${name}` }))));
    send.disabled = !t;
    error.textContent = '';
  });
  send.addEventListener('click', async () => {
    const t = items[Number(select.value)];
    if (!t) return;
    const values = [...params.querySelectorAll('input')].map((input) => input.value);
    send.disabled = true;
    error.textContent = '';
    try {
      await api('POST', `/api/conversations/${encodeURIComponent(conv.id)}/messages`,
        { template: { name: t.name, language: t.language, parameters: values } });
      select.value = '';
      select.dispatchEvent(new Event('change'));
    } catch (failure) {
      error.textContent = failure.message;
    } finally {
      send.disabled = !items[Number(select.value)];
    }
  });
  panel.replaceChildren(h('strong', null, 'Send an approved template'), ' ', select, preview, params, send, ' ', error);
  panel.hidden = false;
}

/** Add the file button, the file list and the templates panel to the reply box. */
export function wireAttachments() {
  const form = $('#reply');
  const bar = form.querySelector('.reply-bar');
  const input = h('input', { id: 'reply-file-input', type: 'file', multiple: true, hidden: true });
  input.addEventListener('change', () => { addFiles(input.files); input.value = ''; });
  const button = h('button', { id: 'reply-attach', type: 'button', title: 'Attach files', 'aria-label': 'Attach files',
    onclick: () => input.click() }, '📎');
  bar.prepend(button, input);
  form.insertBefore(h('ul', { id: 'reply-files', class: 'reply-files', hidden: true }), bar);
  form.insertBefore(h('div', { id: 'reply-templates', class: 'reply-templates', hidden: true }), form.firstChild);
  form.addEventListener('dragover', (event) => { event.preventDefault(); form.classList.add('dropping'); });
  form.addEventListener('dragleave', () => form.classList.remove('dropping'));
  form.addEventListener('drop', (event) => {
    event.preventDefault();
    form.classList.remove('dropping');
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
  });
}
