// One message as a list item of the thread: text, e-mail (with its quoted
// history folded), call or voicemail, attachments, location and contact cards,
// delivery ticks. Customer text goes in as text nodes; URLs through safeUrl.

import { $, h, safeUrl } from './dom.js';
import { duration, longTime, shortTime } from './format.js';
import { isHubMedia, mediaNode } from './media.js';
import { scheduledNode } from './scheduling.js';
import { state } from './state.js';

const TICKS = {
  queued: ['◷', 'Queued'], sending: ['◷', 'Sending'], sent: ['✓', 'Sent'],
  delivered: ['✓✓', 'Delivered'], read: ['✓✓', 'Read'], unknown: ['?', 'Status unknown'],
  scheduled: ['◷', 'Scheduled'], cancelled: ['✕', 'Cancelled'],
};

/** Keep the newest message in view while the thread is stuck to its bottom. */
export function keepBottom() {
  const list = $('#messages');
  if (state.stick) list.scrollTop = list.scrollHeight;
}

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
  if (isHubMedia(attachment)) return mediaNode(attachment, keepBottom);
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
  // The hub keeps the recording as the message's file (shown with its attachments).
  const recording = (message.attachments || []).length ? null : safeUrl(call.recording_url);
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
  if (type === 'bot') return message.sender.id ? `Bot · ${message.sender.id}` : 'Bot';
  if (type === 'system') return 'System';
  if (type === 'agent') return state.me && message.sender.id === state.me.id ? 'You' : 'Agent';
  return null;
}

/** A message as the thread's <li>. */
export function messageItem(message) {
  const type = message.sender && message.sender.type;
  const kind = message.kind || 'text';
  if (kind === 'event' || (type === 'system' && message.direction !== 'out')) {
    return h('li', { class: 'msg system', dataset: { id: message.id, kind } },
      type === 'system' ? h('span', { class: 'who' }, 'System') : null,
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
      scheduledNode(message),
      h('div', { class: 'meta' },
        h('time', { datetime: message.created_at || '', title: longTime(message.created_at) }, shortTime(message.created_at)),
        ticks(message))));
}
