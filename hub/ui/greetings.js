// The greetings settings page: birthday and holiday greetings sent at a local
// hour in each contact's time zone, in the contact's locale (templates per
// locale), held by quiet hours. Every agent reads them; admins change them
// (PUT /api/greetings replaces them whole). Everything shown is text (dom.js `h`).

import { api } from './api.js';
import { $, fail, h, toast } from './dom.js';
import { state } from './state.js';

const PLACEHOLDERS = '{first_name}, {name} and contact attributes such as {city}';

function page() {
  return $('#greetings-page');
}

function isAdmin() {
  return Boolean(state.me && state.me.role === 'admin');
}

function zones() {
  try { return Intl.supportedValuesOf('timeZone'); } catch { return ['UTC']; }
}

// -- templates: one row per locale ----------------------------------------------------

function templateRow(locale, text, readonly) {
  const row = h('div', { class: 'gr-template' },
    h('input', { class: 'gr-locale', type: 'text', value: locale, placeholder: 'en', 'aria-label': 'Locale', maxlength: '35', size: '6', disabled: readonly }),
    h('textarea', { class: 'gr-text', rows: '2', 'aria-label': 'Text', maxlength: '2000', placeholder: 'Happy birthday, {first_name}!', disabled: readonly }, text),
    readonly ? null : h('button', { type: 'button', class: 'ghost', 'aria-label': 'Remove this locale', onclick: () => row.remove() }, '×'),
  );
  return row;
}

function templatesEditor(templates, readonly) {
  const rows = h('div', { class: 'gr-templates' },
    Object.entries(templates || {}).map(([locale, text]) => templateRow(locale, text, readonly)));
  const add = readonly ? null : h('button', { type: 'button', class: 'ghost gr-add-locale', onclick: () => rows.append(templateRow('', '', false)) }, '+ Locale');
  return h('div', { class: 'gr-templates-box' }, rows, add);
}

function readTemplates(box) {
  const templates = {};
  for (const row of box.querySelectorAll('.gr-template')) {
    const locale = row.querySelector('.gr-locale').value.trim();
    const text = row.querySelector('.gr-text').value;
    if (locale || text.trim()) templates[locale] = text;
  }
  return templates;
}

// -- holidays ------------------------------------------------------------------------

function holidayRow(holiday, readonly) {
  const row = h('fieldset', { class: 'gr-holiday' },
    h('legend', null, holiday.name || 'New holiday'),
    h('label', null, 'Date (MM-DD) ',
      h('input', { class: 'gr-date', type: 'text', value: holiday.date || '', placeholder: '12-25', pattern: '\\d{2}-\\d{2}', size: '5', 'aria-label': 'Date (MM-DD)', disabled: readonly })),
    h('label', null, ' Name ',
      h('input', { class: 'gr-name', type: 'text', value: holiday.name || '', maxlength: '100', 'aria-label': 'Holiday name', disabled: readonly })),
    readonly ? null : h('button', { type: 'button', class: 'ghost', onclick: () => row.remove() }, 'Remove holiday'),
    templatesEditor(holiday.templates || { en: '' }, readonly),
  );
  return row;
}

// -- the page --------------------------------------------------------------------------

export async function showGreetingsPage() {
  const box = page();
  box.replaceChildren(h('p', { class: 'empty' }, 'Loading…'));
  try {
    renderGreetings(await api('GET', '/api/greetings'));
  } catch (error) {
    box.replaceChildren(h('p', { class: 'error' }, error.message || String(error)));
  }
}

export function renderGreetings(settings) {
  const readonly = !isAdmin();
  const zoneList = h('datalist', { id: 'gr-zones' }, zones().map((z) => h('option', { value: z })));
  const birthday = templatesEditor(settings.birthday.templates, readonly);
  birthday.id = 'gr-birthday';
  const holidays = h('div', { id: 'gr-holidays' }, settings.holidays.map((x) => holidayRow(x, readonly)));
  const error = h('p', { id: 'gr-error', class: 'error', role: 'alert' });
  const form = h('form', { id: 'gr-form', class: 'gr-form', onsubmit: (event) => { event.preventDefault(); save(); } },
    h('label', { class: 'gr-enabled' },
      h('input', { id: 'gr-enabled', type: 'checkbox', checked: settings.enabled, disabled: readonly }),
      ' Send birthday and holiday greetings'),
    h('div', { class: 'gr-times' },
      h('label', null, 'Local hour ',
        h('input', { id: 'gr-hour', type: 'number', min: '0', max: '23', value: String(settings.local_hour), required: true, disabled: readonly })),
      h('label', null, ' Quiet hours from ',
        h('input', { id: 'gr-quiet-start', type: 'time', value: settings.quiet_hours.start, required: true, disabled: readonly })),
      h('label', null, ' to ',
        h('input', { id: 'gr-quiet-end', type: 'time', value: settings.quiet_hours.end, required: true, disabled: readonly })),
      h('label', null, ' Default time zone ',
        h('input', { id: 'gr-zone', type: 'text', list: 'gr-zones', value: settings.default_timezone, required: true, disabled: readonly })),
      zoneList),
    h('p', { class: 'hint' },
      'Each contact gets its greeting at the local hour in its own time zone (its own, else its phone number\'s country, else the default), in its locale, else English, else the first text. A greeting due in the quiet hours waits for their end. Placeholders: ', PLACEHOLDERS, '.'),
    h('h2', null, 'Birthday'),
    birthday,
    h('h2', null, 'Holidays'),
    holidays,
    readonly ? null : h('button', { type: 'button', class: 'ghost', id: 'gr-add-holiday', onclick: () => holidays.append(holidayRow({ templates: { en: '' } }, false)) }, '+ Holiday'),
    error,
    readonly
      ? h('p', { class: 'hint' }, 'Only admins change these settings.')
      : h('button', { type: 'submit', id: 'gr-save' }, 'Save'),
  );
  page().replaceChildren(h('h1', null, 'Greetings'), form);
}

function settingsFromForm() {
  const hour = Number($('#gr-hour').value);
  return {
    enabled: $('#gr-enabled').checked,
    local_hour: Number.isInteger(hour) ? hour : $('#gr-hour').value,
    quiet_hours: { start: $('#gr-quiet-start').value, end: $('#gr-quiet-end').value },
    default_timezone: $('#gr-zone').value.trim(),
    birthday: { templates: readTemplates($('#gr-birthday')) },
    holidays: [...document.querySelectorAll('#gr-holidays .gr-holiday')].map((row) => ({
      date: row.querySelector('.gr-date').value.trim(),
      name: row.querySelector('.gr-name').value.trim(),
      templates: readTemplates(row.querySelector('.gr-templates-box')),
    })),
  };
}

async function save() {
  const error = $('#gr-error');
  error.textContent = '';
  try {
    const saved = await api('PUT', '/api/greetings', settingsFromForm());
    renderGreetings(saved);
    toast('Greetings saved');
  } catch (failure) {
    error.textContent = failure.message || String(failure);
    if (failure.status !== 422 && failure.status !== 400) fail(failure);
  }
}
