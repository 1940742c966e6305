// Rollouts: each rollout's waves with their counts per state, its health gates, why it stopped, and its
// events; pause, resume and abort (with a confirmation) for those who may change the whole fleet.

import {get, post} from './api.js';
import {badge, clear, confirmAction, errorNotice, h, notice} from './dom.js';
import {isoTime, num} from './format.js';

export const title = 'Rollouts';

function counts(c) {
  const entries = Object.entries(c || {}).filter(([, n]) => n);
  return entries.length ? entries.map(([k, n]) => `${k} ${n}`).join(', ') : '–';
}

export async function render(main, _params, session) {
  const box = h('div', {id: 'rollouts'});
  main.append(h('h1', {}, 'Rollouts'), box);
  let stopped = false;
  const mayWrite = session.me.permissions.includes('write_devices');

  async function act(r, verb) {
    if (verb === 'abort' && !await confirmAction(`Abort rollout ${r.id}?`, 'Every device it changed goes back to its previous version.', 'Abort')) return;
    try { await post(`/v1/rollouts/${r.id}/${verb}`, verb === 'abort' ? {reason: 'aborted from the console'} : undefined); } catch (err) { alertBox(err); }
    load();
  }
  function alertBox(err) { box.prepend(errorNotice(err, 'this action')); }

  async function events(r, target) {
    try {
      const evs = await get(`/v1/rollouts/${r.id}/events`);
      clear(target).append(h('ol', {class: 'events'}, evs.slice(-30).map((e) => h('li', {}, `${isoTime(e.at)} ${e.kind}`,
        e.device_id ? ` ${e.device_id}` : '', Object.keys(e.detail || {}).length ? ` ${JSON.stringify(e.detail)}` : ''))));
    } catch (err) { clear(target).append(errorNotice(err, 'the events')); }
  }

  async function load() {
    let list;
    try {
      list = await get('/v1/rollouts');
    } catch (err) {
      if (stopped) return;
      clear(box);
      if (err.status === 403) {
        box.append(notice('denied', 'No permission', 'Rollouts act on the whole fleet: admins and fleet operators see them. Change your own devices one by one on their pages.'));
      } else box.append(errorNotice(err, 'the rollouts'));
      return;
    }
    if (stopped) return;
    clear(box);
    if (!list.length) {
      box.append(notice('empty', 'No rollouts yet', 'Start one with `iotctl rollout create --config sampling_interval_s=30 --target type:environment` (docs/rollouts.md).'));
      return;
    }
    for (const r of list) {
      const evBox = h('div', {class: 'muted'}, h('button', {type: 'button', onclick: () => events(r, evBox)}, 'Show events'));
      const active = ['running', 'paused'].includes(r.status);
      box.append(h('article', {class: 'panel rollout', dataset: {rollout: String(r.id)}},
        h('h2', {}, `#${r.id} ${r.name} `, badge(r.status, r.status === 'aborted' || r.status === 'failed' ? 'bad' : r.status === 'completed' ? 'ok' : 'warn')),
        h('p', {class: 'muted'}, `${r.kind}${r.release ? ` ${r.release}` : ''} · ${r.devices} devices · wave ${r.current_wave + 1} of ${r.waves.length} · created ${isoTime(r.created_at)} by ${r.created_by || '–'}`),
        r.abort_reason ? h('p', {class: 'error'}, `Stopped: ${r.abort_reason}`) : '',
        h('div', {class: 'table-wrap'}, h('table', {},
          h('thead', {}, h('tr', {}, ['Wave', 'Share', 'Devices', 'States'].map((c) => h('th', {scope: 'col'}, c)))),
          h('tbody', {}, r.per_wave.map((w) => h('tr', {class: w.wave === r.current_wave ? 'current' : ''},
            h('td', {}, w.wave === 0 ? 'canary' : `wave ${w.wave}`), h('td', {class: 'num'}, `${num(w.percent, 1)}%`),
            h('td', {class: 'num'}, w.devices), h('td', {}, counts(w.counts))))))),
        h('p', {}, 'Gates: ', h('code', {}, JSON.stringify(r.gates))),
        mayWrite && active ? h('div', {class: 'actions'},
          r.status === 'running' ? h('button', {type: 'button', onclick: () => act(r, 'pause')}, 'Pause') : h('button', {type: 'button', onclick: () => act(r, 'resume')}, 'Resume'),
          h('button', {type: 'button', class: 'danger', onclick: () => act(r, 'abort')}, 'Abort…')) : '',
        evBox));
    }
  }

  await load();
  const t = setInterval(load, 10000);
  return () => { stopped = true; clearInterval(t); };
}
