// The inbox's contact panel beside the thread: who the customer is (identities,
// birthday, time zone, opt-outs, attributes), renaming and labelling them, their
// birthday, time zone and locale (for greetings), and
// their earlier conversations.

import { api } from './api.js';
import { parseBirthday } from './contacts.js';
import { renderList } from './conversations.js';
import { $, fail, h, row, toast } from './dom.js';
import { birthdayText, channelName, displayName, initials, localTime, shortTime } from './format.js';
import { renderLabelsEditor } from './labels.js';
import { state } from './state.js';
import { openConversation, renderThreadHead } from './thread.js';

/** Fetch and show a contact in the panel (none when `id` is empty). */
export async function loadContact(id) {
  if (!id) { renderContact(null); return; }
  try {
    renderContact(await api('GET', `/api/contacts/${encodeURIComponent(id)}`));
  } catch (error) {
    if (error.status !== 401) renderContact(null);
  }
}

export function renderContact(contact) {
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
    h('h3', null, 'Birthday, time zone, locale'),
    greetingFields(contact),
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

/** Birthday, time zone and locale (what greetings use), edited in place. */
function greetingFields(contact) {
  const b = contact.birthday;
  const pad = (n) => String(n).padStart(2, '0');
  const birthdayValue = b && b.month && b.day ? `${b.year ? `${b.year}-` : ''}${pad(b.month)}-${pad(b.day)}` : '';
  const birthday = h('input', { id: 'contact-birthday', type: 'text', value: birthdayValue, placeholder: 'YYYY-MM-DD or MM-DD', maxlength: '10' });
  let zoneNames = [];
  try { zoneNames = Intl.supportedValuesOf('timeZone'); } catch { zoneNames = []; }
  const zone = h('input', { id: 'contact-timezone', type: 'text', list: 'contact-zones', value: contact.timezone || '', placeholder: 'e.g. Europe/Berlin', maxlength: '64' });
  const locale = h('input', { id: 'contact-locale', type: 'text', value: contact.locale || '', placeholder: 'e.g. en, ru, pt-BR', maxlength: '35' });
  const error = h('span', { id: 'contact-greeting-error', class: 'error', role: 'alert' });
  return h('form', { class: 'contact-greeting-form', onsubmit: (event) => {
    event.preventDefault();
    const parsed = parseBirthday(birthday.value);
    if (parsed === undefined) { error.textContent = 'Birthday: write YYYY-MM-DD or MM-DD'; return; }
    error.textContent = '';
    patchContact(contact.id, {
      birthday: parsed,
      timezone: zone.value.trim() || null,
      locale: locale.value.trim() || null,
    });
  } },
  h('label', null, 'Birthday', birthday),
  h('label', null, 'Time zone', zone),
  h('datalist', { id: 'contact-zones' }, zoneNames.map((name) => h('option', { value: name }))),
  h('label', null, 'Locale', locale),
  error,
  h('button', { type: 'submit', id: 'contact-greeting-save' }, 'Save birthday, zone, locale'));
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

/** A contact's new name, wherever the inbox shows it. */
export function contactRenamed(contact) {
  if (!('name' in contact)) return;
  for (const conv of state.convs.values()) {
    if (conv.contact && conv.contact.id === contact.id) conv.contact = { ...conv.contact, name: contact.name };
  }
  renderList();
  renderThreadHead();
}
