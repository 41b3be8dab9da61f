// What the inbox remembers, in one place: every other module reads and changes
// the page's state only through the objects and functions here (no globals on
// window). Nothing here touches the DOM or the network.

/** The session, the conversation list, the open conversation and the socket. */
export const state = {
  me: null,              // the logged-in agent ({id, name, email, role}), null when logged out
  convs: new Map(),      // id -> conversation
  nextCursor: null,      // cursor of the list's next page
  filter: { assignee: '', status: 'open', channel: '', label: '', q: '', bot: '', overdue: false },
  current: null,         // open conversation id
  messages: new Map(),   // id -> message of the open conversation
  olderCursor: null,     // cursor of the open conversation's older messages
  contact: null,         // the contact shown in the panel
  refusals: new Map(),   // conversation id -> the API's refusal of the last reply
  canned: null,          // [{shortcut, text}] once loaded ([] when there is no API)
  cannedActive: 0,       // index of the highlighted canned response
  fetching: new Set(),   // conversation ids being fetched after an event
  ws: null,              // the WebSocket, while one is open or opening
  wsDelay: 1000,         // ms before the next reconnection attempt
  wsWasUp: false,        // a socket said hello before (so a new hello means "back")
  callpop: null,         // the call.incoming event the screen-pop shows
  readTimer: null,       // pending mark-as-read of the open conversation
  stick: true,          // keep the thread scrolled to its newest message
};

/** The contacts page: its list, the contact in its editor and a merge in progress. */
export const contactsPage = {
  items: new Map(),     // id -> contact of the list, in the server's order
  next: null,           // cursor of the next page
  q: '',
  seq: 0,               // the newest search asked (older answers are dropped)
  contact: null,        // the contact in the editor
  mergeSeq: 0,
  mergeOther: null,     // the contact picked to merge into the one in the editor
};

/** The open conversation, or null. */
export function currentConv() {
  return state.current ? state.convs.get(state.current) : null;
}

/** Whether the agent may see reports and import or export contacts. */
export function canSupervise() {
  return Boolean(state.me && ['supervisor', 'admin'].includes(state.me.role));
}
