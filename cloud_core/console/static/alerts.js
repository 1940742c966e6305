// Alerts: the detector's anomaly episodes (label each a true or a false alarm: acknowledging it, and
// the feedback that measures the detector's precision), with a link to the device at that moment; and
// operational alerts read off the fleet: devices offline or stale, configs refused, ledgers that do
// not balance, rejected messages.

import {get, post} from './api.js';
import {badge, clear, errorNotice, h, notice} from './dom.js';
import {ago, num, time} from './format.js';

export const title = 'Alerts';

export async function render(main) {
  const epBox = h('div', {id: 'alerts-episodes'});
  const opsBox = h('div', {id: 'alerts-operational'});
  main.append(h('h1', {}, 'Alerts'),
    h('section', {class: 'panel', 'aria-labelledby': 'ep-h'}, h('h2', {id: 'ep-h'}, 'Anomaly episodes'), epBox),
    h('section', {class: 'panel', 'aria-labelledby': 'ops-h'}, h('h2', {id: 'ops-h'}, 'Operational'), opsBox));
  let stopped = false;

  async function label(ep, trueAlarm, cell) {
    try {
      const r = await post(`/v1/analytics/anomalies/${ep.id}/label`, {true_alarm: trueAlarm});
      clear(cell).append(labelBadge(r.label || {true_alarm: trueAlarm}));
    } catch (err) {
      clear(cell).append(h('span', {class: 'error'}, err.status === 403 ? 'you may only read this device' : err.message));
    }
  }
  function labelBadge(l) {
    return l ? badge(l.true_alarm ? 'true alarm' : 'false alarm', l.true_alarm ? 'bad' : 'muted') : '';
  }

  async function episodes() {
    try {
      const rows = await get('/v1/analytics/anomalies?limit=200');
      if (stopped) return;
      clear(epBox);
      if (!rows.length) {
        epBox.append(notice('empty', 'No anomaly episodes', 'The detector has not flagged anything on the devices you may read. A simulator scenario with faults makes some.'));
        return;
      }
      epBox.append(h('div', {class: 'table-wrap'}, h('table', {},
        h('thead', {}, h('tr', {}, ['Device', 'Field', 'Start', 'End', 'Detector', 'Peak', 'Status', 'Acknowledge'].map((c) => h('th', {scope: 'col'}, c)))),
        h('tbody', {}, rows.map((ep) => {
          const cell = h('td', {class: 'ack'});
          cell.append(h('button', {type: 'button', onclick: () => label(ep, true, cell)}, 'True alarm'), ' ',
            h('button', {type: 'button', onclick: () => label(ep, false, cell)}, 'False alarm'));
          return h('tr', {dataset: {episode: String(ep.id)}},
            h('th', {scope: 'row'}, h('a', {href: `#/device/${encodeURIComponent(ep.device_id)}?at=${ep.start_ms}`}, ep.device_id)),
            h('td', {}, ep.field === '*' ? 'all fields' : ep.field), h('td', {}, time(ep.start_ms)), h('td', {}, time(ep.end_ms)),
            h('td', {}, ep.detector), h('td', {class: 'num'}, num(ep.peak_score)), h('td', {}, ep.status), cell);
        })))));
    } catch (err) {
      clear(epBox).append(errorNotice(err, 'the anomaly episodes'));
    }
  }

  async function operational() {
    try {
      const fleet = await get('/v1/console/fleet');
      if (stopped) return;
      const items = [];
      for (const d of fleet.devices) {
        const link = h('a', {href: `#/device/${encodeURIComponent(d.id)}`}, d.id);
        if (d.status === 'active' && d.state !== 'online') items.push([d.state === 'offline' ? 'bad' : 'warn', link, ` is ${d.state}, last seen ${ago(d.last_seen_age_s)}`]);
        if (d.config_error) items.push(['bad', link, ` refused config v${d.config_desired}: ${d.config_error}`]);
        if (!['balanced', 'no-health'].includes(d.verdict)) items.push(['bad', link, ` ledger: ${d.verdict} (${d.in_flight} readings unaccounted)`]);
        if (d.rejections) items.push(['warn', link, ` had ${d.rejections} messages rejected recently`]);
      }
      clear(opsBox);
      if (!items.length) { opsBox.append(notice('ok', 'All clear', 'Every active device is online, in sync, balanced, and nothing was rejected recently.')); return; }
      opsBox.append(h('ul', {class: 'ops'}, items.map(([kind, link, text]) => h('li', {}, badge(kind === 'bad' ? 'problem' : 'warning', kind), ' ', link, text))));
    } catch (err) {
      clear(opsBox).append(errorNotice(err, 'the fleet'));
    }
  }

  await Promise.all([episodes(), operational()]);
  const t = setInterval(() => { episodes(); operational(); }, 15000);
  return () => { stopped = true; clearInterval(t); };
}
