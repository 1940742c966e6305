// The simulator, for students: start a scenario from the catalogue on new devices of your own, watch
// it run (each device's live page), then put the ground truth (what the simulator injected) next to
// the detector's alerts, with precision and recall.

import {get, post} from './api.js';
import {badge, clear, errorNotice, h, notice} from './dom.js';
import {duration, num, pct, time} from './format.js';

export const title = 'Simulator';

function progress(run) {
  return h('progress', {max: '1', value: String(run.progress), 'aria-label': `progress ${pct(run.progress)}`});
}

async function renderList(main) {
  const catBox = h('div', {id: 'catalogue', class: 'cards'});
  const runsBox = h('div', {id: 'runs'});
  const msg = h('div', {id: 'sim-message', 'aria-live': 'polite'});
  main.append(h('h1', {}, 'Simulator'), msg,
    h('section', {class: 'panel', 'aria-labelledby': 'cat-h'}, h('h2', {id: 'cat-h'}, 'Scenarios'), catBox),
    h('section', {class: 'panel', 'aria-labelledby': 'runs-h'}, h('h2', {id: 'runs-h'}, 'Your runs'), runsBox));
  let stopped = false;

  async function start(name, button) {
    button.disabled = true;
    clear(msg);
    try {
      const run = await post('/v1/console/simulations', {scenario: name});
      location.hash = `#/simulator/${run.id}`;
    } catch (err) {
      msg.append(errorNotice(err, 'this scenario'));
      button.disabled = false;
    }
  }

  let catalogue;
  try {
    catalogue = await get('/v1/console/scenarios');
  } catch (err) {
    catBox.append(errorNotice(err, 'the scenarios'));
    return () => {};
  }
  if (!catalogue.available) {
    catBox.append(notice('empty', 'No simulator here',
      'This platform runs no simulator: the one `iotctl up` starts does. From a terminal: `iotctl sim run --scenario firmware_sim/scenarios/classroom.toml`.'));
  }
  for (const s of catalogue.scenarios) {
    const button = h('button', {type: 'button', class: 'primary', dataset: {scenario: s.name}}, `Start ${s.name}`);
    button.addEventListener('click', () => start(s.name, button));
    catBox.append(h('article', {class: 'card', dataset: {scenario: s.name}},
      h('h3', {}, s.title),
      h('p', {}, s.description),
      h('p', {class: 'muted'}, `${s.devices} devices · ${duration(s.duration_s)} simulated in about ${duration(Math.round(s.duration_s / s.speed))} · ${s.events} injected events`),
      button));
  }

  async function runs() {
    try {
      const list = await get('/v1/console/simulations');
      if (stopped) return;
      clear(runsBox);
      if (!list.length) { runsBox.append(h('p', {class: 'muted'}, 'No runs yet: start a scenario above.')); return; }
      runsBox.append(h('ul', {class: 'runs'}, list.map((r) => h('li', {},
        h('a', {href: `#/simulator/${r.id}`}, `Run ${r.id}: ${r.scenario}`), ' ', badge(r.status, r.status === 'failed' ? 'bad' : r.status === 'finished' ? 'ok' : 'warn'),
        ' ', progress(r), ` ${r.device_ids.length} devices (${r.fleet}-*)`))));
    } catch (err) {
      clear(runsBox).append(errorNotice(err, 'your runs'));
    }
  }
  await runs();
  const t = setInterval(runs, 5000);
  return () => { stopped = true; clearInterval(t); };
}

async function renderRun(main, runId) {
  const box = h('div', {id: 'run'});
  main.append(h('p', {}, h('a', {href: '#/simulator'}, '← Simulator')), box);
  let stopped = false;
  let timer = 0;

  async function load() {
    let run;
    try {
      run = await get(`/v1/console/simulations/${runId}`);
    } catch (err) {
      clear(box).append(errorNotice(err, `run ${runId}`));
      return;
    }
    if (stopped) return;
    clear(box);
    const running = ['starting', 'running'].includes(run.status);
    box.append(h('h1', {}, `Run ${run.id}: ${run.scenario} `, badge(run.status, run.status === 'failed' ? 'bad' : run.status === 'finished' ? 'ok' : 'warn')),
      h('p', {}, progress(run), ` ${pct(run.progress)} of ${time(run.sim_start_ms)} … ${time(run.sim_end_ms)} (simulated time)`),
      run.error ? notice('error', 'The run failed', run.error) : '',
      h('h2', {}, 'Devices'),
      h('p', {class: 'device-links'}, run.device_ids.length ? run.device_ids.map((d) => [h('a', {href: `#/device/${encodeURIComponent(d)}`}, d), ' ']) : 'registering…'),
      h('h2', {}, 'Ground truth and the detector'),
      h('dl', {class: 'pairs score'},
        h('dt', {}, 'Precision'), h('dd', {id: 'precision'}, run.precision === null ? '– (no alert yet)' : `${pct(run.precision)} (${run.true_episodes} of ${run.episodes.length} alerts overlap an injected event)`),
        h('dt', {}, 'Recall'), h('dd', {id: 'recall'}, run.recall === null ? '– (no value fault injected)' : `${pct(run.recall)} (${run.found} of ${run.counted_labels} value faults found)`)),
      running ? h('p', {class: 'muted'}, 'The figures grow as the run goes: the detector sees readings as the bridge stores them.') : '',
      h('div', {class: 'two'},
        h('section', {'aria-labelledby': 'truth-h'}, h('h3', {id: 'truth-h'}, `Injected events (${run.labels.length})`),
          run.labels.length ? h('div', {class: 'table-wrap'}, h('table', {id: 'labels'},
            h('thead', {}, h('tr', {}, ['Device', 'Kind', 'Field', 'From', 'To', 'Found'].map((c) => h('th', {scope: 'col'}, c)))),
            h('tbody', {}, run.labels.map((l) => h('tr', {},
              h('td', {}, h('a', {href: `#/device/${encodeURIComponent(l.device_id)}?at=${l.start_ms}`}, l.device_id)),
              h('td', {}, l.kind), h('td', {}, l.field || '–'), h('td', {}, time(l.start_ms)), h('td', {}, time(l.end_ms)),
              h('td', {}, !l.counted ? h('span', {class: 'muted'}, `${l.category}: the bridge's, not the detector's`)
                : l.found_by.length ? badge('found', 'ok') : badge('missed', 'bad'))))))) : h('p', {class: 'muted'}, 'None yet.')),
        h('section', {'aria-labelledby': 'det-h'}, h('h3', {id: 'det-h'}, `Detector alerts (${run.episodes.length})`),
          run.episodes.length ? h('div', {class: 'table-wrap'}, h('table', {id: 'alerts'},
            h('thead', {}, h('tr', {}, ['Device', 'Field', 'From', 'To', 'Peak', 'Verdict'].map((c) => h('th', {scope: 'col'}, c)))),
            h('tbody', {}, run.episodes.map((e) => h('tr', {},
              h('td', {}, h('a', {href: `#/device/${encodeURIComponent(e.device_id)}?at=${e.start_ms}`}, e.device_id)),
              h('td', {}, e.field === '*' ? 'all fields' : e.field), h('td', {}, time(e.start_ms)), h('td', {}, time(e.end_ms)),
              h('td', {class: 'num'}, num(e.peak_score)), h('td', {}, e.true ? badge('true alarm', 'ok') : badge('false alarm', 'bad')))))))
            : h('p', {class: 'muted'}, 'No alerts yet.'))));
    if (running) {
      box.append(h('div', {class: 'actions'}, h('button', {type: 'button', onclick: async () => {
        try { await post(`/v1/console/simulations/${run.id}/stop`); } catch (err) { box.prepend(errorNotice(err, 'this run')); }
        load();
      }}, 'Stop the run')));
    }
    timer = setTimeout(load, running ? 2000 : 15000);
  }
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}

export function render(main, [runId]) {
  return runId ? renderRun(main, Number(runId)) : renderList(main);
}
