// UniLink reference client: the page's wiring. Views: signed out (log in in
// two steps, register, verify), home (who is online, call history), call.
// Everything goes through the public API of the gateway that served the page.

import { auth, calls, currentSession, currentUser, onSessionChange, reportClientError, users } from './api.js';
import { CallSession } from './call.js';
import { PresenceSocket } from './presence.js';

const $ = (id) => document.getElementById(id);
const ONLINE_POLL_MS = 5_000;

const state = {
  presence: null,
  onlineTimer: null,
  call: null, // CallSession
  callPeerName: '',
  ringing: null, // {call_id, caller_username, ...} shown in the incoming dialog
  loginEmail: '',
};

// ------------------------------------------------------------------ helpers --

function setStatus(text, kind = 'info') {
  const status = $('status');
  status.textContent = text;
  status.dataset.kind = kind;
}

function showError(prefix, e) {
  setStatus(`${prefix}: ${e?.message ?? e}`, 'error');
}

function element(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('aria-')) el.setAttribute(key, value);
    else el[key] = value;
  }
  for (const child of children) if (child != null) el.append(child);
  return el;
}

function formValues(form) {
  return Object.fromEntries(new FormData(form).entries());
}

/** Runs `action` with the form's buttons disabled. */
async function busy(form, action) {
  const buttons = [...form.querySelectorAll('button')];
  for (const b of buttons) b.disabled = true;
  try {
    return await action();
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

function timeOf(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleString();
}

function duration(seconds) {
  if (seconds == null) return '';
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  return m ? `${m} min ${s} s` : `${s} s`;
}

// -------------------------------------------------------------------- views --

function showView(name) {
  $('auth-view').hidden = name !== 'auth';
  $('home-view').hidden = name !== 'home';
  $('call-view').hidden = name !== 'call';
}

function showPanel(name) {
  for (const panel of document.querySelectorAll('#auth-view [data-panel]')) {
    panel.hidden = panel.dataset.panel !== name;
  }
  const tab = name === 'otp' ? 'login' : name;
  for (const button of document.querySelectorAll('#auth-view .tab')) {
    button.setAttribute('aria-pressed', String(button.dataset.tab === tab));
  }
  const first = document.querySelector(`#auth-view [data-panel="${name}"] input`);
  if (first) first.focus();
}

// ----------------------------------------------------------------- sign-in --

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const { email, password } = formValues(form);
  busy(form, async () => {
    try {
      await auth.login(email.trim(), password);
      state.loginEmail = email.trim();
      $('otp-email').textContent = state.loginEmail;
      $('otp-code').value = '';
      showPanel('otp');
      setStatus('Check your email for the login code.');
    } catch (e) {
      showError('Log in failed', e);
    }
  });
});

$('otp-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const { otp } = formValues(form);
  busy(form, async () => {
    try {
      await auth.verifyOtp(state.loginEmail, otp.trim());
      $('login-password').value = '';
      setStatus('');
    } catch (e) {
      showError('That code did not work', e);
    }
  });
});

$('otp-back').addEventListener('click', () => showPanel('login'));

$('register-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const values = formValues(form);
  busy(form, async () => {
    try {
      await auth.register({
        email: values.email.trim(),
        username: values.username.trim(),
        full_name: values.full_name.trim(),
        password: values.password,
      });
      form.reset();
      $('verify-email').value = values.email.trim();
      $('login-email').value = values.email.trim();
      showPanel('verify');
      setStatus(`Account created. We sent a verification link to ${values.email.trim()}.`);
    } catch (e) {
      showError('Registration failed', e);
    }
  });
});

async function verify(token) {
  try {
    await auth.verifyEmail(token);
    setStatus('Email verified. Welcome!');
  } catch (e) {
    showError('Verification failed', e);
    showView('auth');
    showPanel('verify');
  }
}

$('verify-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  busy(form, () => verify($('verify-token').value.trim()));
});

$('resend').addEventListener('click', async () => {
  const email = $('verify-email').value.trim();
  if (!email) {
    setStatus('Enter your email first.', 'error');
    $('verify-email').focus();
    return;
  }
  try {
    await auth.resendVerification(email);
    setStatus(`If ${email} has an account waiting for verification, a new link is on its way.`);
  } catch (e) {
    showError('Could not send the link', e);
  }
});

for (const tab of document.querySelectorAll('#auth-view .tab')) {
  tab.addEventListener('click', () => showPanel(tab.dataset.tab));
}

$('logout').addEventListener('click', async () => {
  if (state.call) await state.call.hangUp();
  try {
    await auth.logout();
  } catch {
    /* signed out locally anyway */
  }
  setStatus('Signed out.');
});

// ----------------------------------------------------------------- online --

async function refreshOnline() {
  if (!currentSession()) return;
  try {
    const people = await calls.available();
    const list = $('online-list');
    list.replaceChildren(
      ...people.map((person) => {
        const name = person.full_name || person.username;
        const button = element(
          'button',
          { type: 'button', textContent: 'Call', 'aria-label': `Call ${name}` },
        );
        button.addEventListener('click', () => startCall(person));
        return element(
          'li',
          { dataset: { userId: person.id, username: person.username } },
          element('div', { className: 'who' }, element('strong', { textContent: name }), element('span', { textContent: `@${person.username}` })),
          button,
        );
      }),
    );
    $('online-empty').hidden = people.length > 0;
  } catch (e) {
    if (e.status !== 401) showError('Could not load who is online', e);
  }
}

async function refreshHistory() {
  if (!currentSession()) return;
  const me = currentUser()?.id;
  try {
    const history = await calls.history();
    $('history-list').replaceChildren(
      ...history.map((call) => {
        const outgoing = call.initiator_id === me;
        const peer = (outgoing ? call.receiver_username : call.initiator_username) || 'deleted user';
        const direction = outgoing ? 'Outgoing' : 'Incoming';
        return element(
          'li',
          { dataset: { callId: call.id, status: call.status, peer } },
          element(
            'div',
            { className: 'who' },
            element('strong', { textContent: `${direction} · @${peer}` }),
            element('span', { className: 'when', textContent: `${timeOf(call.started_at)} ${duration(call.duration_seconds)}`.trim() }),
          ),
          element('span', { className: 'badge', textContent: call.status }),
        );
      }),
    );
    $('history-empty').hidden = history.length > 0;
  } catch (e) {
    if (e.status !== 401) showError('Could not load call history', e);
  }
}

$('refresh-online').addEventListener('click', refreshOnline);
$('refresh-history').addEventListener('click', refreshHistory);

// "Always relay my calls": kept in this browser; off unless chosen.
const RELAY_CALLS_KEY = 'unilink.relayCalls';

function relayCalls() {
  try {
    return localStorage.getItem(RELAY_CALLS_KEY) === 'true';
  } catch {
    return false; // storage disabled
  }
}

$('relay-calls').checked = relayCalls();
$('relay-calls').addEventListener('change', (event) => {
  try {
    if (event.target.checked) localStorage.setItem(RELAY_CALLS_KEY, 'true');
    else localStorage.removeItem(RELAY_CALLS_KEY);
  } catch {
    setStatus('This browser does not keep settings; the choice lasts until the page is reloaded.', 'error');
  }
});

// ------------------------------------------------------------------- calls --

async function localMedia() {
  const attempts = [{ video: { width: 640, height: 480 }, audio: true }, { audio: true }];
  for (const constraints of attempts) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch {
      /* try with less */
    }
  }
  setStatus('No camera or microphone available: you will only receive.', 'error');
  return null;
}

function setCallState(text) {
  const badge = $('call-state');
  badge.textContent = text;
  badge.dataset.state = text;
}

function appendChat({ mine, text, timestamp }) {
  const who = mine ? 'You' : state.callPeerName;
  const time = timestamp ? new Date(timestamp) : null;
  const item = element(
    'li',
    { className: mine ? 'mine' : 'theirs', dataset: { from: mine ? 'me' : 'peer' } },
    element('strong', { textContent: `${who}: ` }),
    element('span', { className: 'text', textContent: text }),
    time && !Number.isNaN(time.getTime()) ? element('span', { className: 'time', textContent: time.toLocaleTimeString() }) : null,
  );
  const log = $('chat-log');
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

/** Shows the call view and starts the call's peer connection and socket. */
function enterCall(call, localStream, peerName) {
  state.callPeerName = peerName;
  $('call-title').textContent = `Call with ${peerName}`;
  $('remote-video').setAttribute('aria-label', `${peerName}'s video`);
  $('chat-log').replaceChildren();
  $('call-notice').textContent = '';
  const stats = $('call-stats');
  stats.textContent = 'No video yet.';
  stats.dataset.framesDecoded = '0';
  stats.dataset.route = '';
  $('local-video').srcObject = localStream;
  $('remote-video').srcObject = null;
  for (const id of ['toggle-mute', 'toggle-camera']) $(id).setAttribute('aria-pressed', 'false');
  $('toggle-mute').textContent = 'Mute';
  $('toggle-camera').textContent = 'Camera off';
  showView('call');
  const session = new CallSession({
    call,
    me: currentUser().id,
    localStream,
    relayOnly: $('relay-calls').checked,
    on: {
      state: (s) => {
        setCallState(s);
        if (s === 'connected') setStatus('');
      },
      peerState: (s) => {
        $('call-notice').textContent = s === 'joined' ? `${peerName} joined.` : `${peerName}: ${s}`;
      },
      remoteStream: (stream) => {
        const video = $('remote-video');
        // One event per track, usually the same stream: a new srcObject
        // would restart the element.
        if (video.srcObject === stream) return;
        video.srcObject = stream;
        video.muted = false;
        $('sound-on').hidden = true;
        // Without a click on this page yet (it was reloaded), the browser
        // may refuse to play sound: play muted, offer to turn sound on.
        video.play().catch((e) => {
          if (e.name !== 'NotAllowedError') return;
          video.muted = true;
          video.play().catch(() => {});
          $('sound-on').hidden = false;
        });
      },
      chat: appendChat,
      notice: (text) => {
        $('call-notice').textContent = text;
      },
      stats: (video) => {
        if (!video) return;
        stats.dataset.framesDecoded = String(video.framesDecoded);
        stats.dataset.route = video.route ?? '';
        const via = video.route === 'relay' ? ' through the relay' : video.route === 'direct' ? ' directly' : '';
        stats.textContent = `Receiving video${via} ${video.width}×${video.height}, ${Math.round(video.fps)} fps, ${video.framesDecoded} frames decoded.`;
      },
      ended: (reason) => {
        if (state.call === session) state.call = null;
        $('local-video').srcObject = null;
        $('remote-video').srcObject = null;
        setCallState('ended');
        setStatus(`Call with ${peerName} over: ${reason}.`);
        showView(currentSession() ? 'home' : 'auth');
        refreshHistory();
        refreshOnline();
      },
    },
  });
  state.call = session;
  setCallState(call.status === 'pending' ? 'ringing' : 'connecting');
  session.start().catch((e) => {
    showError('The call could not start', e);
    session.hangUp('it could not start');
  });
  return session;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs a call action that is not safe to repeat blindly (initiate, accept).
 * When the server asks for a retry (502/503/504, or no answer) it is tried
 * again; a 409 on a retry may mean the first attempt went through after
 * all, so `reconcile()` looks for its result before giving up.
 */
async function retryingAction(action, reconcile) {
  const waits = [300, 600, 1200];
  let retried = false;
  for (let attempt = 0; ; attempt++) {
    try {
      return await action();
    } catch (e) {
      if (e.status === 409 && retried) {
        const done = await reconcile().catch(() => null);
        if (done) return done;
      }
      if (![0, 502, 503, 504].includes(e.status) || attempt >= waits.length) throw e;
      retried = true;
      await sleep(waits[attempt]);
    }
  }
}

async function startCall(person) {
  if (state.call) return;
  const name = person.full_name || person.username;
  setStatus(`Calling ${name}…`);
  const local = await localMedia();
  let call;
  try {
    call = await retryingAction(
      () => calls.initiate(person.id),
      async () => {
        const pending = await calls.pending();
        return pending?.initiator_id === currentUser()?.id && pending.receiver_id === person.id ? pending : null;
      },
    );
  } catch (e) {
    for (const track of local?.getTracks() ?? []) track.stop();
    showError(`Could not call ${name}`, e);
    return;
  }
  // The caller joins the call's socket at once, while it rings: the
  // callee's arrival is announced with `connection_ready`.
  enterCall(call, local, person.username);
}

$('hang-up').addEventListener('click', () => state.call?.hangUp());

$('sound-on').addEventListener('click', (event) => {
  const video = $('remote-video');
  video.muted = false;
  video.play().catch(() => {});
  event.currentTarget.hidden = true;
});

$('toggle-mute').addEventListener('click', (event) => {
  if (!state.call) return;
  const muted = state.call.toggleMute();
  event.currentTarget.setAttribute('aria-pressed', String(muted));
  event.currentTarget.textContent = muted ? 'Unmute' : 'Mute';
});

$('toggle-camera').addEventListener('click', (event) => {
  if (!state.call) return;
  const off = state.call.toggleCamera();
  event.currentTarget.setAttribute('aria-pressed', String(off));
  event.currentTarget.textContent = off ? 'Camera on' : 'Camera off';
});

$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('chat-input');
  if (state.call && input.value.trim()) {
    state.call.chat(input.value);
    input.value = '';
  }
  input.focus();
});

// ----------------------------------------------------------- incoming call --

function showIncoming(ring) {
  if (state.call || state.ringing?.call_id === ring.call_id) return;
  state.ringing = ring;
  $('incoming-text').textContent = `@${ring.caller_username || 'someone'} is calling you.`;
  const dialog = $('incoming');
  if (!dialog.open) dialog.showModal();
  $('accept-call').focus();
}

function closeIncoming() {
  state.ringing = null;
  const dialog = $('incoming');
  if (dialog.open) dialog.close();
}

$('accept-call').addEventListener('click', async () => {
  const ring = state.ringing;
  if (!ring) return;
  closeIncoming();
  const local = await localMedia();
  try {
    const call = await retryingAction(
      () => calls.accept(ring.call_id),
      async () => {
        const current = await calls.byId(ring.call_id);
        return current?.status === 'ongoing' ? current : null;
      },
    );
    enterCall(call, local, ring.caller_username || 'caller');
  } catch (e) {
    for (const track of local?.getTracks() ?? []) track.stop();
    showError('Could not accept the call', e);
  }
});

$('reject-call').addEventListener('click', async () => {
  const ring = state.ringing;
  if (!ring) return;
  closeIncoming();
  try {
    await retryingAction(
      () => calls.reject(ring.call_id),
      async () => {
        const current = await calls.byId(ring.call_id);
        return current?.status === 'rejected' ? current : null;
      },
    );
    setStatus(`Declined the call from @${ring.caller_username}.`);
  } catch (e) {
    showError('Could not decline the call', e);
  }
  refreshHistory();
});

// A dialog closed with Escape declines the call.
$('incoming').addEventListener('cancel', (event) => {
  event.preventDefault();
  $('reject-call').click();
});

function onPush(push) {
  const callId = push.call_id;
  const mine = state.call && state.call.id === callId;
  switch (push.type) {
    case 'incoming_call':
      showIncoming(push);
      break;
    case 'call_accepted':
      if (mine) setCallState('connecting');
      break;
    case 'call_rejected':
      if (mine) state.call.finish('the call was declined');
      break;
    case 'call_missed':
      if (state.ringing?.call_id === callId) {
        const from = state.ringing.caller_username || 'someone';
        closeIncoming();
        setStatus(`Missed call from @${from}.`);
      }
      if (mine) state.call.finish('no answer');
      refreshHistory();
      break;
    case 'call_ended':
      if (state.ringing?.call_id === callId) {
        closeIncoming();
        setStatus('The caller hung up.');
        refreshHistory();
      }
      if (mine) state.call.finish('the call has ended');
      break;
    default:
      break;
  }
}

// --------------------------------------------------------------- sessions --

/** Shows the ring of a call pending for us, if any. */
async function ringIfPending() {
  if (state.call) return;
  try {
    const pending = await calls.pending();
    if (pending && !state.call && pending.receiver_id === currentUser()?.id) {
      showIncoming({ call_id: pending.id, caller_id: pending.initiator_id, caller_username: pending.initiator_username ?? '' });
    }
  } catch {
    /* the next push or poll will tell */
  }
}

/** A call that is still open (after a reload): ring again or rejoin it. */
async function resumeOpenCall() {
  try {
    const active = await calls.active();
    if (active && !state.call) {
      const me = currentUser().id;
      const peer = active.initiator_id === me ? active.receiver_id : active.initiator_id;
      setStatus('Rejoining your ongoing call…');
      const name = await users
        .get(peer)
        .then((u) => u.username)
        .catch(() => 'the other side');
      enterCall(active, await localMedia(), name);
      return;
    }
    const pending = await calls.pending();
    if (pending && !state.call && pending.receiver_id === currentUser().id) {
      showIncoming({ call_id: pending.id, caller_id: pending.initiator_id, caller_username: '' });
    }
  } catch {
    /* nothing to resume */
  }
}

function signedIn(user) {
  $('me-name').textContent = `${user.full_name || user.username} (@${user.username})`;
  $('whoami').hidden = false;
  if (!state.call) showView('home');
  if (!state.presence) {
    let wasOnline = false;
    state.presence = new PresenceSocket(user.id, {
      onPush,
      onStatus: (status) => {
        const badge = $('presence-status');
        badge.textContent = status;
        badge.dataset.status = status;
        // Back after a break (a replica restarted): a ring pushed meanwhile
        // was lost with the old socket, so ask for it.
        if (status === 'online' && wasOnline === null) ringIfPending();
        if (status === 'online') wasOnline = true;
        else if (wasOnline) wasOnline = null;
      },
    });
  }
  clearInterval(state.onlineTimer);
  state.onlineTimer = setInterval(() => {
    if (!state.call) refreshOnline();
  }, ONLINE_POLL_MS);
  refreshOnline();
  refreshHistory();
}

function signedOut() {
  state.presence?.close();
  state.presence = null;
  clearInterval(state.onlineTimer);
  state.call?.finish('signed out');
  closeIncoming();
  $('whoami').hidden = true;
  $('online-list').replaceChildren();
  $('history-list').replaceChildren();
  showView('auth');
  showPanel('login');
}

let lastUserId = null;
onSessionChange((session) => {
  const user = session?.user ?? null;
  if (user && user.id !== lastUserId) {
    lastUserId = user.id;
    signedIn(user);
    resumeOpenCall();
  } else if (!user && lastUserId) {
    lastUserId = null;
    signedOut();
  }
});

window.addEventListener('error', (event) => reportClientError(event.message, event.error?.stack));
window.addEventListener('unhandledrejection', (event) => {
  reportClientError(event.reason?.message ?? String(event.reason), event.reason?.stack);
});

// For tests and the curious (devtools): the live call's peer connection.
window.unilink = {
  get call() {
    return state.call;
  },
  get peerConnection() {
    return state.call?.pc ?? null;
  },
};

// ------------------------------------------------------------------ start --

async function boot() {
  const params = new URLSearchParams(window.location.search);
  const token = params.get('token');
  if (window.location.pathname.endsWith('/verify') && token) {
    // Arrived from the verification email's link: verify, then tidy the URL.
    window.history.replaceState(null, '', window.location.pathname.replace(/\/verify$/, ''));
    showView('auth');
    setStatus('Verifying your email…');
    await verify(token);
    return;
  }
  const session = currentSession();
  if (session?.user) {
    lastUserId = session.user.id;
    signedIn(session.user);
    resumeOpenCall();
    users.me().catch(() => {});
  } else {
    showView('auth');
    showPanel('login');
  }
}

boot();
