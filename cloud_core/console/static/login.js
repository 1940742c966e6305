// Signing in: a username and password (POST /v1/auth/login), or an API key such as the bootstrap
// admin's admin.token (POST /v1/console/session). Both leave an HttpOnly cookie; nothing is kept in
// the page's storage.

import {api} from './api.js';
import {h} from './dom.js';
import {signedIn} from './main.js';

export const title = 'Sign in';

export function render(main) {
  const error = h('p', {class: 'error', role: 'alert', id: 'login-error'});
  const username = h('input', {id: 'username', name: 'username', autocomplete: 'username', required: true});
  const password = h('input', {id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true});
  const token = h('input', {id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true});

  async function submit(event, call) {
    event.preventDefault();
    error.textContent = '';
    const button = event.target.querySelector('button');
    button.disabled = true;
    try {
      await call();
      await signedIn();
    } catch (err) {
      error.textContent = err.status === 0 ? 'The platform is unreachable: is it running?' : err.message;
    } finally {
      button.disabled = false;
    }
  }

  main.append(
    h('h1', {}, 'Sign in'),
    error,
    h('div', {class: 'cards'},
      h('form', {class: 'card', id: 'password-form', onsubmit: (e) => submit(e, () =>
        api('/v1/auth/login', {method: 'POST', body: {username: username.value, password: password.value}}))},
      h('h2', {}, 'With your password'),
      h('label', {for: 'username'}, 'Username'), username,
      h('label', {for: 'password'}, 'Password'), password,
      h('button', {type: 'submit', class: 'primary'}, 'Sign in')),
      h('form', {class: 'card', id: 'token-form', onsubmit: (e) => submit(e, () =>
        api('/v1/console/session', {method: 'POST', body: {token: token.value.trim()}}))},
      h('h2', {}, 'With an API key'),
      h('p', {class: 'muted'}, 'For the first sign-in: the admin key that `iotctl up` wrote to admin.token in its state directory (`cat ~/.local/share/edu-platform/admin.token`).'),
      h('label', {for: 'token'}, 'API key'), token,
      h('button', {type: 'submit', class: 'primary'}, 'Sign in with the key'))),
  );
  username.focus();
}

