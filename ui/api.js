// api.js — the console's only way to the server: the same HTTP API every client uses
// (docs/openapi.json). Credentials live in this module and in sessionStorage (gone when the tab
// closes), never in the URL or a cookie.

const KEY = 'kzhook.console.session';

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || ('HTTP ' + status));
    this.status = status;
    this.code = (body && body.errorCode) || '';
    this.body = body;
  }
}

let session = null;

export function loadSession() {
  try {
    session = JSON.parse(sessionStorage.getItem(KEY) || 'null');
  } catch (e) {
    session = null;
  }
  return session;
}

function save() {
  if (session) sessionStorage.setItem(KEY, JSON.stringify(session));
  else sessionStorage.removeItem(KEY);
}

export function getSession() {
  return session;
}

export function logout() {
  session = null;
  save();
}

async function raw(method, path, {body, headers} = {}) {
  const init = {method, headers: Object.assign({}, headers || {}), cache: 'no-store',
    credentials: 'omit', referrerPolicy: 'no-referrer'};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = {message: text};
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// Operator: checks the admin token with a cheap admin call before keeping it.
export async function loginOperator(token) {
  await raw('GET', '/admin/v1/stats?minutes=1', {headers: {Authorization: 'Bearer ' + token}});
  session = {mode: 'operator', token};
  save();
}

async function fetchToken(s) {
  const t = await raw('GET', '/v1/accessToken', {headers: {
    applicationId: s.applicationId, applicationSecret: s.applicationSecret,
    refreshToken: s.refreshToken}});
  s.accessToken = t.accessToken;
  s.accessTokenExpiry = t.accessTokenExpiry;
}

// Connector: an application's three credentials; the access token is fetched now and again
// whenever the server answers 401 InvalidToken.
export async function loginConnector(applicationId, applicationSecret, refreshToken) {
  const s = {mode: 'connector', applicationId, applicationSecret, refreshToken};
  await fetchToken(s);
  session = s;
  save();
}

function authHeaders() {
  if (!session) return {};
  if (session.mode === 'operator') return {Authorization: 'Bearer ' + session.token};
  return {accessToken: session.accessToken};
}

export async function api(method, path, body) {
  try {
    return await raw(method, path, {body, headers: authHeaders()});
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && e.code === 'InvalidToken' && session &&
        session.mode === 'connector') {
      await fetchToken(session);
      save();
      return raw(method, path, {body, headers: authHeaders()});
    }
    throw e;
  }
}
