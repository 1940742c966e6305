// The console's shell: who is signed in, the navigation, and which page the address (#/...) shows.
// Each page is a module whose render(main, params, session) returns a function that stops it
// (closes its live stream, its timers).

import {api, ApiError} from './api.js';
import {clear, h, notice} from './dom.js';
import * as fleet from './fleet.js';
import * as device from './device.js';
import * as alerts from './alerts.js';
import * as rollouts from './rollouts.js';
import * as simulator from './simulator.js';
import * as login from './login.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const banner = document.getElementById('banner');
const ROUTES = [
  [/^#\/fleet$/, fleet, 'fleet'],
  [/^#\/device\/([^/?]+)(?:\?(.*))?$/, device, 'fleet'],
  [/^#\/alerts$/, alerts, 'alerts'],
  [/^#\/rollouts$/, rollouts, 'rollouts'],
  [/^#\/simulator(?:\/(\d+))?$/, simulator, 'simulator'],
  [/^#\/login$/, login, null],
];

const session = {me: null};
let stopPage = null;
let wanted = null;

export function showBanner(text, kind = 'info') {
  banner.hidden = !text;
  banner.className = `banner banner-${kind}`;
  banner.textContent = text || '';
}

async function loadMe() {
  if (!document.cookie.split('; ').some((c) => c.startsWith('edu_csrf='))) {
    session.me = null; // never signed in from this browser (sign-ins set that cookie): no request to fail
    renderWho();
    return null;
  }
  try {
    session.me = await api('/v1/auth/me', {retry: true});
  } catch (err) {
    session.me = null;
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
  }
  renderWho();
  return session.me;
}

function renderWho() {
  clear(who);
  nav.hidden = !session.me;
  if (!session.me) return;
  const me = session.me;
  const classes = me.teacher_of.length ? ` · teaches ${me.teacher_of.length} class${me.teacher_of.length > 1 ? 'es' : ''}` : '';
  who.append(h('span', {class: 'muted'}, `${me.user.username} (${me.role}${classes})`), ' ',
    h('button', {type: 'button', class: 'link', id: 'signout', onclick: signOut}, 'Sign out'));
}

async function signOut() {
  try { await api('/v1/auth/logout', {method: 'POST', body: {}}); } catch (e) { /* signed out anyway */ }
  session.me = null;
  renderWho();
  location.hash = '#/login';
}

export async function signedIn() {
  await loadMe();
  const next = wanted && wanted !== '#/login' ? wanted : '#/fleet';
  wanted = null;
  if (location.hash === next) route(); else location.hash = next;
}

async function route() {
  if (stopPage) { stopPage(); stopPage = null; }
  const hash = location.hash || '#/fleet';
  if (!location.hash) { history.replaceState(null, '', '#/fleet'); }
  if (!session.me && hash !== '#/login') {
    wanted = hash;
    location.hash = '#/login';
    return;
  }
  const found = ROUTES.map(([re, page, tab]) => [hash.match(re), page, tab]).find(([m]) => m);
  for (const a of nav.querySelectorAll('a')) {
    if (found && a.dataset.page === found[2]) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  clear(main);
  showBanner('');
  if (!found) {
    main.append(notice('empty', 'No such page', h('p', {}, h('a', {href: '#/fleet'}, 'Go to the fleet'))));
    return;
  }
  const [match, page] = found;
  document.title = `${page.title || 'console'} · edu-platform`;
  try {
    stopPage = await page.render(main, match.slice(1), session) || null;
  } catch (err) {
    console.warn('page failed', err);
    main.append(notice('error', 'This page failed', String(err.message || err)));
  }
}

window.addEventListener('hashchange', route);
window.addEventListener('console:signed-out', () => {
  if (session.me) {
    session.me = null;
    renderWho();
    showBanner('Your session ended: sign in again.', 'warn');
    wanted = location.hash;
    location.hash = '#/login';
  }
});

(async () => {
  try {
    await loadMe();
  } catch (err) {
    clear(main);
    main.append(notice('error', 'The platform is unreachable',
      'The console could not reach the API. Is `iotctl up` still running? Reload the page when it is.'));
    return;
  }
  route();
})();
