// A message's files in the thread: an image as a thumbnail that opens full size,
// a voice note or call recording as a player, anything else as a download link;
// each with its name and size. A file the hub is still fetching shows a
// placeholder, one it could not fetch says why. The hub serves the bytes from
// /api/media/<id> (the session cookie authorises <img> and <audio>); names come
// from customers and go in as text only.

import { h } from './dom.js';

const MEDIA_PATH = /^\/api\/media\/[A-Za-z0-9_:-]{1,64}$/;
// What the hub serves inline (hub.services.media INLINE_TYPES); SVG never is.
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/bmp']);

/** "12 KB", "3.4 MB"; '' when unknown. */
export function humanSize(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function plainType(type) {
  return String(type || '').split(';')[0].trim().toLowerCase();
}

function kindOf(type) {
  if (IMAGE_TYPES.has(type)) return 'image';
  if (type.startsWith('audio/')) return 'audio';
  if (type.startsWith('video/')) return 'video';
  return 'file';
}

const KIND_WORDS = { image: 'Photo', audio: 'Voice note', video: 'Video', file: 'File' };

/** Whether `attachment` is a file the hub keeps (served from /api/media/<id>). */
export function isHubMedia(attachment) {
  return Boolean(attachment && attachment.id && MEDIA_PATH.test(String(attachment.url || '')));
}

function caption(name, size) {
  return h('span', { class: 'media-caption' },
    h('span', { class: 'media-name' }, name),
    size ? h('span', { class: 'media-size' }, ` · ${size}`) : null);
}

/** One file of a message as thread content; `onload` runs when an image has loaded. */
export function mediaNode(attachment, onload) {
  const type = plainType(attachment.content_type);
  const kind = kindOf(type);
  const name = String(attachment.name || KIND_WORDS[kind]);
  const size = humanSize(attachment.size);
  const status = attachment.status || 'ready';
  if (status === 'pending') {
    return h('div', { class: 'media media-pending', dataset: { status, kind }, role: 'status' },
      h('span', { class: 'media-spinner', 'aria-hidden': 'true' }),
      h('span', { class: 'media-note' }, `${KIND_WORDS[kind]} on its way…`), ' ', caption(name, size));
  }
  if (status === 'failed') {
    return h('div', { class: 'media media-failed', dataset: { status, kind } },
      h('span', { class: 'media-note' }, `⚠ ${KIND_WORDS[kind]} not available: ${attachment.error || 'it could not be fetched'}`),
      ' ', caption(name, size));
  }
  const url = String(attachment.url);
  if (kind === 'image') {
    const img = h('img', { src: url, alt: name, class: 'media-img', loading: 'lazy', onload });
    return h('figure', { class: 'media media-image', dataset: { status, kind } },
      h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', title: `Open ${name} full size` }, img),
      h('figcaption', null, caption(name, size)));
  }
  if (kind === 'audio') {
    return h('figure', { class: 'media media-audio', dataset: { status, kind } },
      h('audio', { controls: true, preload: 'metadata', src: url }),
      h('figcaption', null, caption(name, size)));
  }
  if (kind === 'video') {
    return h('figure', { class: 'media media-video', dataset: { status, kind } },
      h('video', { controls: true, preload: 'metadata', src: url, class: 'media-video' }),
      h('figcaption', null, caption(name, size)));
  }
  // A document (or anything a browser could run): the hub serves it as a download.
  return h('a', { class: 'file media media-file', dataset: { status, kind }, href: url, download: name },
    '⤓ ', caption(name, size));
}
