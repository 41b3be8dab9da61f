// Words and times as the inbox shows them: channel names, contact names and
// initials, dates, durations. Pure functions of their arguments.

export const DAY = 24 * 60 * 60 * 1000;
const CHANNELS = {
  whatsapp: 'WhatsApp', sms: 'SMS', telegram: 'Telegram', email: 'E-mail', voice: 'Voice', form: 'Form',
};

export function channelName(channel) {
  return CHANNELS[channel] || channel || '?';
}

export function displayName(contact) {
  return (contact && contact.name) || 'Unknown contact';
}

export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  return (parts.slice(0, 2).map((p) => [...p][0]).join('') || '?').toUpperCase();
}

export function shortTime(iso) {
  if (!iso) return '';
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return '';
  const now = new Date();
  if (at.toDateString() === now.toDateString()) {
    return at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  return at.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

export function longTime(iso) {
  if (!iso) return '';
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? '' : at.toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '';
  const total = Math.max(0, Math.round(Number(seconds)));
  const m = Math.floor(total / 60);
  const s = String(total % 60).padStart(2, '0');
  return `${m}:${s}`;
}

export function hoursLeft(ms) {
  const minutes = Math.max(0, Math.floor(ms / 60000));
  const hours = Math.floor(minutes / 60);
  return hours ? `${hours} h ${minutes % 60} min` : `${minutes} min`;
}

export function birthdayText(birthday) {
  if (!birthday || !birthday.month || !birthday.day) return null;
  const date = new Date(Date.UTC(birthday.year || 2000, birthday.month - 1, birthday.day));
  const opts = { month: 'long', day: 'numeric', timeZone: 'UTC' };
  if (birthday.year) opts.year = 'numeric';
  return date.toLocaleDateString([], opts);
}

export function localTime(zone) {
  try {
    return new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', timeZone: zone });
  } catch {
    return null;
  }
}
