// The hub's JSON API: one fetch wrapper that sends the session cookie, repeats the
// hub_csrf cookie in the X-CSRF-Token header on every state-changing request,
// turns error answers into an ApiFailure, and shows the login form on a 401.

import { showLogin } from './auth.js';

/** The hub_csrf cookie's value ('' when there is no session). */
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)hub_csrf=([^;]*)/);
  return match ? decodeURIComponent(match[1].replace(/^"|"$/g, '')) : '';
}

/** An error answer: its HTTP status, the API's error code and message. */
export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A JSON request to the API; its JSON answer, or an ApiFailure thrown. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken();
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    if (response.status === 401 && path !== '/api/auth/login') showLogin();
    throw new ApiFailure(response.status, error.code || 'http', error.message || `HTTP ${response.status}`);
  }
  return data;
}
