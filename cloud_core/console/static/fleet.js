// The fleet: every device you may see, with liveness, type, location, firmware and config (desired vs
// reported), readings per second, recent rejections and the ledger verdict; search and filters; for
// teachers, the devices grouped by class. One request (GET /v1/console/fleet), refreshed every 10 s.

import {get, post} from './api.js';
import {badge, clear, confirmAction, errorNotice, h, notice} from './dom.js';
import {ago, num} from './format.js';

export const title = 'Fleet';
const REFRESH_MS = 10000;
const COLUMNS = ['Device', 'State', 'Last seen', 'Type', 'Location', 'Firmware', 'Config', 'Readings/s',
  'Rejections', 'Ledger', 'Owner'];

function versions(reported, desired) {
  if (desired === null || desired === undefined || desired === reported) return reported ?? '–';
  return `${reported ?? '–'} → ${desired}`;
}

function row(d) {
  const cfg = d.config_reported === d.config_desired
    ? `v${d.config_reported}` : `v${d.config_reported} → v${d.config_desired}`;
  const cfgCell = h('td', {}, cfg);
  if (d.config_error) cfgCell.append(' ', badge('error', 'bad'));
  else if (d.config_reported !== d.config_desired) cfgCell.append(' ', badge('pending', 'warn'));
  return h('tr', {dataset: {device: d.id, state: d.state}},
    h('th', {scope: 'row'}, h('a', {href: `#/device/${encodeURIComponent(d.id)}`}, d.id)),
    h('td', {}, badge(d.state), d.status !== 'active' ? h('span', {class: 'muted'}, ` ${d.status}`) : ''),
    h('td', {}, ago(d.last_seen_age_s)),
    h('td', {}, d.device_type),
    h('td', {}, d.location),
    h('td', {}, versions(d.firmware_reported, d.firmware_desired)),
    cfgCell,
    h('td', {class: 'num'}, d.readings_per_s === null ? '?' : num(d.readings_per_s)),
    h('td', {class: 'num'}, d.rejections ? h('span', {class: 'warn-text'}, num(d.rejections, 0)) : '0'),
    h('td', {}, badge(d.verdict, d.verdict === 'balanced' ? 'ok' : d.verdict === 'no-health' ? 'muted' : 'bad')),
    h('td', {}, d.owner || '–'),
  );
}

function table(devices, caption) {
  const body = h('tbody');
  const frag = document.createDocumentFragment();
  for (const d of devices) frag.append(row(d));
  body.append(frag);
  return h('div', {class: 'table-wrap'},
    h('table', {class: 'fleet'},
      h('caption', {class: 'sr-only'}, caption),
      h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', {scope: 'col'}, c)))),
      body));
}

// Enrolling a new device: register it (owned by you, in your class), then run the printed command
// on the device with its one-time token.
function registerForm() {
  const out = h('div', {id: 'register-result', 'aria-live': 'polite'});
  const id = h('input', {id: 'register-id', required: true, maxlength: '64', placeholder: 'greenhouse-01'});
  const type = h('input', {id: 'register-type', value: 'environment', required: true});
  const place = h('input', {id: 'register-location', value: 'unknown', required: true});
  return h('details', {class: 'panel'}, h('summary', {}, 'Enroll a new device'),
    h('form', {class: 'inline-form', onsubmit: async (event) => {
      event.preventDefault();
      if (!await confirmAction(`Register ${id.value}?`, 'It is yours (in your class), and it gets a one-time enrollment token, shown once.', 'Register')) return;
      try {
        const r = await post('/v1/devices/register', {id: id.value, device_type: type.value, location: place.value});
        clear(out).append(notice('ok', `Registered ${r.device.id}`, 'On the device, enroll it with this one-time token (shown once):',
          h('pre', {}, `iotctl agent enroll --api ${location.origin} --token ${r.enrollment_token} --dir /var/lib/edu-agent/identity`)));
      } catch (err) { clear(out).append(errorNotice(err, 'this registration')); }
    }}, h('label', {for: 'register-id'}, 'Id'), id, h('label', {for: 'register-type'}, 'Type'), type,
    h('label', {for: 'register-location'}, 'Location'), place, h('button', {type: 'submit', class: 'primary'}, 'Register…')),
    out);
}

export async function render(main, _params, session) {
  const t0 = performance.now();
  const search = h('input', {type: 'search', id: 'fleet-search', placeholder: 'id, type, location, owner', 'aria-label': 'Search devices'});
  const state = h('select', {id: 'fleet-state', 'aria-label': 'Liveness'},
    ['all', 'online', 'stale', 'offline'].map((s) => h('option', {value: s}, s === 'all' ? 'any state' : s)));
  const verdict = h('select', {id: 'fleet-verdict', 'aria-label': 'Ledger verdict'},
    ['all', 'balanced', 'problem', 'no-health'].map((s) => h('option', {value: s}, s === 'all' ? 'any ledger' : s)));
  const view = h('select', {id: 'fleet-view', 'aria-label': 'Group'},
    h('option', {value: 'all'}, 'all devices'), h('option', {value: 'class'}, 'by class'));
  const summary = h('p', {class: 'muted', id: 'fleet-summary', 'aria-live': 'polite'});
  const results = h('div', {id: 'fleet-results'});
  main.append(h('h1', {}, 'Fleet'),
    h('div', {class: 'toolbar', role: 'search'}, search, state, verdict, view), summary, results);
  if (session.me.permissions.includes('write_devices') && session.me.key_devices === null) {
    main.append(registerForm());
  }

  let data = null;
  let timer = 0;
  let stopped = false;

  function filtered() {
    const q = search.value.trim().toLowerCase();
    return data.devices.filter((d) => (state.value === 'all' || d.state === state.value)
      && (verdict.value === 'all' || (verdict.value === 'problem'
        ? !['balanced', 'no-health'].includes(d.verdict) : d.verdict === verdict.value))
      && (!q || [d.id, d.device_type, d.location, d.owner || ''].some((v) => v.toLowerCase().includes(q))));
  }

  function draw() {
    clear(results);
    const all = data.devices;
    const counts = {online: 0, stale: 0, offline: 0};
    for (const d of all) counts[d.state] = (counts[d.state] || 0) + 1;
    summary.textContent = `${all.length} devices: ${counts.online} online, ${counts.stale} stale, ${counts.offline} offline`
      + ` · readings/s over the last ${data.rate_window_s} s, rejections over the last ${Math.round(data.rejections_window_s / 60)} min`
      + ` · updated ${new Date(data.generated_at).toLocaleTimeString()}`;
    if (data.store_error) results.append(notice('error', 'Readings unavailable', data.store_error));
    if (!all.length) {
      results.append(notice('empty', 'No devices yet',
        'Register one with `iotctl devices register NAME`, or start a scenario on the Simulator page.'));
      return;
    }
    const shown = filtered();
    if (!shown.length) {
      results.append(notice('empty', 'No device matches', 'Change the search or the filters.'));
      return;
    }
    if (view.value === 'class' && data.classes.length) {
      const byClass = new Map(data.classes.map((c) => [c.id, []]));
      const other = [];
      for (const d of shown) (byClass.get(d.class_id) || other).push(d);
      for (const c of data.classes) {
        const list = byClass.get(c.id);
        const online = list.filter((d) => d.state === 'online').length;
        results.append(h('section', {class: 'class-group', dataset: {classId: String(c.id)}},
          h('h2', {}, `${c.name} `, h('span', {class: 'muted'}, `${online}/${list.length} online`)),
          list.length ? table(list, `Devices of class ${c.name}`) : h('p', {class: 'muted'}, 'No devices in this class.')));
      }
      if (other.length) results.append(h('section', {class: 'class-group'}, h('h2', {}, 'Not in a class'), table(other, 'Devices not in a class')));
    } else {
      results.append(table(shown, 'Devices'));
    }
  }

  async function load(first) {
    try {
      const f0 = performance.now();
      data = await get('/v1/console/fleet');
      const f1 = performance.now();
      if (stopped) return;
      view.hidden = !data.classes.length;
      if (first && data.classes.length && session.me.teacher_of.length) view.value = 'class';
      draw();
      const f2 = performance.now();
      window.__consoleTimings = {...(window.__consoleTimings || {}),
        fleet: {rows: data.devices.length, fetch_ms: f1 - f0, render_ms: f2 - f1, total_ms: f2 - t0, since_navigation_ms: f2}};
    } catch (err) {
      if (stopped) return;
      clear(results);
      results.append(errorNotice(err, 'the fleet'));
    }
    if (!stopped) timer = setTimeout(() => load(false), REFRESH_MS);
  }

  for (const el of [search, state, verdict, view]) el.addEventListener('input', () => data && draw());
  await load(true);
  return () => { stopped = true; clearTimeout(timer); };
}
