// dom.js — building the page. Every string that comes from the API (names, URLs, errors,
// response bodies, event data) goes in as text (textContent / text nodes), never as HTML: the
// console has no innerHTML anywhere.

// h('tag.class1.class2', {attr: value, on: {click: fn}}, child, ...): children are nodes,
// strings (text nodes), numbers, null/false (skipped) or arrays of those.
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'on') {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'text') {
      el.textContent = String(v);
    } else if (k === 'value') {
      el.value = v;
    } else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'required') {
      el[k] = !!v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined || ms === 0) return '—';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function fmtAgo(ms) {
  if (!ms) return '—';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 0) return 'in ' + fmtDur(-s);
  return fmtDur(s) + ' ago';
}

function fmtDur(s) {
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.round(s / 60) + ' min';
  if (s < 86400) return Math.round(s / 360) / 10 + ' h';
  return Math.round(s / 8640) / 10 + ' d';
}

export function fmtRate(r) {
  if (r === null || r === undefined) return '—';
  return (Math.floor(r * 1000) / 10).toFixed(1) + ' %';
}

// A JSON text shown pretty when it parses, as is otherwise.
export function pretty(text) {
  if (typeof text !== 'string') return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (e) {
    return text;
  }
}

// A status pill: kind is one of ok, bad, warn, off, info.
export function pill(text, kind) {
  return h('span.pill.pill-' + (kind || 'info'), text);
}

export function field(label, input, hint) {
  const id = 'f-' + Math.random().toString(36).slice(2, 9);
  input.id = id;
  return h('div.field', h('label', {for: id}, label), input, hint ? h('div.hint', hint) : null);
}

export function table(head, rows, empty) {
  if (!rows.length) return h('p.empty', empty || 'Nothing here yet.');
  return h('div.table-wrap', h('table',
    h('thead', h('tr', head.map((c) => h('th', {scope: 'col'}, c)))),
    h('tbody', rows)));
}

let toastTimer = null;
export function toast(msg, bad) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = 'toast show' + (bad ? ' toast-bad' : '');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = 'toast'; }, 4000);
}
