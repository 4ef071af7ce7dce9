// The public REST API of the gateway this page came from, and the session
// (access + refresh token) of whoever is signed in in this tab.
//
// Tokens live in sessionStorage: one account per tab, gone with the tab.
// A 401 on an authenticated request triggers one refresh (rotation) and a
// retry; a failed refresh signs the tab out.

const STORAGE_KEY = 'unilink.session';

/** An answer that was not 2xx: `status` and the server's `detail`. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `request failed (${status})`);
    this.name = 'ApiError';
    this.status = status;
  }
}

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(STORAGE_KEY)) || null;
  } catch {
    return null;
  }
}

let session = loadSession();
const listeners = new Set();

function saveSession(next) {
  session = next;
  if (next) {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(next));
  } else {
    sessionStorage.removeItem(STORAGE_KEY);
  }
  for (const listener of listeners) listener(session);
}

/** Calls `listener(session | null)` whenever the signed-in user changes. */
export function onSessionChange(listener) {
  listeners.add(listener);
}

/** `{access_token, refresh_token, user}` or null. */
export function currentSession() {
  return session;
}

export function currentUser() {
  return session?.user ?? null;
}

/** Seconds until the access token expires (negative when expired). */
function tokenLifetime(token) {
  try {
    const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return payload.exp - Date.now() / 1000;
  } catch {
    return -1;
  }
}

async function send(method, path, { body, token } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (e) {
    throw new ApiError(0, `network error: ${e.message}`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, data?.detail);
  }
  return data;
}

let refreshing = null;

/** Rotates the refresh token once (concurrent callers share the attempt). */
async function refresh() {
  if (!session?.refresh_token) throw new ApiError(401, 'not signed in');
  if (!refreshing) {
    const presented = session.refresh_token;
    refreshing = send('POST', '/auth/refresh', { body: { refresh_token: presented } })
      .then((pair) => {
        saveSession({ ...session, ...pair, user: pair.user ?? session.user });
      })
      .catch((e) => {
        if (e.status === 401 || e.status === 400) saveSession(null);
        throw e;
      })
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

/** A valid access token, refreshed first when it expires within a minute. */
export async function freshToken() {
  if (!session) throw new ApiError(401, 'not signed in');
  if (tokenLifetime(session.access_token) < 60 && session.refresh_token) {
    await refresh();
  }
  return session.access_token;
}

const RETRYABLE = new Set([0, 502, 503, 504]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * An authenticated request; one refresh and retry on 401. Reads (GET) are
 * also retried, up to four times over ~4 s, when the server asks for it
 * (502/503/504) or did not answer: they are safe to repeat.
 */
async function authed(method, path, body) {
  const waits = method === 'GET' ? [250, 500, 1000, 2000] : [];
  for (let attempt = 0; ; attempt++) {
    try {
      const token = await freshToken();
      try {
        return await send(method, path, { body, token });
      } catch (e) {
        if (e.status !== 401 || !session?.refresh_token) throw e;
        await refresh();
        return await send(method, path, { body, token: session.access_token });
      }
    } catch (e) {
      if (!RETRYABLE.has(e.status) || attempt >= waits.length) throw e;
      await sleep(waits[attempt]);
    }
  }
}

function signedIn(answer) {
  saveSession({
    access_token: answer.access_token,
    refresh_token: answer.refresh_token ?? null,
    user: answer.user,
  });
  return answer.user;
}

export const auth = {
  register: (form) => send('POST', '/auth/register', { body: form }),
  resendVerification: (email) => send('POST', '/auth/resend-verification', { body: { email } }),
  verifyEmail: async (token) => signedIn(await send('POST', '/auth/verify-email', { body: { token } })),
  /** Step 1: password → a code is emailed (202 `{otp_required}`). */
  login: (email, password) => send('POST', '/auth/login', { body: { email, password } }),
  /** Step 2: the emailed code → signed in. */
  verifyOtp: async (email, otp) => signedIn(await send('POST', '/auth/login/verify-otp', { body: { email, otp } })),
  logout: async () => {
    try {
      // The full logout: this session's refresh family and access token are
      // revoked, and its sockets closed (a bare POST only marks us offline).
      if (session) {
        const body = session.refresh_token ? { refresh_token: session.refresh_token } : undefined;
        await send('POST', '/auth/logout', { token: session.access_token, body });
      }
    } finally {
      saveSession(null);
    }
  },
};

export const users = {
  get: (userId) => authed('GET', `/users/${encodeURIComponent(userId)}`),
  me: async () => {
    const user = await authed('GET', '/users/me');
    if (session) saveSession({ ...session, user });
    return user;
  },
};

const id = (value) => encodeURIComponent(value);

export const calls = {
  available: () => authed('GET', '/calls/available?limit=50'),
  initiate: (receiverId) => authed('POST', '/calls/initiate', { receiver_id: receiverId }),
  accept: (callId) => authed('POST', `/calls/accept/${id(callId)}`),
  reject: (callId) => authed('POST', `/calls/reject/${id(callId)}`),
  end: (callId) => authed('POST', `/calls/end/${id(callId)}`),
  byId: (callId) => authed('GET', `/calls/by-id/${id(callId)}`),
  pending: () => authed('GET', '/calls/pending'),
  active: () => authed('GET', '/calls/active'),
  history: () => authed('GET', '/calls/history?limit=20'),
  iceServers: () => authed('GET', '/calls/ice-servers'),
  connectionState: (callId) => authed('GET', `/ws/webrtc/connection-state/${id(callId)}`),
};

/** `ws(s)://<this host><path>?token=<access token>[&extra]`. */
export async function socketUrl(path, extra = {}) {
  const token = await freshToken();
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('token', token);
  for (const [key, value] of Object.entries(extra)) url.searchParams.set(key, String(value));
  return url.toString();
}

/** Best effort: tells the server about an error in this page. */
export function reportClientError(message, stack) {
  const body = JSON.stringify({
    message: String(message).slice(0, 2000),
    stack: stack ? String(stack).slice(0, 8000) : undefined,
    url: window.location.pathname,
    user_agent: navigator.userAgent.slice(0, 2000),
    level: 'error',
  });
  try {
    navigator.sendBeacon('/client-errors', new Blob([body], { type: 'text/plain' }));
  } catch {
    /* nothing more to do */
  }
}
