// The store's web page: search with a histogram over the whole time range, live tail, and the
// sources' status, all through the query API (/api/search, /api/sql, /api/tail, /api/sources)
// with the token the person gives. It keeps nothing but that token (in sessionStorage, for this
// tab only), masks nothing itself (values appear as the API returns them for the token's roles)
// and loads nothing from anywhere but this store.
'use strict';

const TOKEN_KEY = 'sluice.token';
/// How often the sources panel asks /api/sources.
const SOURCES_REFRESH_MS = 3000;
/// Bars of the histogram.
const HISTOGRAM_BUCKETS = 60;
/// The API's largest search `limit`; a search that reaches it was cut.
const SEARCH_LIMIT_MAX = 10000;
/// A value longer than this is cut in the table; a click on the row shows the whole event.
const VALUE_CHARS_MAX = 120;
/// Rows the live tail keeps on the page (newest first).
const TAIL_ROWS_MAX = 200;
/// How often the tail's new rows are put on the page.
const TAIL_RENDER_MS = 200;
/// Retries of a request answered 429 (too many queries at once), after its Retry-After.
const BUSY_RETRIES = 10;
/// Keys shown in their own columns or only in the full event.
const KEYS_NOT_IN_FIELDS = new Set([
  'time_ns', 'sluice_source', 'sluice_id', 'sluice_stream', 'sluice_received_ns', 'sluice_seq',
]);
const UNIT_MS = { s: 1000n, m: 60000n, h: 3600000n, d: 86400000n, w: 604800000n };
const NS_PER_MS = 1000000n;
/// The SVG namespace: a name, never fetched.
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

let token = '';
/// Bumped by every search: answers of an older one are not shown.
let searchGeneration = 0;
let tail = null;

class ApiFailure extends Error {
  constructor(status, message, position) {
    super(message);
    this.status = status;
    this.position = position;
  }
}

/// JSON with integers beyond 2^53 kept exact (as BigInt): times in ns, masked pii_* integers.
function parseJson(text) {
  return JSON.parse(text, (key, value, context) => {
    if (typeof value === 'number' && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
      return BigInt(context.source);
    }
    return value;
  });
}

function toJson(value) {
  return JSON.stringify(value, (key, v) => {
    if (typeof v !== 'bigint') return v;
    return typeof JSON.rawJSON === 'function' ? JSON.rawJSON(v.toString()) : v.toString();
  }, 2);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function authHeaders(extra) {
  return Object.assign({ Authorization: 'Bearer ' + token }, extra || {});
}

/// An API call answered in JSON; throws ApiFailure with the API's own message.
async function api(path, options) {
  const opts = options || {};
  for (let attempt = 0; ; attempt++) {
    const r = await fetch(path, {
      method: opts.method || 'GET',
      headers: authHeaders(Object.assign({ Accept: 'application/json' }, opts.headers || {})),
      body: opts.body,
      cache: 'no-store',
    });
    if (r.status === 429 && attempt < BUSY_RETRIES) {
      await sleep(1000 * (Number(r.headers.get('Retry-After')) || 1));
      continue;
    }
    const text = await r.text();
    let body = null;
    try {
      body = parseJson(text);
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const message = body && typeof body.error === 'string' ? body.error : (text.trim() || r.statusText);
      throw new ApiFailure(r.status, message, body && typeof body.position === 'number' ? body.position : null);
    }
    return body;
  }
}

function sql(query) {
  return api('/api/sql', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ sql: query }),
  });
}

// ---- times -----------------------------------------------------------------------------

/// A since/until text as ns since the epoch (BigInt), by the API's rules: RFC 3339 (or a plain
/// date, meaning its midnight UTC), a whole number of s/m/h/d/w before now, or `now`. Null for
/// a text this page cannot read (the API then says what is wrong with it).
function resolveTime(text, nowMs) {
  const t = text.trim();
  if (t === 'now') return BigInt(nowMs) * NS_PER_MS;
  const rel = /^(\d+)([smhdw])$/.exec(t);
  if (rel) {
    const ms = BigInt(nowMs) - BigInt(rel[1]) * UNIT_MS[rel[2]];
    return ms < 0n ? 0n : ms * NS_PER_MS;
  }
  const date = /^(\d{4}-\d\d-\d\d)$/.exec(t);
  if (date) {
    const ms = Date.parse(date[1] + 'T00:00:00Z');
    return Number.isNaN(ms) || ms < 0 ? null : BigInt(ms) * NS_PER_MS;
  }
  const m = /^(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$/.exec(t);
  if (!m) return null;
  const ms = Date.parse(m[1] + 'T' + m[2] + (m[4] === 'z' ? 'Z' : m[4]));
  if (Number.isNaN(ms) || ms < 0) return null;
  const fraction = BigInt((m[3] || '').slice(0, 9).padEnd(9, '0'));
  return BigInt(ms) * NS_PER_MS + fraction;
}

/// ns since the epoch as RFC 3339 in UTC with nine digits of fraction.
function rfc3339(ns) {
  const seconds = new Date(Number(ns / 1000000000n) * 1000).toISOString().slice(0, 19);
  return seconds + '.' + (ns % 1000000000n).toString().padStart(9, '0') + 'Z';
}

/// An event's time for the table: UTC to the millisecond.
function showTime(ns) {
  if (ns === undefined || ns === null) return '';
  try {
    const iso = new Date(Number(BigInt(ns) / NS_PER_MS)).toISOString();
    return iso.slice(0, 10) + ' ' + iso.slice(11, 23);
  } catch (_) {
    return String(ns);
  }
}

// ---- rendering events ----------------------------------------------------------------

function showValue(v) {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  return toJson(v);
}

function cut(text) {
  const chars = Array.from(text);
  return chars.length > VALUE_CHARS_MAX ? chars.slice(0, VALUE_CHARS_MAX).join('') + '…' : text;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/// One event as a table row: time, source, then every other field as key=value.
function eventRow(row) {
  const tr = document.createElement('tr');
  if (typeof row.sluice_id === 'string') tr.dataset.id = row.sluice_id;
  tr.append(el('td', 'time', showTime(row.time_ns)), el('td', 'source', row.sluice_source ?? ''));
  const fields = el('td', 'fields');
  for (const [key, value] of Object.entries(row)) {
    if (KEYS_NOT_IN_FIELDS.has(key) || value === null) continue;
    const kv = el('span', 'kv');
    kv.dataset.key = key;
    const full = showValue(value);
    const v = el('span', key.toLowerCase().startsWith('pii_') ? 'v pii' : 'v', cut(full));
    if (full !== v.textContent) v.classList.add('cut');
    kv.append(el('span', 'k', key + '='), v);
    fields.append(kv);
  }
  tr.append(fields);
  tr.addEventListener('click', () => showDetail(row));
  return tr;
}

function showDetail(row) {
  $('detail-json').textContent = toJson(row);
  const d = $('detail');
  if (typeof d.showModal === 'function') d.showModal();
}

// ---- errors ----------------------------------------------------------------------------

function clearError() {
  $('error').hidden = true;
  $('error-message').textContent = '';
  $('error-caret').textContent = '';
}

/// An API error as it came, with a caret under the query's column when the API names one.
function showError(e, query) {
  $('error').hidden = false;
  const status = e instanceof ApiFailure ? e.status + ': ' : '';
  $('error-message').textContent = status + e.message;
  const caret = $('error-caret');
  caret.textContent = '';
  if (e instanceof ApiFailure && e.position !== null && query !== undefined) {
    caret.append(document.createTextNode(query + '\n'), el('span', 'caret', ' '.repeat(e.position) + '^'));
  }
}

// ---- search and histogram ----------------------------------------------------------------

async function runSearch() {
  clearError();
  const generation = ++searchGeneration;
  const q = $('q').value;
  const sinceText = $('since').value.trim() || '15m';
  const untilText = $('until').value.trim() || 'now';
  const now = Date.now();
  const since = resolveTime(sinceText, now);
  const until = resolveTime(untilText, now);
  // Absolute times go to the API, so that the rows and the histogram cover the same range.
  const params = new URLSearchParams({
    q,
    since: since === null ? sinceText : rfc3339(since),
    until: until === null ? untilText : rfc3339(until),
    limit: $('limit').value,
  });
  $('summary').textContent = 'searching…';
  $('results').dataset.state = 'loading';
  let answer;
  try {
    answer = await api('/api/search?' + params.toString());
  } catch (e) {
    if (generation !== searchGeneration) return;
    showError(e, q);
    // Rows of an earlier search would read as this one's answer.
    $('results').tBodies[0].replaceChildren();
    $('summary').textContent = '';
    $('results').dataset.state = 'failed';
    clearHistogram('');
    return;
  }
  if (generation !== searchGeneration) return;
  const body = $('results').tBodies[0];
  body.replaceChildren(...answer.rows.map(eventRow));
  const s = answer.stats || {};
  $('summary').textContent = answer.rows.length + (answer.truncated ? '+ events (the newest shown; raise rows or narrow the search)' : ' events')
    + ' · ' + (typeof s.elapsed_ms === 'number' ? s.elapsed_ms.toFixed(1) : '?') + ' ms · ' + (s.segments_read ?? 0) + ' segments read, ' + (s.segments_skipped ?? 0) + ' skipped';
  $('results').dataset.state = 'done';
  $('results').dataset.rows = String(answer.rows.length);
  if (since === null || until === null) {
    clearHistogram('(no histogram: the page cannot read this since/until)');
    return;
  }
  await drawHistogram(q, since, until, generation);
}

// ---- the quick-search language, far enough to count with SQL ----------------------------

/// The largest u64, for `field:N` on an integer field (a larger N matches nothing).
const U64_MAX = 18446744073709551615n;

/// `input` in the quick-search language as a tree, following sluice-query's grammar; null when it
/// holds a bare word or phrase (those match by tokens, which only the store applies) or cannot
/// be read here (the store has already said whether it is valid).
function parseQuery(input) {
  const toks = [];
  const chars = Array.from(input);
  let i = 0;
  const phrase = () => {
    let text = '';
    i += 1;
    while (i < chars.length && chars[i] !== '"') {
      if (chars[i] === '\\' && i + 1 < chars.length) i += 1;
      text += chars[i];
      i += 1;
    }
    if (i >= chars.length) throw new Error('unclosed phrase');
    i += 1;
    return text;
  };
  while (i < chars.length) {
    const c = chars[i];
    if (/\s/.test(c)) { i += 1; continue; }
    if (c === '(' || c === ')') { toks.push({ t: c }); i += 1; continue; }
    if (c === '"') { phrase(); toks.push({ t: 'word' }); continue; }
    if (c === '-') { toks.push({ t: 'NOT' }); i += 1; continue; }
    let word = '';
    while (i < chars.length && !/[\s()"]/.test(chars[i])) { word += chars[i]; i += 1; }
    const colon = word.indexOf(':');
    if (colon < 0) {
      toks.push(word === 'AND' || word === 'OR' || word === 'NOT' ? { t: word } : { t: 'word' });
      continue;
    }
    const field = word.slice(0, colon);
    let value = word.slice(colon + 1);
    if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(field)) throw new Error('not a field');
    if (value === '' && chars[i] === '"') {
      toks.push({ t: 'field', node: { k: 'term', field, text: phrase() } });
      continue;
    }
    const cmp = /^(>=|<=|>|<)(\d+)$/.exec(value);
    if (value === '*') toks.push({ t: 'field', node: { k: 'exists', field } });
    else if (cmp) toks.push({ t: 'field', node: { k: 'cmp', field, op: cmp[1], value: BigInt(cmp[2]) } });
    else if (value === '' || /^[<>*]/.test(value)) throw new Error('not a value');
    else toks.push({ t: 'field', node: { k: 'term', field, text: value } });
  }
  let p = 0;
  const peek = () => toks[p] && toks[p].t;
  const or = () => {
    const items = [and()];
    while (peek() === 'OR') { p += 1; items.push(and()); }
    return items.length === 1 ? items[0] : { k: 'or', items };
  };
  const and = () => {
    const items = [unary()];
    while (p < toks.length && peek() !== ')' && peek() !== 'OR') {
      if (peek() === 'AND') p += 1;
      items.push(unary());
    }
    return items.length === 1 ? items[0] : { k: 'and', items };
  };
  const unary = () => {
    if (peek() === 'NOT') { p += 1; return { k: 'not', inner: unary() }; }
    return primary();
  };
  const primary = () => {
    const tok = toks[p];
    p += 1;
    if (!tok) throw new Error('unexpected end');
    if (tok.t === '(') {
      const inner = or();
      if (peek() !== ')') throw new Error('unclosed (');
      p += 1;
      return inner;
    }
    if (tok.t === 'field') return tok.node;
    if (tok.t === 'word') return { k: 'word' };
    throw new Error('unexpected ' + tok.t);
  };
  if (toks.length === 0) return { k: 'all' };
  const tree = or();
  if (p !== toks.length) throw new Error('trailing input');
  return tree;
}

function quoteIdent(name) {
  return '"' + name.replace(/"/g, '""') + '"';
}

function quoteStr(text) {
  return "'" + text.replace(/'/g, "''") + "'";
}

/// A tree from parseQuery as a SQL condition by sluice-query's rules (`to_sql`): a field the
/// events do not have matches nothing, every leaf is never NULL. `types` maps a column to
/// 'string' or 'u64'. Null when the tree holds a bare word.
function querySql(node, types) {
  const TRUE = { c: true };
  const FALSE = { c: false };
  const notNull = (e) => ({ e: `COALESCE(${e}, FALSE)` });
  const render = (n) => {
    switch (n.k) {
      case 'all': return TRUE;
      case 'word': throw new Error('bare word');
      case 'term': {
        const type = types.get(n.field);
        if (type === 'string') return notNull(`${quoteIdent(n.field)} = ${quoteStr(n.text)}`);
        if (type === 'u64' && /^\d+$/.test(n.text) && BigInt(n.text) <= U64_MAX) {
          return notNull(`${quoteIdent(n.field)} = ${BigInt(n.text)}`);
        }
        return FALSE;
      }
      case 'cmp':
        return types.get(n.field) === 'u64' && n.value <= U64_MAX ? notNull(`${quoteIdent(n.field)} ${n.op} ${n.value}`) : FALSE;
      case 'exists':
        return types.has(n.field) ? { e: `(${quoteIdent(n.field)} IS NOT NULL)` } : FALSE;
      case 'not': {
        const inner = render(n.inner);
        return 'c' in inner ? { c: !inner.c } : { e: `NOT ${inner.e}` };
      }
      default: {
        const isAnd = n.k === 'and';
        const parts = [];
        for (const item of n.items) {
          const r = render(item);
          if ('c' in r) {
            if (r.c !== isAnd) return r;
            continue;
          }
          parts.push(r.e);
        }
        if (parts.length === 0) return isAnd ? TRUE : FALSE;
        return { e: parts.length === 1 ? parts[0] : '(' + parts.join(isAnd ? ' AND ' : ' OR ') + ')' };
      }
    }
  };
  try {
    const r = render(node);
    return 'c' in r ? (r.c ? 'TRUE' : 'FALSE') : r.e;
  } catch (_) {
    return null;
  }
}

/// The columns of `events` that field terms compare: name → 'string' or 'u64'.
async function columnTypes() {
  const answer = await sql('SELECT * FROM events LIMIT 0');
  const types = new Map();
  for (const c of answer.columns) {
    if (c.type === 'Utf8' || c.type === 'Utf8View' || c.type === 'LargeUtf8') types.set(c.name, 'string');
    else if (c.type === 'UInt64') types.set(c.name, 'u64');
  }
  return types;
}

/// The SQL condition for `q`, or null when only a search can count it.
async function conditionFor(q) {
  let tree;
  try {
    tree = parseQuery(q);
  } catch (_) {
    return null;
  }
  if (tree.k === 'all') return 'TRUE';
  return querySql(tree, await columnTypes());
}

/// Times (BigInt ns) of every event matching `q` in [lo, hi], if they fit in one answer.
async function searchTimes(q, lo, hi) {
  const params = new URLSearchParams({ q, since: rfc3339(lo), until: rfc3339(hi), limit: String(SEARCH_LIMIT_MAX) });
  const answer = await api('/api/search?' + params.toString());
  return { times: answer.rows.map((r) => BigInt(r.time_ns)), truncated: answer.truncated };
}

/// Counts of matching events per bucket over the whole of [since, until]: one SQL query when the
/// query has no bare word (or is empty), else the search itself (its answer when it holds every
/// match, else one search a bucket; a bucket past the API's limit is marked as "at least").
async function histogramCounts(q, since, until, width, progress) {
  const counts = new Array(HISTOGRAM_BUCKETS).fill(0);
  const capped = new Array(HISTOGRAM_BUCKETS).fill(false);
  const condition = await conditionFor(q);
  if (condition !== null) {
    const answer = await sql(
      `SELECT CAST((CAST(time_ns AS BIGINT) - ${since}) / ${width} AS BIGINT) AS bucket, count(*) AS n FROM events `
      + `WHERE time_ns >= ${since} AND time_ns <= ${until} AND ${condition} GROUP BY 1`);
    for (const r of answer.rows) counts[Number(r.bucket)] += Number(r.n);
    return { counts, capped, how: 'sql', text: 'SQL count per bar' };
  }
  const all = await searchTimes(q, since, until);
  if (!all.truncated) {
    for (const t of all.times) counts[Number((t - since) / width)] += 1;
    return { counts, capped, how: 'search', text: 'from every matching event' };
  }
  for (let i = 0; i < HISTOGRAM_BUCKETS; i++) {
    const lo = since + BigInt(i) * width;
    if (lo > until) break;
    const hi = lo + width - 1n < until ? lo + width - 1n : until;
    progress(i);
    const part = await searchTimes(q, lo, hi);
    counts[i] = part.times.length;
    capped[i] = part.truncated;
  }
  return { counts, capped, how: 'search-per-bar', text: 'one search per bar' };
}

function clearHistogram(note) {
  const svg = $('histogram');
  svg.replaceChildren();
  svg.dataset.state = 'empty';
  $('histogram-note').textContent = note;
  $('histogram-from').textContent = '';
  $('histogram-to').textContent = '';
}

async function drawHistogram(q, since, until, generation) {
  const svg = $('histogram');
  svg.dataset.state = 'loading';
  $('histogram-note').textContent = 'counting…';
  const span = until - since + 1n;
  const buckets = BigInt(HISTOGRAM_BUCKETS);
  const width = span <= 0n ? 1n : (span + buckets - 1n) / buckets;
  let result;
  try {
    result = await histogramCounts(q, since, until, width, (i) => {
      if (generation === searchGeneration) $('histogram-note').textContent = `counting bar ${i + 1} of ${HISTOGRAM_BUCKETS}…`;
    });
  } catch (e) {
    if (generation !== searchGeneration) return;
    clearHistogram('');
    svg.dataset.state = 'failed';
    showError(e, q);
    return;
  }
  if (generation !== searchGeneration) return;
  const { counts, capped, how, text } = result;
  const max = Math.max(1, ...counts);
  const total = counts.reduce((a, b) => a + b, 0);
  const viewWidth = 1000;
  const viewHeight = 120;
  const barWidth = viewWidth / HISTOGRAM_BUCKETS;
  const bars = [];
  counts.forEach((n, i) => {
    if (n === 0) return;
    const h = Math.max(1, (n / max) * (viewHeight - 4));
    const rect = document.createElementNS(SVG_NS, 'rect');
    rect.setAttribute('class', capped[i] ? 'bar capped' : 'bar');
    rect.setAttribute('x', String(i * barWidth + 0.5));
    rect.setAttribute('y', String(viewHeight - h));
    rect.setAttribute('width', String(Math.max(1, barWidth - 1)));
    rect.setAttribute('height', String(h));
    rect.dataset.count = String(n);
    const lo = since + BigInt(i) * width;
    const title = document.createElementNS(SVG_NS, 'title');
    title.textContent = `${capped[i] ? 'at least ' : ''}${n} events from ${showTime(lo)} (${showTime(lo + width)})`;
    rect.append(title);
    rect.addEventListener('click', () => {
      $('since').value = rfc3339(lo);
      const hi = lo + width - 1n < until ? lo + width - 1n : until;
      $('until').value = rfc3339(hi);
      runSearch();
    });
    bars.push(rect);
  });
  svg.replaceChildren(...bars);
  svg.dataset.total = String(total);
  svg.dataset.sinceNs = since.toString();
  svg.dataset.untilNs = until.toString();
  svg.dataset.how = how;
  svg.dataset.state = 'done';
  const atLeast = capped.some(Boolean) ? 'at least ' : '';
  $('histogram-note').textContent = `${atLeast}${total} events in ${HISTOGRAM_BUCKETS} bars of ${showSpan(width)} (${text}; click a bar to zoom)`;
  $('histogram-from').textContent = showTime(since);
  $('histogram-to').textContent = showTime(until);
}

function showSpan(ns) {
  const s = Number(ns) / 1e9;
  if (s < 1) return (s * 1000).toFixed(0) + ' ms';
  if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
}

// ---- live tail -----------------------------------------------------------------------------

/// One tail: a fetch of /api/tail read as Server-Sent Events (EventSource cannot send the
/// Authorization header).
class Tail {
  constructor(query) {
    this.query = query;
    this.abort = new AbortController();
    this.pending = [];
    this.received = 0;
    this.dropped = 0;
    this.timer = null;
  }

  async run() {
    setTailState('connecting…', 'connecting');
    try {
      const r = await fetch('/api/tail?' + new URLSearchParams({ q: this.query }).toString(), {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: this.abort.signal,
        cache: 'no-store',
      });
      if (!r.ok) {
        const text = await r.text();
        let message = text.trim() || r.statusText;
        try {
          message = parseJson(text).error || message;
        } catch (_) { /* not JSON: the text as it came */ }
        throw new ApiFailure(r.status, message, null);
      }
      setTailState('live: ' + (this.query.trim() || 'every event'), 'live');
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          this.frame(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
      this.flush();
      setTailState('ended by the store', 'ended');
    } catch (e) {
      this.flush();
      if (e.name === 'AbortError') setTailState('stopped', 'stopped');
      else setTailState('failed: ' + (e instanceof ApiFailure ? e.status + ': ' : '') + e.message, 'failed');
    } finally {
      if (tail === this) {
        tail = null;
        $('tail-toggle').textContent = 'Start';
      }
    }
  }

  stop() {
    this.abort.abort();
  }

  frame(text) {
    let event = 'message';
    const data = [];
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    let payload;
    try {
      payload = parseJson(data.join('\n'));
    } catch (_) {
      return;
    }
    if (event === 'row') {
      this.received += 1;
      this.pending.push(payload);
      if (this.pending.length > TAIL_ROWS_MAX) this.pending.splice(0, this.pending.length - TAIL_ROWS_MAX);
      if (this.timer === null) this.timer = setTimeout(() => this.flush(), TAIL_RENDER_MS);
    } else if (event === 'dropped') {
      this.dropped += Number(payload.dropped) || 0;
      const d = $('tail-dropped');
      d.hidden = false;
      d.dataset.dropped = String(this.dropped);
      d.textContent = `${this.dropped} events dropped: this page fell behind the stream (narrow the filter to see every event)`;
    } else if (event === 'error') {
      setTailState('failed: ' + payload.error, 'failed');
    }
  }

  flush() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.pending.length === 0) return;
    const body = $('tail').tBodies[0];
    const rows = this.pending.reverse().map(eventRow);
    this.pending = [];
    body.prepend(...rows);
    while (body.rows.length > TAIL_ROWS_MAX) body.lastElementChild.remove();
    $('tail').dataset.received = String(this.received);
  }
}

function setTailState(text, state) {
  const s = $('tail-state');
  s.textContent = text;
  s.dataset.state = state;
}

function toggleTail() {
  if (tail) {
    tail.stop();
    return;
  }
  $('tail').tBodies[0].replaceChildren();
  $('tail-dropped').hidden = true;
  tail = new Tail($('q').value);
  $('tail-toggle').textContent = 'Stop';
  tail.run();
}

// ---- sources -------------------------------------------------------------------------------

function showBytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1048576) return (n / 1024).toFixed(1) + ' KiB';
  if (n < 1073741824) return (n / 1048576).toFixed(1) + ' MiB';
  return (n / 1073741824).toFixed(1) + ' GiB';
}

function cell(col, text, className) {
  const td = el('td', className, text);
  td.dataset.col = col;
  return td;
}

async function refreshSources() {
  const err = $('sources-error');
  if (!token) {
    err.hidden = false;
    err.textContent = 'Give a token above to see the sources and to search.';
    return;
  }
  let answer;
  try {
    answer = await api('/api/sources');
  } catch (e) {
    err.hidden = false;
    err.textContent = (e instanceof ApiFailure ? e.status + ': ' : '') + e.message;
    return;
  }
  err.hidden = true;
  const rows = [];
  for (const s of answer.sources) {
    const tr = document.createElement('tr');
    tr.dataset.source = s.name;
    tr.dataset.state = s.state;
    const name = cell('name', s.name);
    name.title = s.url || '';
    const lag = s.lag_seconds === null || s.lag_seconds === undefined ? '–' : Number(s.lag_seconds).toFixed(1) + ' s';
    tr.append(
      name,
      cell('state', s.state, 'state-' + s.state),
      cell('lag', lag),
      cell('backlog', `${s.backlog_chunks} (${showBytes(Number(s.backlog_bytes))})`),
      cell('chunks_lost', String(s.chunks_lost)),
      cell('events', String(s.events_total)),
    );
    rows.push(tr);
    if (s.last_error) {
      const e = document.createElement('tr');
      const td = cell('last_error', s.last_error, 'err');
      td.colSpan = 6;
      e.append(td);
      rows.push(e);
    }
  }
  $('sources').tBodies[0].replaceChildren(...rows);
  $('sources-updated').textContent = 'updated ' + new Date().toISOString().slice(11, 19) + ' UTC';
  $('sources').dataset.updated = String(Date.now());
}

// ---- token ---------------------------------------------------------------------------------

function setToken(value) {
  token = value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('token').value = token;
  $('token-state').textContent = token ? 'token set for this tab' : 'no token';
  refreshSources();
}

/// A link may carry the token as `#token=…` (fragments never reach a server): take it and
/// remove it from the address bar and history.
function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return false;
  let value = m[1];
  try {
    value = decodeURIComponent(value);
  } catch (_) { /* kept as it is */ }
  history.replaceState(null, '', location.pathname + location.search);
  setToken(value);
  return true;
}

function init() {
  if (!tokenFromFragment()) setToken(sessionStorage.getItem(TOKEN_KEY) || '');
  window.addEventListener('hashchange', tokenFromFragment);
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setToken($('token').value);
  });
  $('token-forget').addEventListener('click', () => setToken(''));
  // Enter in any field of the form runs the search.
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    runSearch();
  });
  $('tail-toggle').addEventListener('click', toggleTail);
  setInterval(refreshSources, SOURCES_REFRESH_MS);
  document.body.dataset.ready = 'true';
  // With a token at hand, the last 15 minutes at once.
  if (token) runSearch();
}

init();
