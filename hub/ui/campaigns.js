// The campaigns page (supervisors and admins): the list, a form to compose one
// with a live count of its audience, and one campaign's statistics (refreshed
// every two seconds while it runs), controls and per-recipient list.
// Everything shown from the API is put on the page as text (dom.js `h`).

import { api } from './api.js';
import { $, fail, h, toast } from './dom.js';

const OPS = ['eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'in'];
const MEDIA = ['sms', 'whatsapp', 'telegram', 'email'];
const STATS = ['targeted', 'queued', 'sent', 'delivered', 'failed', 'skipped', 'unknown'];
const RECIPIENT_STATUSES = ['', 'pending', 'queued', 'sent', 'delivered', 'failed', 'skipped', 'unknown'];
const REFRESH_MS = 2000;

const view = { selected: null, timer: null, countTimer: null, recipientsCursor: null, status: '' };

function page() {
  return $('#campaigns-page');
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

/** A typed value from what was typed: numbers and booleans as such, else text. */
function typed(text) {
  const value = text.trim();
  if (value === 'true' || value === 'false') return value === 'true';
  if (value !== '' && !Number.isNaN(Number(value))) return Number(value);
  return value;
}

function splitList(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

// -- the form ---------------------------------------------------------------------

function conditionRow() {
  const row = h('div', { class: 'cmp-cond' },
    h('input', { class: 'cmp-attr', type: 'text', placeholder: 'attribute (city, orders…)', 'aria-label': 'Attribute' }),
    h('select', { class: 'cmp-op', 'aria-label': 'Comparison' }, OPS.map((op) => h('option', { value: op }, op))),
    h('input', { class: 'cmp-value', type: 'text', placeholder: 'value (in: a, b, c)', 'aria-label': 'Value' }),
    h('button', { type: 'button', class: 'ghost', 'aria-label': 'Remove this condition', onclick: () => { row.remove(); scheduleCount(); } }, '×'),
  );
  return row;
}

function audienceFromForm() {
  const form = $('#cmp-form');
  const audience = {};
  const labels = splitList(form.querySelector('#cmp-labels').value);
  if (labels.length) audience.labels = labels;
  const channels = [...form.querySelectorAll('.cmp-channel:checked')].map((el) => el.value);
  if (channels.length) audience.channels = channels;
  const attributes = {};
  for (const row of form.querySelectorAll('.cmp-cond')) {
    const name = row.querySelector('.cmp-attr').value.trim();
    if (!name) continue;
    const op = row.querySelector('.cmp-op').value;
    const raw = row.querySelector('.cmp-value').value;
    attributes[name] = { [op]: op === 'in' ? splitList(raw).map(typed) : typed(raw) };
  }
  if (Object.keys(attributes).length) audience.attributes = attributes;
  const after = form.querySelector('#cmp-active-after').value;
  if (after) audience.last_activity = { after: new Date(after).toISOString() };
  return audience;
}

function bodyFromForm() {
  const form = $('#cmp-form');
  const body = { name: form.querySelector('#cmp-name').value.trim(), audience: audienceFromForm(), message: {} };
  const text = form.querySelector('#cmp-text').value;
  if (text.trim()) body.message.text = text;
  const template = form.querySelector('#cmp-template').value.trim();
  if (template) {
    body.message.template = {
      name: template,
      language: form.querySelector('#cmp-language').value.trim() || 'en_US',
      parameters: splitList(form.querySelector('#cmp-params').value),
    };
  }
  const inbox = form.querySelector('#cmp-inbox').value.trim();
  if (inbox) body.inbox = inbox;
  const sendAt = form.querySelector('#cmp-send-at').value;
  if (sendAt) body.send_at = new Date(sendAt).toISOString();
  const local = form.querySelector('#cmp-local-time').value;
  if (local) body.local_time = local;
  const quietStart = form.querySelector('#cmp-quiet-start').value;
  const quietEnd = form.querySelector('#cmp-quiet-end').value;
  if (quietStart && quietEnd) body.quiet_hours = { start: quietStart, end: quietEnd };
  return body;
}

async function countAudience() {
  const out = $('#cmp-count');
  if (!out) return;
  const audience = audienceFromForm();
  if (!audience.labels && !audience.attributes && !audience.last_activity) {
    out.textContent = 'Audience: name labels or conditions';
    return;
  }
  try {
    const answer = await api('POST', '/api/campaigns/audience', { audience });
    out.textContent = `Audience: ${answer.count.toLocaleString()} contact${answer.count === 1 ? '' : 's'}`;
    out.dataset.count = String(answer.count);
  } catch (error) {
    out.textContent = `Audience: ${error.message}`;
  }
}

function scheduleCount() {
  clearTimeout(view.countTimer);
  view.countTimer = setTimeout(countAudience, 300);
}

function showForm() {
  stopRefresh();
  view.selected = null;
  markSelected();
  const detail = $('#cmp-detail');
  detail.replaceChildren(
    h('form', { id: 'cmp-form', class: 'cmp-form' },
      h('h2', null, 'New campaign'),
      h('label', null, 'Name ', h('input', { id: 'cmp-name', type: 'text', maxlength: '200', required: true })),
      h('fieldset', null,
        h('legend', null, 'Audience'),
        h('label', null, 'Labels (any of, comma-separated) ', h('input', { id: 'cmp-labels', type: 'text', placeholder: 'vip, newsletter' })),
        h('div', { class: 'cmp-channels' }, 'Channels, in order of preference: ',
          MEDIA.map((m) => h('label', { class: 'toggle' }, h('input', { type: 'checkbox', class: 'cmp-channel', value: m }), ` ${m}`)),
          h('span', { class: 'hint' }, ' (none: the channel each contact wrote on last)')),
        h('div', { id: 'cmp-conds' }),
        h('button', { type: 'button', id: 'cmp-add-cond', class: 'ghost' }, '+ Attribute condition'),
        h('label', null, 'Active since ', h('input', { id: 'cmp-active-after', type: 'date' })),
        h('p', { id: 'cmp-count', class: 'cmp-count', role: 'status' }, 'Audience: name labels or conditions'),
      ),
      h('fieldset', null,
        h('legend', null, 'Message'),
        h('textarea', { id: 'cmp-text', rows: '3', maxlength: '4096', placeholder: 'Hi {first_name}! Our spring sale in {city} starts today.', 'aria-label': 'Message text' }),
        h('p', { class: 'hint' }, 'Placeholders: {first_name}, {name} and contact attributes such as {city}.'),
        h('details', null,
          h('summary', null, 'WhatsApp template'),
          h('label', null, 'Template name ', h('input', { id: 'cmp-template', type: 'text' })),
          h('label', null, 'Language ', h('input', { id: 'cmp-language', type: 'text', placeholder: 'en_US' })),
          h('label', null, 'Parameters (comma-separated) ', h('input', { id: 'cmp-params', type: 'text', placeholder: '{first_name}, {city}' })),
        ),
      ),
      h('fieldset', null,
        h('legend', null, 'Sending'),
        h('label', null, 'Inbox (empty: the contact\'s preferred one) ', h('input', { id: 'cmp-inbox', type: 'text' })),
        h('label', null, 'Send at ', h('input', { id: 'cmp-send-at', type: 'datetime-local' })),
        h('label', null, 'At this hour in each contact\'s zone ', h('input', { id: 'cmp-local-time', type: 'time' })),
        h('div', null, 'Quiet hours ',
          h('input', { id: 'cmp-quiet-start', type: 'time', 'aria-label': 'Quiet hours start' }), ' – ',
          h('input', { id: 'cmp-quiet-end', type: 'time', 'aria-label': 'Quiet hours end' }),
          h('span', { class: 'hint' }, ' (empty: the greetings settings\' quiet hours)')),
      ),
      h('div', { class: 'cmp-actions' },
        h('button', { type: 'submit', class: 'primary', id: 'cmp-create' }, 'Create draft'),
        h('span', { id: 'cmp-error', class: 'error', role: 'alert' }),
      ),
    ),
  );
  const form = $('#cmp-form');
  form.querySelector('#cmp-add-cond').addEventListener('click', () => {
    $('#cmp-conds').append(conditionRow());
  });
  form.addEventListener('input', scheduleCount);
  form.addEventListener('change', scheduleCount);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    $('#cmp-error').textContent = '';
    try {
      const created = await api('POST', '/api/campaigns', bodyFromForm());
      toast(`Campaign "${created.name}" created as a draft`);
      await loadList();
      await showCampaign(created.id);
    } catch (error) {
      $('#cmp-error').textContent = error.message;
    }
  });
}

// -- one campaign -----------------------------------------------------------------

function statTiles(stats) {
  return h('div', { class: 'cmp-stats', id: 'cmp-stats' },
    STATS.map((name) => h('div', { class: 'cmp-stat', dataset: { stat: name } },
      h('span', { class: 'cmp-stat-value' }, String(stats ? stats[name] : 0)),
      h('span', { class: 'cmp-stat-name' }, name))));
}

function controls(campaign) {
  const buttons = [];
  const act = (action, label, cls) => h('button', {
    type: 'button', class: cls || '', dataset: { action },
    onclick: async () => {
      try {
        await api('POST', `/api/campaigns/${encodeURIComponent(campaign.id)}/${action}`);
        await refresh();
        await loadList();
      } catch (error) { fail(error); }
    },
  }, label);
  if (campaign.status === 'draft') buttons.push(act('start', campaign.send_at ? 'Schedule' : 'Start now', 'primary'));
  if (campaign.status === 'paused') buttons.push(act('start', 'Resume', 'primary'));
  if (campaign.status === 'running' || campaign.status === 'scheduled') buttons.push(act('pause', 'Pause'));
  if (['draft', 'scheduled', 'running', 'paused'].includes(campaign.status)) buttons.push(act('cancel', 'Cancel', 'danger'));
  return h('div', { class: 'cmp-controls', id: 'cmp-controls' }, buttons);
}

function describe(campaign) {
  const a = campaign.audience || {};
  const parts = [];
  if (a.labels && a.labels.length) parts.push(`labels ${a.labels.join(', ')}`);
  for (const [name, cond] of Object.entries(a.attributes || {})) {
    if (cond && typeof cond === 'object') {
      for (const [op, value] of Object.entries(cond)) parts.push(`${name} ${op} ${Array.isArray(value) ? value.join('|') : value}`);
    } else parts.push(`${name} = ${cond}`);
  }
  if (a.channels && a.channels.length) parts.push(`on ${a.channels.join(' then ')}`);
  return parts.join(' · ');
}

function recipientRow(r) {
  return h('tr', { dataset: { status: r.status } },
    h('td', { title: r.contact_id }, r.contact_name || r.contact_id),
    h('td', null, r.channel || '—'),
    h('td', null, h('span', { class: `badge cmp-status-${r.status}` }, r.status)),
    h('td', null, r.reason || ''),
    h('td', null, when(r.sent_at)));
}

async function loadRecipients(more = false) {
  if (!view.selected) return;
  const params = new URLSearchParams({ limit: '50' });
  if (view.status) params.set('status', view.status);
  if (more && view.recipientsCursor) params.set('cursor', view.recipientsCursor);
  try {
    const answer = await api('GET', `/api/campaigns/${encodeURIComponent(view.selected)}/recipients?${params}`);
    const body = $('#cmp-recipients tbody');
    if (!body) return;
    if (!more) body.replaceChildren();
    body.append(...answer.items.map(recipientRow));
    view.recipientsCursor = answer.next_cursor;
    $('#cmp-more').hidden = !answer.next_cursor;
  } catch (error) { fail(error); }
}

function drawCampaign(campaign) {
  const detail = $('#cmp-detail');
  const message = campaign.message || {};
  detail.replaceChildren(
    h('div', { class: 'cmp-head' },
      h('h2', { id: 'cmp-title' }, campaign.name),
      h('span', { class: `badge cmp-badge cmp-${campaign.status}`, id: 'cmp-state' }, campaign.status)),
    h('p', { class: 'hint' }, describe(campaign)),
    h('p', { class: 'cmp-text' }, message.text || (message.template ? `Template ${message.template.name} (${message.template.language})` : '')),
    h('p', { class: 'hint' },
      `Send at ${when(campaign.send_at)}`,
      campaign.local_time ? ` · at ${campaign.local_time} in each contact's zone` : '',
      campaign.quiet_hours && campaign.quiet_hours.start !== campaign.quiet_hours.end
        ? ` · quiet ${campaign.quiet_hours.start}–${campaign.quiet_hours.end}` : ''),
    controls(campaign),
    statTiles(campaign.stats),
    h('div', { class: 'cmp-recipients-head' },
      h('h3', null, 'Recipients'),
      h('select', {
        id: 'cmp-recipient-status', 'aria-label': 'Recipient status',
        onchange: (event) => { view.status = event.target.value; loadRecipients(); },
      }, RECIPIENT_STATUSES.map((s) => h('option', { value: s, selected: s === view.status }, s || 'All')))),
    h('table', { id: 'cmp-recipients', class: 'cmp-recipients' },
      h('thead', null, h('tr', null, ['Contact', 'Channel', 'Status', 'Reason', 'Sent'].map((t) => h('th', null, t)))),
      h('tbody')),
    h('button', { type: 'button', id: 'cmp-more', class: 'ghost more', hidden: true, onclick: () => loadRecipients(true) }, 'Load more'),
  );
}

function updateCampaign(campaign) {
  const state = $('#cmp-state');
  if (!state) { drawCampaign(campaign); return; }
  const changed = state.textContent !== campaign.status;
  state.textContent = campaign.status;
  state.className = `badge cmp-badge cmp-${campaign.status}`;
  $('#cmp-stats').replaceWith(statTiles(campaign.stats));
  if (changed) $('#cmp-controls').replaceWith(controls(campaign));
}

async function refresh() {
  if (!view.selected) return;
  try {
    const campaign = await api('GET', `/api/campaigns/${encodeURIComponent(view.selected)}`);
    updateCampaign(campaign);
    if (!view.recipientsCursor) await loadRecipients();
  } catch (error) { fail(error); }
}

function stopRefresh() {
  clearInterval(view.timer);
  view.timer = null;
}

async function showCampaign(id) {
  stopRefresh();
  view.selected = id;
  view.status = '';
  view.recipientsCursor = null;
  markSelected();
  try {
    const campaign = await api('GET', `/api/campaigns/${encodeURIComponent(id)}`);
    drawCampaign(campaign);
    await loadRecipients();
  } catch (error) { fail(error); return; }
  view.timer = setInterval(() => {
    if (page().hidden) { stopRefresh(); return; }
    refresh();
    loadList();
  }, REFRESH_MS);
}

// -- the list ---------------------------------------------------------------------

function markSelected() {
  for (const item of document.querySelectorAll('#cmp-list li')) {
    item.setAttribute('aria-current', String(item.dataset.id === view.selected));
  }
}

async function loadList() {
  try {
    const answer = await api('GET', '/api/campaigns?limit=100');
    const list = $('#cmp-list');
    list.replaceChildren(...answer.items.map((c) => h('li', { dataset: { id: c.id } },
      h('button', { type: 'button', class: 'cmp-item', onclick: () => showCampaign(c.id) },
        h('span', { class: 'cmp-item-name' }, c.name),
        h('span', { class: `badge cmp-${c.status}` }, c.status),
        h('span', { class: 'cmp-item-stats' }, c.stats ? `${c.stats.sent}/${c.stats.targeted} sent` : '')))));
    $('#cmp-empty').hidden = answer.items.length > 0;
    markSelected();
  } catch (error) { fail(error); }
}

function build() {
  const section = page();
  if (section.dataset.built) return;
  section.dataset.built = '1';
  section.append(
    h('div', { class: 'cmp-side' },
      h('div', { class: 'cmp-tools' },
        h('h1', null, 'Campaigns'),
        h('button', { type: 'button', id: 'cmp-new', class: 'primary', onclick: showForm }, 'New campaign')),
      h('ul', { id: 'cmp-list', class: 'cmp-list', 'aria-live': 'polite' }),
      h('p', { id: 'cmp-empty', class: 'empty', hidden: true }, 'No campaigns yet.')),
    h('div', { id: 'cmp-detail', class: 'cmp-detail' }, h('p', { class: 'empty' }, 'Choose a campaign or create one.')),
  );
}

export async function showCampaignsPage() {
  build();
  await loadList();
  if (view.selected) await showCampaign(view.selected);
}
