// The contacts page: searching the address book, editing a contact (phones,
// e-mails, birthday, time zone, locale, labels, attributes), merging a
// duplicate, and CSV import and export for supervisors and admins.

import { api, ApiFailure, csrfToken } from './api.js';
import { showLogin } from './auth.js';
import { contactRenamed, renderContact } from './contact-panel.js';
import { $, fail, h, row, toast } from './dom.js';
import { channelName, displayName, initials } from './format.js';
import { canSupervise, contactsPage, state } from './state.js';

async function loadContacts({ more = false } = {}) {
  const seq = ++contactsPage.seq;
  const params = new URLSearchParams({ limit: '25' });
  if (contactsPage.q) params.set('q', contactsPage.q);
  if (more && contactsPage.next) params.set('cursor', contactsPage.next);
  try {
    const page = await api('GET', `/api/contacts?${params}`);
    if (seq !== contactsPage.seq) return;
    if (!more) contactsPage.items.clear();
    for (const item of page.items) contactsPage.items.set(item.id, item);
    contactsPage.next = page.next_cursor;
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
  return h('li', { class: `contact-item${contactsPage.contact && contactsPage.contact.id === contact.id ? ' current' : ''}`, dataset: { id: contact.id } },
    h('button', { type: 'button', class: 'conv-btn', onclick: () => openContact(contact.id) },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name)),
      h('span', { class: 'conv-main' },
        h('span', { class: 'conv-name contact-item-name' }, name),
        h('span', { class: 'conv-preview contact-item-ids' }, contactSummary(contact) || 'no phone or e-mail'),
        (contact.labels || []).length
          ? h('span', { class: 'conv-labels' }, contact.labels.map((l) => h('span', { class: 'chip small' }, l)))
          : null)));
}

export function renderContactList() {
  const shown = [...contactsPage.items.values()];
  $('#contacts-list').replaceChildren(...shown.map(contactListItem));
  $('#contacts-empty').hidden = shown.length > 0;
  $('#more-contacts').hidden = !contactsPage.next;
}

/** Open a contact in the editor. */
export async function openContact(id) {
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

/** Show a contact in the editor (null: none chosen). */
export function renderContactEditor(contact) {
  contactsPage.contact = contact;
  contactsPage.mergeOther = null;
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
  const contact = contactsPage.contact;
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
    if (contactsPage.items.has(saved.id)) contactsPage.items.set(saved.id, saved);
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
  const seq = ++contactsPage.mergeSeq;
  const results = $('#merge-results');
  if (!q) { results.replaceChildren(); return; }
  try {
    const page = await api('GET', `/api/contacts?${new URLSearchParams({ q, limit: '10' })}`);
    if (seq !== contactsPage.mergeSeq || !contactsPage.contact || contactsPage.contact.id !== keepId) return;
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
  const keep = contactsPage.contact;
  if (!keep) return;
  contactsPage.mergeOther = other;
  const box = $('#merge-confirm-box');
  box.replaceChildren(
    h('p', { id: 'merge-question' }, 'Merge “', h('strong', null, displayName(other)), '” (', contactSummary(other) || 'no phone or e-mail',
      ') into “', h('strong', null, displayName(keep)), '”?'),
    h('div', { class: 'form-bar' },
      h('button', { id: 'merge-cancel', type: 'button', onclick: () => { contactsPage.mergeOther = null; box.hidden = true; } }, 'Cancel'),
      h('button', { id: 'merge-confirm', type: 'button', class: 'primary danger', onclick: confirmMerge }, 'Merge')));
  box.hidden = false;
}

async function confirmMerge() {
  const keep = contactsPage.contact;
  const other = contactsPage.mergeOther;
  if (!keep || !other) return;
  $('#merge-confirm').disabled = true;
  try {
    const merged = await api('POST', `/api/contacts/${encodeURIComponent(keep.id)}/merge`, { other_id: other.id });
    contactsPage.items.delete(other.id);
    if (contactsPage.items.has(merged.id)) contactsPage.items.set(merged.id, merged);
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

export function showContactsPage() {
  $('#contacts-io').hidden = !canSupervise();
  if (!contactsPage.items.size) loadContacts();
}

export function wireContactsPage() {
  let contactsTimer = null;
  $('#contacts-search').addEventListener('input', (e) => {
    clearTimeout(contactsTimer);
    contactsTimer = setTimeout(() => { contactsPage.q = e.target.value.trim(); loadContacts(); }, 250);
  });
  $('#more-contacts').addEventListener('click', () => loadContacts({ more: true }));
  $('#cp-back').addEventListener('click', () => { $('#contacts-page').dataset.cview = 'list'; });
  $('#contacts-import').addEventListener('change', (e) => {
    const file = e.target.files && e.target.files[0];
    e.target.value = '';
    if (file) importContacts(file);
  });
}
