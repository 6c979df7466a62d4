// app.js — the console's pages and its router (the part of the URL after '#': ids only, never a
// credential). Pages load one page of data at a time from the server (cursor / nextCursor).
import {h, append, clear, fmtTime, fmtAgo, fmtRate, pretty, pill, field, table, toast} from './dom.js';
import {api, ApiError, loadSession, getSession, logout, loginOperator, loginConnector} from './api.js';
import {drawCharts} from './charts.js';

const EVENT_TYPES = ['ActionCreated', 'ActionResponse', 'SurveyCreated', 'SurveyResponse',
  'JobCreated', 'JobResponse', 'TextMessageCreated', 'AttachmentCreated', 'Announcement',
  'MemberAdded', 'MemberRemoved', 'GroupAdded', 'GroupRemoved', 'PollCreated', 'PollResponse',
  'LetsMeetCreated', 'LetsMeetResponse'];
const PAGE = 50;
const main = document.getElementById('main');
let refreshTimer = null;

// ==== small pieces ====

// Shows `hash`: through the hashchange event when it changes, at once otherwise.
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function errorText(e) {
  if (e instanceof ApiError) return `${e.status} ${e.code}: ${e.message}`;
  return String(e && e.message ? e.message : e);
}

function errorBox(e) {
  return h('div.alert.alert-bad', {role: 'alert'}, errorText(e));
}

function button(text, onclick, cls) {
  return h('button.btn' + (cls ? '.' + cls : ''), {type: 'button', on: {click: onclick}}, text);
}

function link(text, hash, cls) {
  return h('a' + (cls ? '.' + cls : ''), {href: '#' + hash}, text);
}

function pageHead(title, ...extra) {
  return h('div.page-head', h('h1', title), h('div.actions', extra));
}

function statusPill(d) {
  const kind = {succeeded: 'ok', dead: 'bad', pending: 'warn', skipped: 'off'}[d] || 'info';
  return pill(d, kind);
}

function activePill(active) {
  return active ? pill('active', 'ok') : pill('disabled', 'off');
}

function healthCell(hl) {
  if (!hl) return '—';
  const total = hl.succeeded + hl.failed + hl.dead;
  const rate = hl.successRate;
  const kind = rate === null ? 'off' : rate >= 0.99 ? 'ok' : rate >= 0.9 ? 'warn' : 'bad';
  return h('span.health', pill(fmtRate(rate), kind), h('span.muted', ` ${total} attempts`));
}

// Runs an async action from a button: disables it meanwhile, reports failures.
async function busy(btn, fn) {
  btn.disabled = true;
  try {
    await fn();
  } catch (e) {
    toast(errorText(e), true);
  } finally {
    btn.disabled = false;
  }
}

function kv(rows) {
  return h('dl.kv', rows.filter(Boolean).map(([k, v]) => [h('dt', k), h('dd', v)]));
}

// A pager over server cursors: `cursors` holds the cursor of every page seen so far.
function pager(state, hasNext, onMove) {
  const prev = button('← Previous', () => { state.cursors.pop(); onMove(); });
  prev.disabled = state.cursors.length <= 1;
  const next = button('Next →', () => { state.cursors.push(hasNext); onMove(); });
  next.disabled = !hasNext;
  return h('div.pager', prev, h('span.muted', `page ${state.cursors.length}`), next);
}

// ==== login ====

function loginPage() {
  const tok = h('input', {type: 'password', autocomplete: 'off', required: true});
  const opErr = h('div');
  const op = h('form.panel.login', {on: {submit: async (ev) => {
    ev.preventDefault();
    clear(opErr);
    try {
      await loginOperator(tok.value.trim());
      go('#/overview');
    } catch (e) {
      opErr.appendChild(errorBox(e));
    }
  }}}, h('h2', 'Operator'), h('p.muted', 'Every application and webhook, with the admin token.'),
  field('Admin token', tok), opErr, h('button.btn.btn-primary', {type: 'submit'}, 'Sign in'));

  const appId = h('input', {autocomplete: 'off', required: true});
  const secret = h('input', {type: 'password', autocomplete: 'off', required: true});
  const refresh = h('input', {type: 'password', autocomplete: 'off', required: true});
  const cErr = h('div');
  const conn = h('form.panel.login', {on: {submit: async (ev) => {
    ev.preventDefault();
    clear(cErr);
    try {
      await loginConnector(appId.value.trim(), secret.value.trim(), refresh.value.trim());
      go('#/webhooks');
    } catch (e) {
      cErr.appendChild(errorBox(e));
    }
  }}}, h('h2', 'Connector'), h('p.muted', "One application's own webhooks and deliveries."),
  field('Application id', appId), field('Application secret', secret),
  field('Refresh token', refresh), cErr, h('button.btn.btn-primary', {type: 'submit'}, 'Sign in'));

  return h('div.login-wrap', h('h1', 'Sign in'),
    h('p.muted', 'Credentials stay in this tab (sessionStorage) and are sent only to this server.'),
    h('div.login-grid', op, conn));
}

// ==== operator: overview ====

async function overviewPage() {
  const s = await api('GET', '/admin/v1/stats?minutes=60');
  const sum = (k) => s.buckets.reduce((a, b) => a + b[k], 0);
  const last = s.buckets.filter((b) => b.p50Ms !== null).slice(-1)[0];
  const cards = h('div.cards',
    card('Published (1 h)', sum('published')),
    card('Succeeded (1 h)', sum('succeeded'), 'ok'),
    card('Failed attempts (1 h)', sum('failed'), sum('failed') ? 'warn' : ''),
    card('Dead (1 h)', sum('dead'), sum('dead') ? 'bad' : ''),
    card('Due now', s.backlog.due, s.backlog.due > 1000 ? 'warn' : ''),
    card('Scheduled retries', s.backlog.scheduled),
    card('In flight', s.backlog.inflight),
    card('Latency p50 / p99', last ? `${last.p50Ms} / ${last.p99Ms} ms` : '—'));
  const charts = h('div.charts');
  const failing = s.failingWebhooks.map((f) => h('tr',
    h('td', h('code.id', f.id)), h('td', h('code.id', f.applicationId)),
    h('td.url', f.callbackUrl), h('td', fmtAgo(f.failingSince)),
    h(f.lastError ? 'td.err' : 'td', f.lastError || '—')));
  const view = h('div', pageHead('Overview', button('Refresh', () => route())), cards,
    h('section', h('h2', 'Last hour, per minute'), charts),
    h('section', h('h2', `Failing webhooks (${s.failingWebhooks.length})`),
      table(['Webhook', 'Application', 'Callback URL', 'Failing since', 'Last error'], failing,
        'No webhook is failing.')));
  setTimeout(() => drawCharts(charts, s.buckets), 0);
  refreshTimer = setTimeout(() => { if (location.hash === '#/overview') route(); }, 15000);
  return view;
}

function card(label, value, kind) {
  return h('div.card' + (kind ? '.card-' + kind : ''), h('div.card-v', String(value)),
    h('div.card-l', label));
}

// ==== operator: applications ====

const appState = {cursors: ['']};

async function appsPage() {
  const c = appState.cursors[appState.cursors.length - 1];
  const r = await api('GET', '/admin/v1/applications' + (c ? '?cursor=' + encodeURIComponent(c) : ''));
  const created = h('div');
  const name = h('input', {required: true, maxlength: 200});
  const ids = h('input', {required: true, value: '*'});
  const form = h('form.panel.form-inline', {on: {submit: async (ev) => {
    ev.preventDefault();
    clear(created);
    try {
      const a = await api('POST', '/admin/v1/applications', {name: name.value,
        objectIds: ids.value.split(',').map((x) => x.trim()).filter(Boolean)});
      created.appendChild(h('div.alert.alert-ok', {role: 'status'},
        h('strong', 'Application created. Copy these now: the secret and refresh token are not shown again.'),
        kv([['Name', a.name], ['applicationId', h('code.copy', a.applicationId)],
          ['applicationSecret', h('code.copy', a.applicationSecret)],
          ['refreshToken', h('code.copy', a.refreshToken)]])));
      name.value = '';
      refreshList();
    } catch (e) {
      created.appendChild(errorBox(e));
    }
  }}}, h('h2', 'New application'), field('Name', name),
  field('Object ids', ids, 'Groups, actions or action packages it may subscribe to, comma separated; * = all.'),
  h('button.btn.btn-primary', {type: 'submit'}, 'Create'));
  const list = h('div');
  const render = (res) => {
    clear(list);
    const rows = res.applications.map((a) => h('tr',
      h('td', a.name), h('td', h('code.id', a.applicationId)),
      h('td', (a.objectIds || []).join(', ')), h('td', fmtTime(a.createdAt)),
      h('td', link('Webhooks', '/all-webhooks?app=' + encodeURIComponent(a.applicationId)), ' ',
        button('Delete', (ev) => busy(ev.target, async () => {
          if (!confirm(`Delete application “${a.name}” and all its webhooks?`)) return;
          await api('DELETE', '/admin/v1/applications/' + encodeURIComponent(a.applicationId));
          toast('Application deleted');
          refreshList();
        }), 'btn-danger'))));
    append(list, [table(['Name', 'Application id', 'Object ids', 'Created', ''], rows,
      'No application yet.'), pager(appState, res.nextCursor || null, () => route())]);
  };
  const refreshList = async () => {
    const c2 = appState.cursors[appState.cursors.length - 1];
    render(await api('GET', '/admin/v1/applications' + (c2 ? '?cursor=' + encodeURIComponent(c2) : '')));
  };
  render(r);
  return h('div', pageHead('Applications'), form, created, h('section', h('h2', 'Applications'), list));
}

// ==== operator: every webhook ====

const allState = {cursors: [''], app: ''};

async function allWebhooksPage(params) {
  const app = params.get('app') || '';
  if (app !== allState.app) {
    allState.app = app;
    allState.cursors = [''];
  }
  const c = allState.cursors[allState.cursors.length - 1];
  const q = new URLSearchParams({limit: String(PAGE)});
  if (c) q.set('cursor', c);
  if (app) q.set('applicationId', app);
  const t0 = performance.now();
  const r = await api('GET', '/admin/v1/webhooks?' + q);
  const rows = r.webhooks.map((w) => h('tr',
    h('td', h('code.id', w.id)), h('td', h('code.id', w.applicationId)),
    h('td', `${w.objectType} ${w.objectId}`), h('td.url', w.callbackUrl),
    h('td', activePill(w.active)), h('td', healthCell(w.health)),
    h(w.health && w.health.lastError ? 'td.err' : 'td', (w.health && w.health.lastError) || '—')));
  const appIn = h('input', {value: app, placeholder: 'application id'});
  const filter = h('form.filters', {on: {submit: (ev) => {
    ev.preventDefault();
    location.hash = '#/all-webhooks' + (appIn.value.trim() ? '?app=' + encodeURIComponent(appIn.value.trim()) : '');
  }}}, field('Application', appIn), h('button.btn', {type: 'submit'}, 'Filter'));
  return h('div', pageHead('All webhooks'),
    h('p.muted', 'Health: attempts of the last 24 hours. To change a webhook, sign in as its application.'),
    filter,
    table(['Webhook', 'Application', 'Subscribed to', 'Callback URL', 'State', 'Success (24 h)', 'Last error'],
      rows, 'No webhook.'),
    pager(allState, r.nextCursor || null, () => route()),
    h('p.muted.small', {'data-loaded-ms': String(Math.round(performance.now() - t0))},
      `${r.webhooks.length} shown`));
}

// ==== connector: webhooks ====

const hookState = {page: 0};

function webhookForm(w, onDone) {
  const editing = !!w;
  const otype = h('select', ['Group', 'Action', 'ActionPackage'].map((t) =>
    h('option', {value: t, selected: w && w.objectType === t}, t)));
  const oid = h('input', {required: true, value: w ? w.objectId : ''});
  const url = h('input', {type: 'url', required: true, value: w ? w.callbackUrl : '',
    placeholder: 'https://example.com/kaizala'});
  const token = h('input', {value: (w && w.callbackToken) || ''});
  const context = h('input', {value: (w && w.callBackContext) || ''});
  const events = h('fieldset.events', h('legend', 'Event types'),
    EVENT_TYPES.map((t) => h('label.check', h('input', {type: 'checkbox', value: t,
      checked: w ? (w.events || []).includes(t) : t === 'SurveyResponse'}), ' ' + t)));
  const headers = h('textarea', {rows: 3, placeholder: 'X-Team: payments',
    value: w && w.headers ? Object.entries(w.headers).map(([k, v]) => `${k}: ${v}`).join('\n') : ''});
  const filter = h('textarea', {rows: 3, placeholder: '{"data.amount": {"$gt": 100}}',
    value: w && w.filter && Object.keys(w.filter).length ? JSON.stringify(w.filter, null, 2) : ''});
  const out = h('div');
  const form = h('form.panel', {on: {submit: async (ev) => {
    ev.preventDefault();
    clear(out);
    const body = {objectType: otype.value, objectId: oid.value.trim(), callBackUrl: url.value.trim(),
      eventTypes: [...events.querySelectorAll('input:checked')].map((i) => i.value)};
    if (token.value || editing) body.callBackToken = token.value;
    if (context.value || editing) body.callBackContext = context.value;
    try {
      const hs = {};
      for (const line of headers.value.split('\n')) {
        if (!line.trim()) continue;
        const i = line.indexOf(':');
        if (i < 1) throw new Error('headers: write one "Name: value" per line');
        hs[line.slice(0, i).trim()] = line.slice(i + 1).trim();
      }
      if (Object.keys(hs).length || editing) body.headers = hs;
      if (filter.value.trim()) body.filter = JSON.parse(filter.value);
      else if (editing) body.filter = {};
    } catch (e) {
      out.appendChild(errorBox(e));
      return;
    }
    const btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    out.appendChild(h('p.muted', editing ? 'Saving…' :
      'Checking the callback URL: kzhook sends it a validation token and waits for it back…'));
    try {
      const r = editing ? await api('PUT', '/v1/webhook/' + encodeURIComponent(w.id), body)
        : await api('POST', '/v1/webhook', body);
      clear(out);
      onDone(r, out);
    } catch (e) {
      clear(out);
      if (e.code === 'CallbackValidationFailed') {
        out.appendChild(h('div.alert.alert-bad', {role: 'alert'},
          h('strong', 'Handshake failed: nothing was saved.'),
          h('p', 'kzhook called your URL with ?validationToken=… and needs a 2xx answer whose body is exactly that token, within the validation timeout.'),
          h('p.err', e.message)));
      } else {
        out.appendChild(errorBox(e));
      }
    } finally {
      btn.disabled = false;
    }
  }}},
  h('h2', editing ? 'Edit webhook' : 'New webhook'),
  h('div.grid2', field('Object type', otype), field('Object id', oid, 'Group, action or action package id')),
  field('Callback URL', url, editing ? 'A changed URL is validated again (handshake).' : 'kzhook validates it first (handshake).'),
  events,
  h('div.grid2', field('Callback token', token, 'Sent as kz-callback-token.'),
    field('Callback context', context, 'Echoed in every delivery as "context".')),
  h('div.grid2', field('Extra headers', headers, 'One "Name: value" per line, sent with every delivery.'),
    field('Filter (JSON)', filter, 'Deliver only events matching every condition; empty = all.')),
  out, h('button.btn.btn-primary', {type: 'submit'}, editing ? 'Save' : 'Create and validate'));
  return form;
}

async function webhooksPage() {
  const r = await api('GET', '/v1/webhook');
  const all = r.webhooks;
  const pages = Math.max(1, Math.ceil(all.length / PAGE));
  if (hookState.page >= pages) hookState.page = pages - 1;
  const slice = all.slice(hookState.page * PAGE, (hookState.page + 1) * PAGE);
  const rows = slice.map((w) => h('tr',
    h('td', link(w.id, '/webhook/' + w.id, 'id')), h('td', `${w.objectType} ${w.objectId}`),
    h('td.url', w.callbackUrl), h('td', (w.events || []).join(', ')), h('td', activePill(w.active))));
  const created = h('div');
  const form = webhookForm(null, (res, out) => {
    out.appendChild(h('div.alert.alert-ok', {role: 'status'},
      h('strong', 'Handshake passed: your endpoint echoed the validation token. Webhook created.'),
      kv([['webhookId', link(res.webhookId, '/webhook/' + res.webhookId)],
        ['Signing secret', h('code.copy', res.signingSecret)]]),
      h('p.muted', 'Verify each delivery with the Standard Webhooks signature (webhook-signature).')));
  });
  const prev = button('← Previous', () => { hookState.page--; route(); });
  prev.disabled = hookState.page === 0;
  const next = button('Next →', () => { hookState.page++; route(); });
  next.disabled = hookState.page >= pages - 1;
  const toggle = h('details.panel', h('summary', 'New webhook'), form);
  return h('div', pageHead('Webhooks'), toggle, created,
    table(['Webhook', 'Subscribed to', 'Callback URL', 'Events', 'State'], rows,
      'No webhook yet: create one above.'),
    h('div.pager', prev, h('span.muted', `page ${hookState.page + 1} of ${pages} · ${all.length} webhooks`), next));
}

// ==== connector: one webhook, its deliveries ====

const dlvState = {id: '', status: '', cursors: ['']};

async function webhookPage(id) {
  const base = '/v1/webhook/' + encodeURIComponent(id);
  const w = await api('GET', base);
  let health = null;
  try {
    health = await api('GET', base + '/health');
  } catch (e) { /* shown as — */ }
  if (dlvState.id !== id) Object.assign(dlvState, {id, status: '', cursors: ['']});

  const secretOut = h('div');
  const actions = h('div.actions',
    button(w.active ? 'Disable' : 'Enable', (ev) => busy(ev.target, async () => {
      await api('PUT', base, {Active: !w.active});
      toast(w.active ? 'Webhook disabled' : 'Webhook enabled');
      route();
    })),
    button('Reveal secret', (ev) => busy(ev.target, async () => {
      const s = await api('GET', base + '/secret');
      clear(secretOut).appendChild(h('div.alert', kv([['Signing secret', h('code.copy', s.signingSecret)]])));
    })),
    button('Rotate secret', (ev) => busy(ev.target, async () => {
      const overlap = prompt('Keep the previous secret valid for (e.g. 24h, 1h, 0s):', '24h');
      if (overlap === null) return;
      const s = await api('POST', base + '/secret/rotate', {overlap: overlap.trim() || '24h'});
      clear(secretOut).appendChild(h('div.alert.alert-ok', {role: 'status'},
        h('strong', 'Secret rotated.'), kv([['New signing secret', h('code.copy', s.signingSecret)],
          ['Previous secret valid until', fmtTime(s.previousExpiresAt)]])));
    })),
    button('Delete', (ev) => busy(ev.target, async () => {
      if (!confirm('Delete this webhook? Nothing is delivered to it afterwards.')) return;
      await api('DELETE', base);
      toast('Webhook deleted');
      location.hash = '#/webhooks';
    }), 'btn-danger'));

  const testType = h('select', (w.events || []).map((t) => h('option', {value: t}, t)));
  const testData = h('textarea', {rows: 2, placeholder: '{"hello": "world"}'});
  const testOut = h('div');
  const test = h('form.panel', {on: {submit: async (ev) => {
    ev.preventDefault();
    clear(testOut);
    try {
      const body = {eventType: testType.value};
      if (testData.value.trim()) body.data = JSON.parse(testData.value);
      const r = await api('POST', base + '/test', body);
      testOut.appendChild(h('div.alert.alert-ok', {role: 'status'}, 'Test event queued: ',
        link('delivery ' + r.deliveryId, `/webhook/${id}/delivery/${r.deliveryId}`)));
    } catch (e) {
      testOut.appendChild(errorBox(e));
    }
  }}}, h('h2', 'Send a test event'), h('div.grid2', field('Event type', testType),
    field('Data (JSON, optional)', testData)), testOut,
  h('button.btn', {type: 'submit'}, 'Send test event'));

  const edit = h('details.panel', h('summary', 'Edit'), webhookForm(w, () => {
    toast('Webhook saved');
    route();
  }));

  const info = h('section.panel', kv([
    ['Webhook id', h('code.id', w.id)], ['State', activePill(w.active)],
    ['Subscribed to', `${w.objectType} ${w.objectId}`], ['Events', (w.events || []).join(', ')],
    ['Callback URL', h('span.url', w.callbackUrl)],
    w.headers && Object.keys(w.headers).length ? ['Extra headers', Object.entries(w.headers).map(([k, v]) => `${k}: ${v}`).join('; ')] : null,
    w.filter && Object.keys(w.filter).length ? ['Filter', h('code', JSON.stringify(w.filter))] : null,
    ['Created', fmtTime(w.ts)], ['Valid until', fmtTime(w.validity)],
    ['Success (24 h)', healthCell(health)],
    ['Failing since', health && health.failingSince ? fmtTime(health.failingSince) : '—'],
    ['Last error', health && health.lastError ? h('span.err', health.lastError) : '—'],
  ]));

  return h('div', pageHead('Webhook', link('← All webhooks', '/webhooks', 'btn')), info, actions,
    secretOut, edit, test, await deliveriesSection(id, base));
}

async function deliveriesSection(id, base) {
  const c = dlvState.cursors[dlvState.cursors.length - 1];
  const q = new URLSearchParams({limit: String(PAGE)});
  if (dlvState.status) q.set('status', dlvState.status);
  if (c) q.set('cursor', c);
  const t0 = performance.now();
  const r = await api('GET', base + '/deliveries?' + q);
  const ms = Math.round(performance.now() - t0);
  const status = h('select', ['', 'pending', 'succeeded', 'dead', 'skipped'].map((s) =>
    h('option', {value: s, selected: s === dlvState.status}, s || 'all')));
  status.addEventListener('change', () => {
    dlvState.status = status.value;
    dlvState.cursors = [''];
    route();
  });
  const since = h('input', {type: 'datetime-local', required: true});
  const replay = h('form.filters', {on: {submit: async (ev) => {
    ev.preventDefault();
    const t = new Date(since.value).getTime();
    if (!Number.isFinite(t)) return toast('Pick a time', true);
    try {
      const res = await api('POST', base + '/replay', {since: t});
      toast(`${res.requeued} deliveries queued again`);
      route();
    } catch (e) {
      toast(errorText(e), true);
    }
  }}}, field('Replay what did not succeed since', since), h('button.btn', {type: 'submit'}, 'Replay'));
  const rows = r.deliveries.map((d) => h('tr',
    h('td', link(String(d.deliveryId), `/webhook/${id}/delivery/${d.deliveryId}`, 'id')),
    h('td', d.eventType), h('td', statusPill(d.status)), h('td.num', String(d.attempts)),
    h('td', d.lastStatusCode ? String(d.lastStatusCode) : '—'), h(d.lastError ? 'td.err' : 'td', d.lastError || '—'),
    h('td', fmtTime(d.createdAt)),
    h('td', d.status === 'pending' ? fmtTime(d.nextAttemptAt) : '—')));
  return h('section', h('h2', 'Deliveries'),
    h('div.toolbar', field('Status', status), replay),
    table(['Delivery', 'Event type', 'Status', 'Attempts', 'Last status', 'Last error', 'Created', 'Next attempt'],
      rows, 'No delivery' + (dlvState.status ? ' with status ' + dlvState.status : '') + '.'),
    pager(dlvState, r.nextCursor || null, () => route()),
    h('p.muted.small', {'data-loaded-ms': String(ms)}, `${r.deliveries.length} shown`));
}

async function deliveryPage(id, did) {
  const base = `/v1/webhook/${encodeURIComponent(id)}/deliveries/${encodeURIComponent(did)}`;
  const d = await api('GET', base);
  const attempts = (d.attempts || []).map((a, i) => h('tr',
    h('td.num', String(i + 1)), h('td', fmtTime(a.at)),
    h('td.num', a.durationMs === null || a.durationMs === undefined ? '—' : a.durationMs + ' ms'),
    h('td', a.statusCode === null ? '—' : String(a.statusCode)), h(a.error ? 'td.err' : 'td', a.error || '—'),
    h('td', a.response === null || a.response === undefined ? '—' : h('pre.code.small', a.response))));
  return h('div', pageHead('Delivery ' + d.deliveryId,
    link('← Webhook', '/webhook/' + id, 'btn'),
    button('Retry now', (ev) => busy(ev.target, async () => {
      await api('POST', base + '/retry', {});
      toast('Delivery queued again');
      route();
    }), 'btn-primary')),
  h('section.panel', kv([
    ['Status', statusPill(d.status)], ['Event', `${d.eventType} · ${d.eventId}`],
    ['Attempts', String(Array.isArray(d.attempts) ? d.attempts.length : d.attempts)], ['Created', fmtTime(d.createdAt)],
    ['Next attempt', d.status === 'pending' ? fmtTime(d.nextAttemptAt) : '—'],
    ['Last status', d.lastStatusCode ? String(d.lastStatusCode) : '—'],
    ['Last error', d.lastError ? h('span.err', d.lastError) : '—']])),
  h('section', h('h2', 'Attempts'), table(['#', 'At', 'Duration', 'Status', 'Error', 'Response'],
    attempts, 'Not attempted yet.')),
  h('section', h('h2', 'Body as sent'), h('pre.code', d.body === undefined ? '—' : pretty(d.body))),
  h('section', h('h2', 'Event as published'), h('pre.code', d.event === undefined ? '—' : pretty(d.event))));
}

// ==== router ====

function nav(s) {
  const el = clear(document.getElementById('nav'));
  const who = clear(document.getElementById('who'));
  if (!s) return;
  const items = s.mode === 'operator'
    ? [['Overview', '/overview'], ['Applications', '/apps'], ['All webhooks', '/all-webhooks']]
    : [['Webhooks', '/webhooks']];
  const cur = location.hash.slice(1).split('?')[0];
  for (const [t, p] of items) {
    const a = link(t, p, 'nav-a');
    if (cur === p || (p === '/webhooks' && cur.startsWith('/webhook'))) a.setAttribute('aria-current', 'page');
    el.appendChild(a);
  }
  append(who, [h('span.muted', s.mode === 'operator' ? 'Operator' : 'App ' + s.applicationId.slice(0, 8)),
    button('Sign out', () => { logout(); go('#/'); }, 'btn-small')]);
}

async function route() {
  clearTimeout(refreshTimer);
  const s = getSession();
  nav(s);
  const [path, qs] = location.hash.slice(1).split('?');
  const params = new URLSearchParams(qs || '');
  const parts = (path || '').split('/').filter(Boolean);
  let view;
  try {
    if (!s) {
      view = loginPage();
    } else if (s.mode === 'operator') {
      if (parts[0] === 'apps') view = await appsPage();
      else if (parts[0] === 'all-webhooks') view = await allWebhooksPage(params);
      else view = await overviewPage();
    } else if (parts[0] === 'webhook' && parts[2] === 'delivery') {
      view = await deliveryPage(parts[1], parts[3]);
    } else if (parts[0] === 'webhook' && parts[1]) {
      view = await webhookPage(parts[1]);
    } else {
      view = await webhooksPage();
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      logout();
      nav(null);
      view = h('div', errorBox(e), loginPage());
    } else {
      view = h('div', errorBox(e), h('p', link('Back', s && s.mode === 'operator' ? '/overview' : '/webhooks')));
    }
  }
  clear(main).appendChild(view);
  document.body.dataset.ready = String(Date.now());
}

window.addEventListener('hashchange', () => route());
loadSession();
route();
