// The sxds status page: polls GET /status and GET /writes and redraws.
// Node ids, versions and NACK messages come from Envoys and clients: they
// enter the page only as text (textContent, Text nodes), never as markup.
'use strict';

const POLL_MS = 1500;
const FETCH_TIMEOUT_MS = 5000;
const TYPES = ['clusters', 'endpoints', 'listeners', 'routes'];

const $ = (id) => document.getElementById(id);
const filter = { nodeType: '', q: '', page: 1 };
let lastPages = 1;
let timer = 0;
let inFlight = false;
let again = false;

// An element with a class and children; strings become Text nodes.
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children.filter((c) => c !== null && c !== undefined).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

const count = (n) => Number(n).toLocaleString();
const num = (n, className) => el('td', 'num' + (className && n > 0 ? ' ' + className : ''), count(n));
const clock = (ms) => new Date(ms).toLocaleTimeString();
const plural = (n, word) => `${count(n)} ${word}${n === 1 ? '' : 's'}`;

async function getJson(path) {
  const response = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  const body = response.headers.get('content-type')?.startsWith('application/json') ? await response.json() : null;
  return { status: response.status, body };
}

function statusPath() {
  const params = new URLSearchParams({ page: String(filter.page) });
  if (filter.nodeType) params.set('node_type', filter.nodeType);
  if (filter.q) params.set('q', filter.q);
  return '/status?' + params;
}

function renderNodeTypes(nodeTypes) {
  const rows = nodeTypes.map((t) => {
    const pick = el('button', 'link', t.node_type);
    pick.type = 'button';
    pick.title = 'Show only ' + t.node_type;
    pick.addEventListener('click', () => setFilter({ nodeType: t.node_type }));
    const resources = t.resources ?? {};
    const row = el('tr', null,
      el('td', 'id', pick),
      el('td', t.version === null ? 'muted' : null, t.version ?? 'no bundle'),
      ...['listeners', 'clusters', 'routes', 'endpoints'].map((k) => el('td', 'num', k in resources ? count(resources[k]) : '–')),
      num(t.streams), num(t.acked, 'ok'), num(t.pending, 'pending'), num(t.nacking, 'nack'));
    row.dataset.nodeType = t.node_type;
    return row;
  });
  $('node-types').tBodies[0].replaceChildren(...rows);
  $('node-types-empty').hidden = rows.length > 0;

  // Rebuild the choices only when they change, so an open menu stays open.
  const select = $('filter-type');
  const names = nodeTypes.map((t) => t.node_type);
  if (filter.nodeType && !names.includes(filter.nodeType)) names.push(filter.nodeType);
  const current = [...select.options].slice(1).map((o) => o.value);
  if (current.join('\n') !== names.join('\n')) {
    select.replaceChildren(new Option('all', ''), ...names.map((n) => new Option(n, n)));
  }
  select.value = filter.nodeType;
}

// The types of a stream whose last answer was a NACK.
const rejections = (stream) => TYPES.filter((ty) => stream.types[ty]?.rejected).map((ty) => [ty, stream.types[ty]]);

function renderNacks(nacking) {
  $('nacks').hidden = nacking.total === 0;
  $('nacks-count').textContent = count(nacking.total);
  const items = nacking.items.flatMap((stream) => rejections(stream).map(([ty, status]) => {
    const what = el('div', null,
      el('strong', 'id', stream.node_id), ` · ${ty} · NACK of ${status.rejected.version ?? 'nothing'} at ${clock(status.rejected.at_unix_ms)}`,
      ` · last sent ${status.sent_version ?? 'nothing'} · holds ${status.acked_version ?? 'nothing'}`);
    return el('li', null, what, el('pre', 'nack', status.rejected.error));
  }));
  $('nack-list').replaceChildren(...items);
  const more = nacking.total - nacking.items.length;
  $('nacks-more').hidden = more <= 0;
  $('nacks-more').textContent = `and ${plural(more, 'more NACKing stream')} (filter by node type or id to see them)`;
}

function typeCell(status) {
  if (!status) return el('td', 'muted', '–');
  const sent = status.sent_version ?? '–';
  if (status.rejected) {
    const cell = el('td', 'nack', `✗ ${status.rejected.version ?? sent}`, el('span', 'muted', ` holds ${status.acked_version ?? 'nothing'}`));
    cell.title = status.rejected.error;
    return cell;
  }
  if (status.sent_version !== null && status.sent_version === status.acked_version) return el('td', 'ok', `✓ ${sent}`);
  return el('td', 'pending', `… ${sent}`, el('span', 'muted', ` holds ${status.acked_version ?? 'nothing'}`));
}

const STATE_CLASS = { acked: 'ok', pending: 'pending', nacking: 'nack' };

function renderStreams(page, connected) {
  const rows = page.items.map((s) => {
    const connectedAt = el('td', null, clock(s.connected_at_unix_ms));
    connectedAt.title = new Date(s.connected_at_unix_ms).toString();
    return el('tr', null,
      el('td', 'id', s.node_id), el('td', null, s.node_type), el('td', null, s.service), connectedAt,
      el('td', STATE_CLASS[s.state], s.state), ...TYPES.map((ty) => typeCell(s.types[ty])));
  });
  $('streams').tBodies[0].replaceChildren(...rows);
  lastPages = Math.max(1, Math.ceil(page.total / page.per_page));
  // Streams left since the page was chosen: go to the last one there is.
  if (page.items.length === 0 && page.page > lastPages) { filter.page = lastPages; again = true; }
  const first = page.total === 0 ? 0 : Math.min(page.total, (page.page - 1) * page.per_page + 1);
  const last = Math.min(page.total, page.page * page.per_page);
  const filtered = page.total === connected ? '' : ` (${count(connected)} connected)`;
  $('page-info').textContent = `${count(first)}–${count(last)} of ${count(page.total)}${filtered} · page ${count(page.page)} of ${count(lastPages)}`;
  $('prev').disabled = page.page <= 1;
  $('next').disabled = page.page >= lastPages;
}

function renderWrites({ status, body }) {
  const note = $('writes-note');
  const ok = status === 200 && Array.isArray(body?.writes);
  $('writes').hidden = !ok || body.writes.length === 0;
  note.hidden = ok && body.writes.length > 0;
  if (!ok) {
    note.textContent = status === 404 ? 'This sxds keeps no write history (GET /writes answered 404).'
      : `Write history unavailable (GET /writes answered ${status}).`;
    return;
  }
  note.textContent = 'No writes yet.';
  const version = (w) => `${w.old_version ?? '∅'} → ${w.new_version ?? '∅'}`;
  const rows = body.writes.map((w) => {
    const at = el('td', null, clock(w.at_unix_ms));
    at.title = new Date(w.at_unix_ms).toString();
    return el('tr', null, at, el('td', 'id', w.who), el('td', null, w.action), el('td', null, w.node_type),
      el('td', 'id', version(w)), num(w.added), num(w.changed), num(w.removed));
  });
  $('writes').tBodies[0].replaceChildren(...rows);
}

function renderHealth(error, summary) {
  const health = $('health');
  health.classList.toggle('error', Boolean(error));
  health.textContent = error
    ? `not updated: ${error}; retrying`
    : `${plural(summary.streams_connected, 'Envoy stream')} connected · updated ${clock(Date.now())}`;
}

async function refresh() {
  clearTimeout(timer);
  if (inFlight) { again = true; return; }
  // A hidden tab asks nothing; it catches up when shown again.
  if (document.hidden) return;
  inFlight = true;
  try {
    const [status, writes] = await Promise.all([getJson(statusPath()), getJson('/writes').catch((error) => ({ status: error.name }))]);
    if (status.status !== 200 || !status.body) throw new Error(status.body?.error ?? `GET /status answered ${status.status}`);
    const summary = status.body;
    renderNodeTypes(summary.node_types);
    renderNacks(summary.nacking);
    renderStreams(summary.streams, summary.streams_connected);
    renderWrites(writes);
    renderHealth(null, summary);
  } catch (error) {
    renderHealth(error.message || String(error));
  } finally {
    inFlight = false;
    timer = setTimeout(refresh, again ? 0 : POLL_MS);
    again = false;
  }
}

function setFilter(change) {
  Object.assign(filter, { page: 1 }, change);
  refresh();
}

let typing = 0;
$('filter-q').addEventListener('input', (event) => {
  clearTimeout(typing);
  typing = setTimeout(() => setFilter({ q: event.target.value.trim() }), 250);
});
$('filter-type').addEventListener('change', (event) => setFilter({ nodeType: event.target.value }));
$('prev').addEventListener('click', () => setFilter({ page: Math.max(1, filter.page - 1) }));
$('next').addEventListener('click', () => setFilter({ page: Math.min(lastPages, filter.page + 1) }));
document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
refresh();
