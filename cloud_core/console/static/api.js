// The REST API from the page: same origin, cookie sign-in (HttpOnly) with the CSRF header on changes,
// one refresh of an expired access token, and errors that say what went wrong.

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function cookie(name) {
  const found = document.cookie.split('; ').find((c) => c.startsWith(`${name}=`));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : '';
}

let refreshing = null;

/** Spend the refresh cookie for a new access cookie (once at a time); true when it worked. */
export function refresh() {
  if (!refreshing) {
    refreshing = fetch('/v1/auth/refresh', {method: 'POST', credentials: 'same-origin'})
      .then((r) => r.ok, () => false)
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** Call the API; resolves to the parsed JSON (null for 204), rejects with an ApiError. */
export async function api(path, {method = 'GET', body, retry = true} = {}) {
  const headers = {Accept: 'application/json'};
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = cookie('edu_csrf');
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'the platform is unreachable', 'unreachable');
  }
  if (response.status === 401 && retry && !path.startsWith('/v1/auth/') && await refresh()) {
    return api(path, {method, body, retry: false});
  }
  if (!response.ok) {
    let detail = response.statusText;
    let code;
    try {
      const data = await response.json();
      detail = data.detail || detail;
      code = data.code;
    } catch (e) { /* not JSON: keep the status text */ }
    if (response.status === 401) window.dispatchEvent(new CustomEvent('console:signed-out'));
    throw new ApiError(response.status, typeof detail === 'string' ? detail : JSON.stringify(detail), code);
  }
  return response.status === 204 ? null : response.json();
}

export const get = (path) => api(path);
export const post = (path, body) => api(path, {method: 'POST', body});
export const put = (path, body) => api(path, {method: 'PUT', body});
