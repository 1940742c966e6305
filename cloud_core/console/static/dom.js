// Building the page safely: elements from data, never HTML strings (no injection from device names).

/** h('a', {href: '#/x', class: 'c', onclick: fn}, 'text', child) -> an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** A message block for empty, error and no-permission states. */
export function notice(kind, title, ...body) {
  return h('section', {class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status'},
    h('h2', {}, title), ...body.map((b) => (typeof b === 'string' ? h('p', {}, b) : b)));
}

/** The notice for an API error: unreachable, not signed in, no permission, not found, or its detail. */
export function errorNotice(err, what = 'this') {
  if (err.status === 0) {
    return notice('error', 'The platform is unreachable',
      'The console cannot reach the API. Is `iotctl up` (or `iotctl api`) still running? It retries by itself.');
  }
  if (err.status === 403) return notice('denied', 'No permission', `You may not see ${what}: ${err.message}`);
  if (err.status === 404) return notice('denied', 'Not found', `${err.message}. It does not exist, or it is not one you may see.`);
  return notice('error', `Could not load ${what}`, err.message);
}

const confirmDialog = () => document.getElementById('confirm');

/** Ask before an action that cannot be undone; resolves true when confirmed (keyboard: Enter/Escape). */
export function confirmAction(title, text, okLabel = 'Confirm') {
  const dialog = confirmDialog();
  dialog.querySelector('#confirm-title').textContent = title;
  dialog.querySelector('#confirm-text').textContent = text;
  dialog.querySelector('#confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), {once: true});
    dialog.returnValue = 'cancel';
    dialog.showModal();
    dialog.querySelector('#confirm-cancel').focus();
  });
}

export function badge(text, kind) {
  return h('span', {class: `badge badge-${kind || text}`}, text);
}
