// The reports page (supervisors and admins): totals, response and resolution
// times, first-response SLA breaches, stacked bar charts per channel per day
// (SVG), and a table per agent.

import { api } from './api.js';
import { $, h } from './dom.js';
import { channelName, DAY } from './format.js';

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
  const sla = report.sla || {};
  const slaOf = (id) => ((sla.by_agent || {})[id] || {});
  const perInbox = Object.entries(sla.by_inbox || {}).map(([inbox, n]) => `${inbox} ${n.breaches}`).join(', ');
  $('#reports-body').replaceChildren(
    h('div', { class: 'stats' },
      statCard('Conversations', String(totals.conversations ?? 0)),
      statCard('Messages in / out', `${totals.messages_in ?? 0} / ${totals.messages_out ?? 0}`),
      statCard('First response', seconds(first.median), `median · p90 ${seconds(first.p90)} · ${first.unanswered ?? 0} unanswered`),
      statCard('Resolution', seconds(resolution.median), `median · p90 ${seconds(resolution.p90)} · ${resolution.count ?? 0} resolved`),
      statCard('First-response SLA breaches', String(sla.breaches ?? 0),
        `${sla.escalations ?? 0} escalated${perInbox ? ` · by inbox: ${perInbox}` : ''}`)),
    h('div', { class: 'charts' },
      dayChart('Conversations per channel per day', days, (v) => v.conversations || 0),
      dayChart('Messages per channel per day', days, (v) => (v.messages_in || 0) + (v.messages_out || 0))),
    h('div', { class: 'card' }, h('h2', null, 'Per agent'),
      h('table', { class: 'agents-table' },
        h('thead', null, h('tr', null, ['Agent', 'Replies', 'Notes', 'Assigned', 'Resolved', 'First response (median / p90)', 'Resolution (median / p90)', 'SLA breaches'].map((t) => h('th', null, t)))),
        h('tbody', null, (report.agents || []).map((a) => h('tr', null,
          h('td', null, a.name || a.email || a.id),
          h('td', null, String(a.replies)), h('td', null, String(a.notes)),
          h('td', null, String(a.conversations_assigned)), h('td', null, String(a.conversations_resolved)),
          h('td', null, `${seconds(a.first_response && a.first_response.median)} / ${seconds(a.first_response && a.first_response.p90)}`),
          h('td', null, `${seconds(a.resolution && a.resolution.median)} / ${seconds(a.resolution && a.resolution.p90)}`),
          h('td', { class: 'sla-breaches' }, String(slaOf(a.id).breaches ?? 0)))))))
  );
}

/** Shown: the last seven days unless a range was chosen before. */
export function showReportsPage() {
  if (!$('#reports-to').value) {
    const today = new Date();
    $('#reports-to').value = isoDay(today);
    $('#reports-from').value = isoDay(new Date(today.getTime() - 6 * DAY));
  }
  loadReports();
}

export function wireReports() {
  $('#reports-range').addEventListener('submit', (event) => { event.preventDefault(); loadReports(); });
}
