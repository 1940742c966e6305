// One device: live charts per field (server-sent events from the readings the bridge stores) or a
// history range (windowed means, the downsampled series for long ranges), its anomaly episodes drawn
// on the charts, config desired vs reported with a form to change it, the loss ledger with missing seq
// ranges, recent dead letters, and rotate / deactivate with a confirmation.

import {get, post, put, refresh} from './api.js';
import {FieldChart} from './chart.js';
import {badge, clear, confirmAction, errorNotice, h, notice} from './dom.js';
import {ago, isoTime, num, time} from './format.js';

export const title = 'Device';
const FIELD_ORDER = ['temperature', 'humidity', 'pressure', 'battery_level', 'signal_strength', 'quality_score'];
const RANGES = [['live', 'Live'], ['1h', '1 h'], ['6h', '6 h'], ['24h', '24 h'], ['7d', '7 d'], ['30d', '30 d']];
const RANGE_MS = {'1h': 3600e3, '6h': 6 * 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3};
const WINDOWS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
const META = new Set(['time', 'device_id', 'sensor_type', 'location']);
const SETTINGS = [
  ['sampling_interval_s', 'number', 'Seconds between samples'],
  ['transmission_interval_s', 'number', 'Seconds between batches'],
  ['heartbeat_interval_s', 'number', 'Seconds between health messages'],
  ['batch_max_readings', 'number', 'Readings per batch at most'],
  ['low_power', 'checkbox', 'Power saving'],
];

/** The aggregation window for a range: at most ~600 points; whole hours beyond 7 days, so the store
 * reads its hourly rollup (resolution auto). */
export function windowFor(rangeMs) {
  const wanted = Math.ceil(rangeMs / 1000 / 600);
  let w = WINDOWS_S.find((s) => s >= wanted) || 86400;
  if (rangeMs > 7 * 86400e3) w = Math.max(3600, Math.ceil(w / 3600) * 3600);
  return w;
}

function section(id, heading, ...body) {
  return h('section', {id, class: 'panel', 'aria-labelledby': `${id}-h`}, h('h2', {id: `${id}-h`}, heading), ...body);
}

export async function render(main, [rawId, query], session) {
  const id = decodeURIComponent(rawId);
  const params = new URLSearchParams(query || '');
  const at = params.get('at') ? Number(params.get('at')) : null;
  const me = session.me;
  const enc = encodeURIComponent(id);
  let device;
  try {
    device = await get(`/v1/devices/${enc}`);
  } catch (err) {
    main.append(h('p', {}, h('a', {href: '#/fleet'}, '← Fleet')), errorNotice(err, `device ${id}`));
    return null;
  }
  const canRead = me.permissions.includes('read_data');
  const mayWrite = me.permissions.includes('write_devices') && (me.role === 'admin' || device.owner_id === me.user.id
    || me.teacher_of.includes(device.class_id) || me.student_of.length === 0);
  const stops = [];
  let stopped = false;
  const stop = () => { stopped = true; for (const f of stops) f(); };

  // ---- header and actions ----
  const head = h('div', {class: 'device-head'},
    h('h1', {}, id, ' ', badge(device.state)),
    h('p', {class: 'muted'}, `${device.device_type} · ${device.location} · ${device.status} · last seen ${ago(device.last_seen_age_s)}`
      + ` · firmware ${device.firmware || '–'} · key version ${device.key_version}`));
  const actionOut = h('div', {id: 'action-result', 'aria-live': 'polite'});
  if (mayWrite) {
    head.append(h('div', {class: 'actions'},
      h('button', {type: 'button', id: 'rotate', onclick: rotate}, 'Rotate credentials…'),
      h('button', {type: 'button', id: 'deactivate', class: 'danger', disabled: device.status === 'inactive', onclick: deactivate}, 'Deactivate…')));
  }
  main.append(h('p', {}, h('a', {href: '#/fleet'}, '← Fleet')), head, actionOut);

  async function rotate() {
    if (!await confirmAction(`Rotate ${id}?`, 'Its current broker credentials are refused from now on; it needs the new enrollment token.', 'Rotate')) return;
    try {
      const r = await post(`/v1/devices/${enc}/rotate`);
      clear(actionOut).append(notice('ok', 'Rotated', `New one-time enrollment token (shown once): ${r.enrollment_token}`,
        h('pre', {}, `iotctl agent enroll --api ${location.origin} --token ${r.enrollment_token} --dir IDENTITY_DIR`)));
    } catch (err) { clear(actionOut).append(errorNotice(err, 'this action')); }
  }
  async function deactivate() {
    if (!await confirmAction(`Deactivate ${id}?`, 'The broker drops its connection and the bridge refuses its data at once.', 'Deactivate')) return;
    try {
      await post(`/v1/devices/${enc}/deactivate`);
      clear(actionOut).append(notice('ok', 'Deactivated', `${id} is cut off at the broker and the bridge.`));
      main.querySelector('#deactivate').disabled = true;
    } catch (err) { clear(actionOut).append(errorNotice(err, 'this action')); }
  }

  // ---- charts ----
  const charts = new Map();
  const chartBox = h('div', {class: 'charts', id: 'charts'});
  const liveStatus = h('p', {class: 'muted', id: 'live-status', 'aria-live': 'polite'});
  const rangeButtons = h('div', {class: 'segmented', role: 'group', 'aria-label': 'Range'});
  let mode = at ? 'episode' : 'live';
  let episodes = [];
  let source = null;
  let received = 0;
  let lastTs = null;
  const ranges = at ? [['episode', 'Around the episode'], ...RANGES] : RANGES;
  for (const [key, label] of ranges) {
    rangeButtons.append(h('button', {type: 'button', dataset: {range: key}, 'aria-pressed': String(key === mode),
      onclick: () => setMode(key)}, label));
  }
  main.append(section('readings', 'Readings', h('div', {class: 'toolbar'}, rangeButtons), liveStatus, chartBox));

  function chart(field) {
    let c = charts.get(field);
    if (!c) {
      c = new FieldChart(chartBox, field);
      c.setEpisodes(episodes);
      charts.set(field, c);
      // keep the charts in the usual field order
      const order = (f) => (FIELD_ORDER.includes(f) ? FIELD_ORDER.indexOf(f) : 100);
      [...charts.values()].sort((a, b) => order(a.field) - order(b.field)).forEach((x) => chartBox.append(x.root));
    }
    return c;
  }

  function closeLive() {
    if (source) { source.close(); source = null; }
  }
  stops.push(closeLive, () => charts.forEach((c) => c.destroy()));

  function openLive() {
    closeLive();
    const url = `/v1/console/devices/${enc}/live${lastTs !== null ? `?after_ms=${lastTs}` : ''}`;
    source = new EventSource(url);
    source.addEventListener('readings', (event) => {
      const {rows} = JSON.parse(event.data);
      if (!rows.length) return;
      received += rows.length;
      lastTs = rows[rows.length - 1].ts;
      const fields = new Set(rows.flatMap((r) => Object.keys(r.values)));
      for (const f of fields) chart(f).push(rows);
      liveStatus.textContent = `Live: ${received} readings received, newest ${time(lastTs)}.`;
      liveStatus.dataset.received = String(received);
    });
    source.addEventListener('problem', (event) => { liveStatus.textContent = JSON.parse(event.data).detail; });
    source.onopen = () => { if (!received) liveStatus.textContent = 'Live: waiting for readings…'; };
    source.onerror = async () => {
      if (stopped || mode !== 'live') return;
      if (source && source.readyState === EventSource.CLOSED) {
        liveStatus.textContent = 'Live stream interrupted: reconnecting…';
        await refresh();
        setTimeout(() => { if (!stopped && mode === 'live') openLive(); }, 2000);
      } else {
        liveStatus.textContent = 'Live stream interrupted: reconnecting…';
      }
    };
  }

  async function loadHistory(startMs, endMs) {
    const span = endMs - startMs;
    const q = new URLSearchParams({start: String(Math.floor(startMs)), end: String(Math.ceil(endMs)), limit: '20000'});
    if (span > 2 * 3600e3) { q.set('window', `${windowFor(span)}s`); q.set('agg', 'mean'); }
    liveStatus.textContent = 'Loading…';
    try {
      const rows = await get(`/v1/devices/${enc}/readings?${q}`);
      if (stopped) return;
      const byField = new Map();
      for (const r of rows) {
        const ts = Date.parse(r.time);
        for (const [k, v] of Object.entries(r)) {
          if (META.has(k) || v === null) continue;
          if (!byField.has(k)) byField.set(k, []);
          byField.get(k).push({ts, value: v});
        }
      }
      for (const [f, pts] of byField) chart(f).setHistory(pts);
      for (const [f, c] of charts) if (!byField.has(f)) c.setHistory([]);
      liveStatus.textContent = rows.length
        ? `${rows.length} ${q.has('window') ? `${q.get('window')} means` : 'readings'} from ${time(startMs)} to ${time(endMs)}.`
        : `No readings from ${time(startMs)} to ${time(endMs)}.`;
      liveStatus.dataset.received = String(rows.length);
    } catch (err) {
      liveStatus.textContent = `Could not load the readings: ${err.message}`;
    }
  }

  function setMode(key) {
    mode = key;
    for (const b of rangeButtons.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b.dataset.range === key));
    closeLive();
    if (key === 'live') {
      received = 0;
      lastTs = null;
      charts.forEach((c) => c.startLive());
      openLive();
    } else if (key === 'episode') {
      const ep = episodes.find((e) => e.start_ms <= at && e.end_ms >= at) || {start_ms: at, end_ms: at};
      loadHistory(ep.start_ms - 3600e3, Math.max(ep.end_ms, at) + 3600e3);
    } else {
      const end = Date.now();
      loadHistory(end - RANGE_MS[key], end);
    }
  }

  // ---- anomaly episodes ----
  const epList = h('div', {id: 'episodes'});
  main.append(section('anomalies', 'Anomaly episodes', epList));
  async function loadEpisodes() {
    try {
      episodes = await get(`/v1/analytics/anomalies?device_id=${enc}&limit=200`);
      if (stopped) return;
      charts.forEach((c) => c.setEpisodes(episodes));
      clear(epList);
      if (!episodes.length) { epList.append(h('p', {class: 'muted'}, 'No anomaly episodes for this device.')); return; }
      epList.append(h('div', {class: 'table-wrap'}, h('table', {},
        h('thead', {}, h('tr', {}, ['Start', 'End', 'Field', 'Detector', 'Peak score', 'Status', ''].map((c) => h('th', {scope: 'col'}, c)))),
        h('tbody', {}, episodes.map((e) => h('tr', {dataset: {episode: String(e.id)}},
          h('td', {}, time(e.start_ms)), h('td', {}, time(e.end_ms)), h('td', {}, e.field === '*' ? 'all fields' : e.field),
          h('td', {}, e.detector), h('td', {class: 'num'}, num(e.peak_score)), h('td', {}, e.status),
          h('td', {}, h('a', {href: `#/device/${enc}?at=${e.start_ms}`}, 'show on the chart'))))))));
    } catch (err) {
      clear(epList).append(errorNotice(err, 'the anomaly episodes'));
    }
  }

  // ---- config ----
  const configBox = h('div', {id: 'config'});
  main.append(section('config-panel', 'Configuration', configBox));
  let configTimer = 0;
  stops.push(() => clearTimeout(configTimer));
  async function loadConfig() {
    clearTimeout(configTimer);
    try {
      const c = await get(`/v1/devices/${enc}/config`);
      if (stopped) return;
      drawConfig(c);
      configTimer = setTimeout(loadConfig, c.in_sync ? 15000 : 2000);
    } catch (err) {
      clear(configBox).append(errorNotice(err, 'the configuration'));
    }
  }
  const configMsg = h('p', {id: 'config-message', 'aria-live': 'polite'});
  function drawConfig(c) {
    const state = c.reported_error ? badge('error', 'bad') : c.in_sync ? badge('in sync', 'ok') : badge('waiting for the device', 'warn');
    const focused = configBox.contains(document.activeElement) ? document.activeElement.id : null;
    const keep = configBox.querySelector('form');
    clear(configBox).append(
      h('dl', {class: 'pairs'},
        h('dt', {}, 'Desired'), h('dd', {id: 'config-desired'}, `version ${c.desired_version}`),
        h('dt', {}, 'Reported'), h('dd', {id: 'config-reported'}, `version ${c.reported_version}`, ' ', state,
          c.reported_error ? h('span', {class: 'error'}, ` ${c.reported_error}`) : ''),
        h('dt', {}, 'Settings'), h('dd', {}, h('code', {}, JSON.stringify(c.desired)))));
    if (mayWrite) configBox.append(keep || configForm());
    configBox.append(configMsg);
    if (focused) document.getElementById(focused)?.focus();
  }
  function configForm() {
    const name = h('select', {id: 'config-key', 'aria-label': 'Setting'}, SETTINGS.map(([k, , label]) => h('option', {value: k}, `${k} (${label})`)));
    const value = h('input', {id: 'config-value', type: 'number', step: 'any', min: '0', required: true, 'aria-label': 'Value'});
    name.addEventListener('input', () => {
      const kind = SETTINGS.find(([k]) => k === name.value)[1];
      value.type = kind;
      value.required = kind !== 'checkbox';
    });
    return h('form', {class: 'inline-form', onsubmit: async (event) => {
      event.preventDefault();
      const v = value.type === 'checkbox' ? value.checked : Number(value.value);
      configMsg.textContent = 'Publishing…';
      try {
        const r = await put(`/v1/devices/${enc}/config`, {settings: {[name.value]: v}});
        configMsg.textContent = `Published version ${r.desired_version}; the device reports when it applied it.`;
        loadConfig();
      } catch (err) { configMsg.textContent = `Refused: ${err.message}`; }
    }}, h('label', {for: 'config-key'}, 'Change'), name, h('label', {for: 'config-value'}, 'to'), value,
    h('button', {type: 'submit', class: 'primary', id: 'config-apply'}, 'Apply'));
  }

  // ---- ledger and dead letters ----
  const ledgerBox = h('div', {id: 'ledger'});
  const deadBox = h('div', {id: 'dead-letters'});
  main.append(section('ledger-panel', 'Loss ledger', ledgerBox), section('dead-panel', 'Recent dead letters', deadBox));
  async function loadBooks() {
    try {
      const l = await get(`/v1/devices/${enc}/ledger`);
      if (stopped) return;
      const terms = [['produced', l.produced], ['stored', l.stored], ['rejected', l.rejected], ['buffered', l.buffered],
        ['dropped', l.dropped], ['quarantined', l.quarantined], ['in flight', l.in_flight]];
      const missing = l.missing.length
        ? l.missing.slice(0, 20).map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(', ') + (l.missing.length > 20 ? ` and ${l.missing.length - 20} more` : '')
        : 'none';
      clear(ledgerBox).append(
        h('p', {}, badge(l.verdict, l.balanced ? 'ok' : l.verdict === 'no-health' ? 'muted' : 'bad'), ' ',
          l.has_health ? `as of its last health message (${isoTime(l.health_received_at)}), batches up to seq ${l.last_seq}` : 'no health message yet: nothing to balance against'),
        h('dl', {class: 'pairs ledger-terms'}, terms.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {class: 'num'}, num(v, 0))])),
        h('p', {}, `Missing seq ranges: `, h('span', {id: 'missing'}, missing)),
        l.has_health && (l.lost || l.excess) ? h('p', {class: 'error'}, `${l.lost} receipted but absent, ${l.excess} in excess`) : '');
    } catch (err) { clear(ledgerBox).append(errorNotice(err, 'the ledger')); }
    try {
      const rows = await get(`/v1/devices/${enc}/dead-letters?limit=20`);
      if (stopped) return;
      clear(deadBox);
      if (!rows.length) { deadBox.append(h('p', {class: 'muted'}, 'No dead letters: nothing from this device was refused.')); return; }
      deadBox.append(h('div', {class: 'table-wrap'}, h('table', {},
        h('thead', {}, h('tr', {}, ['Received', 'Reason', 'Seq', 'Reading', 'Detail'].map((c) => h('th', {scope: 'col'}, c)))),
        h('tbody', {}, rows.map((r) => h('tr', {}, h('td', {}, isoTime(r.received_at)), h('td', {}, badge(r.reason, 'bad')),
          h('td', {class: 'num'}, r.seq ?? '–'), h('td', {class: 'num'}, r.reading_index ?? '–'), h('td', {}, r.detail || '')))))));
    } catch (err) { clear(deadBox).append(errorNotice(err, 'the dead letters')); }
  }

  if (!canRead) {
    chartBox.append(notice('denied', 'No permission', 'Your role may not read readings.'));
  } else {
    await loadEpisodes();
    setMode(mode);
    const t = setInterval(() => { if (!stopped) { loadEpisodes(); loadBooks(); } }, 10000);
    stops.push(() => clearInterval(t));
    loadBooks();
  }
  loadConfig();
  return stop;
}
