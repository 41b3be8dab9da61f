// The screen-pop of an incoming call: the caller's card at once, completed
// with the contact's birthday and time zone when the API has them.

import { api } from './api.js';
import { loadContact } from './contact-panel.js';
import { $, h, row } from './dom.js';
import { birthdayText, initials } from './format.js';
import { state } from './state.js';
import { openConversation } from './thread.js';

export function showCallPop(data) {
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

export function wireCallPop() {
  $('#callpop-dismiss').addEventListener('click', hideCallPop);
  $('#callpop-open').addEventListener('click', () => {
    const data = state.callpop;
    hideCallPop();
    if (data && data.conversation_id) openConversation(data.conversation_id);
    else if (data && data.contact && data.contact.id) loadContact(data.contact.id);
    document.body.dataset.view = 'contact';
  });
}
