// The demo page: calls the JSON API with the session cookie (HttpOnly, so
// this script never sees it) and renders the session's history. All data is
// rendered as text, never as HTML.
'use strict';

const HISTORY_LIMIT = 200;
// The page's own refresh calls: hidden from the timeline unless asked.
const PAGE_READS = new Set(['/api/me', '/api/history', '/api/sessions', '/api/csrf']);
const LIFECYCLE = new Set(['started', 'rotated', 'privilege_changed', 'ended', 'suspicious', 'gap']);
const LIFECYCLE_TITLES = {
  started: 'Session started',
  rotated: 'Token rotated',
  privilege_changed: 'Privilege changed',
  ended: 'Session ended',
  suspicious: 'Suspicious use',
  gap: 'Entries lost',
};
// What each kind of chain break means, for people.
const BREAKS = {
  malformed: 'the entry cannot be decoded',
  unknown_key: 'signed with a key this server does not know',
  bad_tag: 'modified: its MAC does not match its contents',
  missing: 'entries before it are missing',
  out_of_order: 'out of order',
  duplicate: 'a duplicate of another entry',
  broken_link: 'it does not link to the entry before it',
  truncated_tail: 'newer entries that a signed checkpoint attests were cut off',
  missing_history: 'a signed checkpoint attests a history that is gone',
  replaced: 'not the entry a signed checkpoint attests at this place',
};
// Fields every entry has; anything else is shown as a detail.
const COMMON = new Set(['seq', 'ts', 'kind', 'id', 'key', 'prev', 'mac']);

const state = { me: null, history: null, sessions: [], seen: new Set(), first: true };

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// The session's CSRF token, fetched fresh before every unsafe request: it
// changes whenever the session's token rotates (login, elevate).
async function csrfToken() {
  const res = await fetch('/api/csrf', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (!res.ok) return null;
  return (await res.json()).token;
}

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (!['GET', 'HEAD'].includes(method)) {
    const token = await csrfToken();
    if (token) init.headers['X-CSRF-Token'] = token;
  }
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  if (res.status !== 204) {
    const text = await res.text();
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  }
  return { status: res.status, ok: res.ok, data, res };
}

function toast(message, kind) {
  const t = el('div', { class: 'toast' + (kind === 'error' ? ' error' : ''), text: message });
  $('toasts').append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 5000 : 2600);
}

function fail(r) {
  const msg = r && r.data && r.data.error ? r.data.error : `request failed (${r ? r.status : 'network'})`;
  toast(msg, 'error');
}

// ---------------------------------------------------------------- formatting

function short(id) {
  return typeof id === 'string' && id.length > 12 ? id.slice(0, 8) + '…' : String(id ?? '');
}

function clock(ts) {
  const d = new Date(ts);
  return isNaN(d) ? String(ts) : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function ago(ts) {
  const s = Math.round((Date.now() - new Date(ts).getTime()) / 1000);
  if (!isFinite(s)) return '';
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

function value(v) {
  if (v === null || v === undefined) return 'none';
  if (typeof v === 'string') return v.length > 24 && /^[0-9a-f]+$/.test(v) ? short(v) : v;
  return JSON.stringify(v);
}

function kv(k, v) {
  return el('span', { class: 'kv' }, `${k} `, el('b', { text: value(v) }));
}

// ----------------------------------------------------------------- rendering

function renderWho() {
  const who = $('who');
  who.textContent = '';
  if (state.me) {
    who.append('Signed in as ', el('b', { text: state.me.user }), ` · ${state.me.privilege || 'no privilege'}`);
  } else if (state.history && state.history.session) {
    who.append('Anonymous session ', el('b', { class: 'mono', text: short(state.history.session) }));
  } else {
    who.textContent = 'Anonymous visitor · no session';
  }
  $('account-anon').hidden = !!state.me;
  $('account-user').hidden = !state.me;
  if (state.me) {
    $('me-user').textContent = state.me.user;
    const p = $('me-privilege');
    p.textContent = state.me.privilege || 'none';
    p.className = 'tag' + (state.me.privilege === 'admin' ? ' admin' : '');
    $('me-visits').textContent = state.me.visits;
  }
  for (const b of document.querySelectorAll('[data-needs-user]')) b.disabled = !state.me;
  $('doc-cookie').textContent = JSON.stringify(document.cookie);
}

function renderSessions() {
  const list = $('sessions');
  list.textContent = '';
  if (!state.me) {
    list.append(el('li', { class: 'empty', text: 'Log in to see your sessions.' }));
    return;
  }
  for (const s of state.sessions) {
    list.append(el('li', { class: s.current ? 'current' : '', 'data-session': s.session },
      el('div', {},
        el('div', { class: 'device' }, s.device || 'unknown device', s.current ? el('span', { class: 'tag', text: 'this browser' }) : null),
        el('div', { class: 'times', title: `${s.created} · ${s.last_seen}` },
          `started ${clock(s.created)} · last seen ${ago(s.last_seen)} · `, el('span', { class: 'mono', text: short(s.session) }))),
      el('button', {
        class: 'btn small danger', 'data-testid': 'revoke',
        onclick: () => act(() => revoke(s)),
        text: s.current ? 'Log out' : 'Revoke',
      })));
  }
}

function renderStats(s) {
  if (!s) return;
  for (const k of ['queued', 'written', 'retried', 'dropped']) $('stat-' + k).textContent = s[k];
}

function renderChain() {
  const badge = $('chain');
  const h = state.history;
  if (!h || !h.session) {
    badge.className = 'badge neutral';
    badge.dataset.ok = '';
    badge.textContent = 'No session yet';
    return;
  }
  const ok = h.chain && h.chain.ok;
  badge.dataset.ok = String(!!ok);
  if (ok) {
    badge.className = 'badge ok';
    const n = h.entries.length;
    const cp = h.chain.checkpointed;
    badge.textContent = `Chain verified · ${n} entr${n === 1 ? 'y' : 'ies'}`
      + (cp ? ` · checkpointed up to #${cp}` : '');
    badge.title = 'Every entry\'s HMAC, its link to the previous entry and its sequence number check out.'
      + (cp ? ` A signed checkpoint attests the history up to #${cp}: nothing up to there was cut off.` : '');
  } else {
    badge.className = 'badge bad';
    const first = (h.chain && h.chain.breaks && h.chain.breaks[0]) || null;
    let where = first && first.seq ? ` at #${first.seq}` : '';
    if (first && first.kind === 'truncated_tail') where = ': its newest entries were cut off';
    if (first && first.kind === 'missing_history') where = ': the history was deleted';
    badge.textContent = `Chain broken${where}`;
    badge.title = (h.chain && h.chain.error) || 'the chain does not verify';
  }
}

function entryView(e, breaks) {
  const lifecycle = LIFECYCLE.has(e.kind);
  const cls = ['entry', lifecycle ? 'lifecycle' : e.kind, 'k-' + e.kind];
  const broken = breaks.get(e.seq);
  if (broken) cls.push('broken');
  if (!state.first && !state.seen.has(e.id)) cls.push('fresh');
  const line1 = el('div', { class: 'line1' }, el('span', { class: 'seq', text: '#' + e.seq }));
  const detail = el('div', { class: 'detail' });
  if (e.kind === 'request') {
    const s = Number(e.status);
    line1.append(
      el('span', { class: 'chip m-' + e.method, text: e.method }),
      el('span', { class: 'title', text: e.path }),
      el('span', { class: 'status s' + Math.floor(s / 100), text: String(e.status) }),
      typeof e.latency_us === 'number' ? el('span', { class: 'latency', text: `${(e.latency_us / 1000).toFixed(1)} ms` }) : null);
  } else if (e.kind === 'event') {
    line1.append(el('span', { class: 'chip', text: 'event' }), el('span', { class: 'title', text: e.event }));
    if (e.data && typeof e.data === 'object' && !Array.isArray(e.data)) {
      for (const [k, v] of Object.entries(e.data)) detail.append(kv(k, v));
    } else if (e.data !== undefined) {
      detail.append(kv('data', e.data));
    }
  } else {
    line1.append(el('span', { class: 'chip', text: e.kind.replace('_', ' ') }),
      el('span', { class: 'title', text: LIFECYCLE_TITLES[e.kind] || e.kind }));
    // from_x / to_x pairs read as "x: a → b" (users are keyed pseudonyms).
    const pairs = new Set();
    for (const k of Object.keys(e)) {
      const m = /^(?:from|to)_(.+)$/.exec(k);
      if (m) pairs.add(m[1]);
    }
    for (const p of pairs) {
      const from = e['from_' + p];
      const to = e['to_' + p];
      if (JSON.stringify(from) === JSON.stringify(to)) continue;
      detail.append(kv(p, `${value(from)} → ${value(to)}`));
    }
    for (const [k, v] of Object.entries(e)) {
      if (COMMON.has(k) || /^(?:from|to)_/.test(k)) continue;
      if (v === null || v === undefined) continue;
      detail.append(kv(k.replace('_', ' '), v));
    }
  }
  line1.append(el('span', { class: 'time', title: e.ts, text: clock(e.ts) }));
  const box = el('div', { class: 'box' }, line1, detail.childElementCount ? detail : null,
    broken ? el('div', { class: 'break', text: 'Chain break — ' + broken }) : null);
  return el('li', {
    class: cls.join(' '), 'data-kind': e.kind, 'data-seq': e.seq,
    'data-event': e.event || null, 'data-path': e.path || null,
  }, el('span', { class: 'dot' }), box);
}

function renderTimeline() {
  const list = $('timeline');
  list.textContent = '';
  const h = state.history;
  const entries = (h && h.entries) || [];
  const breaks = new Map();
  for (const b of (h && h.chain && h.chain.breaks) || []) {
    if (b.seq !== undefined && b.seq !== null && !breaks.has(b.seq)) breaks.set(b.seq, BREAKS[b.kind] || b.text || b.kind);
  }
  const hide = $('hide-reads').checked;
  let hidden = 0;
  for (const e of entries) {
    if (hide && e.kind === 'request' && e.method === 'GET' && PAGE_READS.has(e.path) && !breaks.has(e.seq)) {
      hidden++;
      continue;
    }
    list.append(entryView(e, breaks));
  }
  for (const e of entries) state.seen.add(e.id);
  state.first = false;
  $('hidden-count').textContent = hidden ? `${hidden} hidden` : '';
  $('timeline-empty').hidden = entries.length > 0;
  $('session-id').textContent = h && h.session ? `session ${h.session}` : '';
}

// ------------------------------------------------------------------- actions

async function refresh() {
  const [me, history, stats] = await Promise.all([
    api('GET', '/api/me'),
    api('GET', `/api/history?limit=${HISTORY_LIMIT}`),
    api('GET', '/api/stats'),
  ]);
  state.me = me.ok ? me.data : null;
  if (!me.ok && me.status !== 401) fail(me);
  state.history = history.ok ? history.data : null;
  if (!history.ok) fail(history);
  state.sessions = [];
  if (state.me) {
    const s = await api('GET', '/api/sessions');
    if (s.ok) state.sessions = s.data; else if (s.status !== 401) fail(s);
  }
  renderWho();
  renderSessions();
  renderStats(stats.ok ? stats.data : null);
  renderChain();
  renderTimeline();
  document.body.dataset.ready = 'true';
}

let busy = false;
async function act(fn) {
  if (busy) return;
  busy = true;
  document.body.dataset.ready = 'false';
  for (const b of document.querySelectorAll('button')) {
    b.dataset.wasDisabled = String(b.disabled);
    b.disabled = true;
  }
  try {
    await fn();
  } catch (e) {
    toast(String(e), 'error');
  } finally {
    for (const b of document.querySelectorAll('button')) b.disabled = b.dataset.wasDisabled === 'true';
    busy = false;
    await refresh().catch((e) => toast(String(e), 'error'));
  }
}

async function login(user, password) {
  const r = await api('POST', '/api/login', { user, password });
  if (r.ok) toast(`Logged in as ${r.data.user} — new token issued`); else fail(r);
}

async function revoke(s) {
  const r = await api('DELETE', `/api/sessions/${encodeURIComponent(s.session)}`);
  if (r.ok) toast(s.current ? 'This session was ended' : 'Session revoked'); else fail(r);
}

async function exportHistory() {
  const r = await fetch('/api/export', { credentials: 'same-origin' });
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch { /* not JSON */ }
    fail({ status: r.status, data });
    return;
  }
  const blob = await r.blob();
  const lines = (await blob.text()).split('\n').filter(Boolean).length;
  const a = el('a', { href: URL.createObjectURL(blob), download: 'session-history.ndjson' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  toast(`Exported ${lines} entr${lines === 1 ? 'y' : 'ies'}`);
}

let eraseArmed = null;
function armErase(button) {
  // Two clicks instead of a modal dialog: the second, within 4 s, erases.
  if (eraseArmed) return true;
  button.classList.add('armed');
  button.textContent = 'Click again to erase';
  eraseArmed = setTimeout(() => {
    eraseArmed = null;
    button.classList.remove('armed');
    button.textContent = 'Erase';
  }, 4000);
  return false;
}

const ACTIONS = {
  login: (b) => act(() => login(b.dataset.user, `${b.dataset.user}-pw`)),
  logout: () => act(async () => {
    const r = await api('POST', '/api/logout');
    if (r.ok) toast('Logged out: the session ended and the cookie was cleared'); else fail(r);
  }),
  elevate: () => act(async () => {
    const r = await api('POST', '/api/elevate');
    if (r.ok) toast('You are admin now — the token rotated'); else fail(r);
  }),
  cart: () => act(async () => {
    const item = document.querySelector('input[name=item]:checked').value;
    const r = await api('POST', '/api/cart', { item });
    if (r.ok) toast(`Added ${item} · ${r.data.items} in the cart`); else fail(r);
  }),
  visit: () => act(async () => {
    const r = await api('GET', '/api/visits');
    if (r.ok) toast(`Visit ${r.data.visits}`); else fail(r);
  }),
  export: () => act(exportHistory),
  erase: (b) => {
    if (!armErase(b)) return;
    clearTimeout(eraseArmed);
    eraseArmed = null;
    b.classList.remove('armed');
    b.textContent = 'Erase';
    act(async () => {
      const r = await api('DELETE', '/api/history');
      if (r.ok) toast('All your history was erased'); else fail(r);
    });
  },
  refresh: () => act(async () => {}),
};

document.addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-action]');
  if (!b || b.disabled) return;
  const f = ACTIONS[b.dataset.action];
  if (f) f(b);
});

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    act(() => login(String(f.get('user')), String(f.get('password'))));
  });
  $('hide-reads').addEventListener('change', renderTimeline);
  refresh().catch((e) => toast(String(e), 'error'));
});
