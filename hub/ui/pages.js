// Which page shows: the inbox (list, thread and contact panes), the contacts
// page or the reports, switched by the buttons in the top bar.

import { showAuditPage } from './audit.js';
import { showCampaignsPage } from './campaigns.js';
import { showContactsPage } from './contacts.js';
import { showGreetingsPage } from './greetings.js';
import { $ } from './dom.js';
import { showAgentsPage } from './handoff.js';
import { showReportsPage } from './reports.js';

export function showPage(name) {
  const reports = name === 'reports';
  const contacts = name === 'contacts';
  const agents = name === 'agents';
  const campaigns = name === 'campaigns';
  const greetings = name === 'greetings';
  const audit = name === 'audit';
  $('#audit-page').hidden = !audit;
  $('#show-audit').setAttribute('aria-pressed', String(audit));
  $('#greetings-page').hidden = !greetings;
  $('#show-greetings').setAttribute('aria-pressed', String(greetings));
  $('#campaigns-page').hidden = !campaigns;
  $('#show-campaigns').setAttribute('aria-pressed', String(campaigns));
  $('#reports').hidden = !reports;
  $('#contacts-page').hidden = !contacts;
  $('#agents-page').hidden = !agents;
  document.querySelector('main.panes').hidden = reports || contacts || agents || campaigns || greetings || audit;
  $('#show-reports').setAttribute('aria-pressed', String(reports));
  $('#show-contacts').setAttribute('aria-pressed', String(contacts));
  $('#show-agents').setAttribute('aria-pressed', String(agents));
  $('#show-inbox').setAttribute('aria-pressed', String(!reports && !contacts && !agents && !campaigns && !greetings && !audit));
  if (contacts) showContactsPage();
  if (reports) showReportsPage();
  if (agents) showAgentsPage();
  if (campaigns) showCampaignsPage();
  if (greetings) showGreetingsPage();
  if (audit) showAuditPage();
}

export function wirePages() {
  $('#show-inbox').addEventListener('click', () => showPage('inbox'));
  $('#show-reports').addEventListener('click', () => showPage('reports'));
  $('#show-contacts').addEventListener('click', () => showPage('contacts'));
  $('#show-agents').addEventListener('click', () => showPage('agents'));
  $('#show-campaigns').addEventListener('click', () => showPage('campaigns'));
  $('#show-greetings').addEventListener('click', () => showPage('greetings'));
  $('#show-audit').addEventListener('click', () => showPage('audit'));
}
