// End-to-end test of the UniLink reference web client: two headless
// Chromium contexts with fake cameras, each pinned (by the balancer's
// affinity cookie) to a different gateway replica, make real WebRTC calls
// through the fleet. Started by scripts/e2e.sh inside a private network
// namespace, with the fleet already up; see that script's --help.
//
// Environment (set by scripts/e2e.sh):
//   E2E_BASE_URL   the balancer, e.g. http://127.0.0.1:8080
//   E2E_SMTP_PORT  where this script's SMTP sink listens (the notification
//                  service's SMTP_SERVER/SMTP_PORT point here)
//   E2E_OUT_DIR    screenshots go here
//   E2E_GATEWAYS   a=<pid>@<url>,b=…,c=…: the gateway replicas (own address, metrics);
//                  the balancer sends context A to a and B to b, each to c when its own is down
//   E2E_SIGNALING  1=<pid>@<metrics url>,2=<pid>@<metrics url>: the signaling replicas
//   E2E_TURN_SECRET, E2E_TURN_RELAY_PORTS (low-high), E2E_TURN_LOG: the coturn
//                  the script started (deploy/coturn/turnserver.conf) and
//                  signaling's TURN_URLS point at
//   CHROMIUM       browser executable [/usr/bin/chromium]

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { probeTurn, selectedRoute } from './turn.mjs';

const BASE = required('E2E_BASE_URL');
const SMTP_PORT = Number(required('E2E_SMTP_PORT'));
const OUT_DIR = required('E2E_OUT_DIR');
/** `name=<pid>@<url>,…` → [{name, pid, url, killed}]. */
function replicas(variable) {
  return required(variable)
    .split(',')
    .map((entry) => {
      const [name, rest] = entry.split('=');
      const [pid, url] = rest.split('@');
      return { name, pid: Number(pid), url, killed: false };
    });
}
const GATEWAYS = Object.fromEntries(replicas('E2E_GATEWAYS').map((g) => [g.name, g]));
const SIGNALING = replicas('E2E_SIGNALING');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TURN_SECRET = required('E2E_TURN_SECRET');
const TURN_RELAY_PORTS = required('E2E_TURN_RELAY_PORTS').split('-').map(Number);
const TURN_LOG = required('E2E_TURN_LOG');
const OVERALL_TIMEOUT_MS = 150_000;
const STEP_TIMEOUT_MS = 30_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`[e2e] ${name} is not set (run scripts/e2e.sh)`);
    process.exit(2);
  }
  return value;
}

const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const log = (...args) => console.log(`[e2e ${elapsed()}]`, ...args);

async function step(name, action) {
  const t0 = Date.now();
  log(`▶ ${name}`);
  const result = await action();
  log(`✔ ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  return result;
}

// ---------------------------------------------------------------- SMTP sink --
// A real SMTP server (the plain protocol, no TLS offered, so lettre's
// opportunistic STARTTLS stays plain) that keeps what it receives.

function decodeQuotedPrintable(text) {
  const bytes = [];
  const soft = text.replace(/=\r?\n/g, '');
  for (let i = 0; i < soft.length; i++) {
    const c = soft[i];
    if (c === '=' && /^[0-9A-Fa-f]{2}$/.test(soft.slice(i + 1, i + 3))) {
      bytes.push(parseInt(soft.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(c, 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function parseEntity(raw) {
  const split = raw.search(/\r?\n\r?\n/);
  const head = split < 0 ? raw : raw.slice(0, split);
  const body = split < 0 ? '' : raw.slice(split).replace(/^\r?\n\r?\n/, '');
  const headers = {};
  for (const line of head.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { headers, body };
}

/** The text of a message: its text/plain parts, decoded. */
function mailText(raw) {
  const { headers, body } = parseEntity(raw);
  const type = headers['content-type'] || 'text/plain';
  const boundary = /boundary="?([^";]+)"?/i.exec(type)?.[1];
  if (/^multipart\//i.test(type) && boundary) {
    const parts = body.split(`--${boundary}`).slice(1);
    const texts = parts.filter((p) => !p.startsWith('--')).map((p) => mailText(p.replace(/^\r?\n/, '')));
    return texts.join('\n');
  }
  if (!/^text\/plain/i.test(type)) return '';
  const encoding = (headers['content-transfer-encoding'] || '7bit').toLowerCase();
  if (encoding === 'base64') return Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8');
  if (encoding === 'quoted-printable') return decodeQuotedPrintable(body);
  return body;
}

function startSmtpSink(port) {
  const mails = [];
  let notify = () => {};
  const server = net.createServer((socket) => {
    socket.setEncoding('utf8');
    let buffer = '';
    let data = null;
    let envelope = { from: '', to: [] };
    const reply = (line) => socket.write(`${line}\r\n`);
    reply('220 e2e-sink ESMTP');
    socket.on('data', (chunk) => {
      buffer += chunk;
      let end;
      while ((end = buffer.indexOf('\r\n')) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (data) {
          if (line === '.') {
            const raw = data.join('\r\n');
            mails.push({ ...envelope, raw, text: mailText(raw), subject: parseEntity(raw).headers.subject || '' });
            data = null;
            envelope = { from: '', to: [] };
            reply('250 2.0.0 queued');
            notify();
          } else {
            data.push(line.startsWith('.') ? line.slice(1) : line);
          }
          continue;
        }
        const verb = line.split(' ')[0].toUpperCase();
        const address = () => (/<([^>]*)>/.exec(line)?.[1] ?? '').toLowerCase();
        switch (verb) {
          case 'EHLO':
            reply('250-e2e-sink');
            reply('250-8BITMIME');
            reply('250 SMTPUTF8');
            break;
          case 'HELO':
            reply('250 e2e-sink');
            break;
          case 'MAIL':
            envelope = { from: address(), to: [] };
            reply('250 2.1.0 OK');
            break;
          case 'RCPT':
            envelope.to.push(address());
            reply('250 2.1.5 OK');
            break;
          case 'DATA':
            data = [];
            reply('354 end data with <CR><LF>.<CR><LF>');
            break;
          case 'RSET':
            envelope = { from: '', to: [] };
            reply('250 2.0.0 OK');
            break;
          case 'NOOP':
            reply('250 2.0.0 OK');
            break;
          case 'QUIT':
            reply('221 2.0.0 bye');
            socket.end();
            break;
          default:
            reply('502 5.5.1 not implemented');
        }
      }
    });
    socket.on('error', () => {});
  });
  const sink = {
    mails,
    close: () => server.close(),
    /** The first mail to `to` after the first `after` mails whose text matches `pattern`. */
    async waitFor(to, pattern, { after = 0, timeout = STEP_TIMEOUT_MS } = {}) {
      const deadline = Date.now() + timeout;
      for (;;) {
        const mail = mails.slice(after).find((m) => m.to.includes(to.toLowerCase()) && pattern.test(m.text));
        if (mail) return mail;
        if (Date.now() > deadline) throw new Error(`no mail to ${to} matching ${pattern} within ${timeout} ms`);
        await new Promise((resolve) => {
          notify = resolve;
          setTimeout(resolve, 250);
        });
      }
    },
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(sink));
  });
}

// ------------------------------------------------------------------ metrics --

async function metric(url, line) {
  const text = await (await fetch(`${url}/metrics`)).text();
  for (const l of text.split('\n')) {
    if (l.startsWith(`${line} `)) return Number(l.slice(line.length + 1));
  }
  return 0;
}

// Call sockets a signaling replica admitted (relay v2: it answers JoinCall
// once per socket; the frames then travel between the gateways over Redis).
const joins = (replica) =>
  metric(replica.url, 'grpc_server_handled_total{grpc_method="/unilink.signaling.v1.SignalingService/JoinCall",grpc_code="OK"}');

async function waitFor(what, predicate, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ------------------------------------------------------------------ browser --

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
];

/** A browser context pinned to gateway replica `replica` ('a' or 'b'). */
async function openUser(browser, { label, replica, viewport }) {
  const context = await browser.newContext({ viewport, permissions: ['camera', 'microphone'] });
  const base = new URL(BASE);
  await context.addCookies([{ name: 'unilink_replica', value: replica, domain: base.hostname, path: '/' }]);
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const user = { label, replica, page, context, upstreams: new Map(), problems: [], serverErrors: [] };
  page.on('response', (response) => {
    const upstream = response.headers()['x-upstream'];
    if (upstream) {
      user.upstreams.set(upstream, (user.upstreams.get(upstream) ?? 0) + 1);
      user.lastUpstream = upstream;
    }
    if (response.status() >= 500) {
      const { pathname } = new URL(response.url());
      user.serverErrors.push(`${response.request().method()} ${pathname} → ${response.status()} at ${elapsed()}`);
    }
  });
  page.on('pageerror', (error) => user.problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') {
      const text = message.text();
      // CSP violations and uncaught errors fail the test; "Failed to load
      // resource" (an HTTP error answer) is reported through serverErrors.
      user.problems.push(`console error: ${text}`);
    }
  });
  return user;
}

const form = (page, id) => page.locator(`#${id}`);

async function signUpAndLogIn(sink, user) {
  const { page } = user;
  await page.goto(`${BASE}/app`);
  await page.locator('nav.tabs').getByRole('button', { name: 'Register' }).click();
  const register = form(page, 'register-form');
  await register.getByLabel('University email').fill(user.email);
  await register.getByLabel('Username').fill(user.username);
  await register.getByLabel('Full name').fill(user.fullName);
  await register.getByLabel('Password').fill(user.password);
  const before = sink.mails.length;
  await register.getByRole('button', { name: 'Register' }).click();
  await page.getByRole('status').filter({ hasText: 'Account created' }).waitFor();

  // The verification mail, as delivered over SMTP; open its link.
  const verification = await sink.waitFor(user.email, /verify\?token=/, { after: before });
  const link = /(https?:\/\/\S+\/verify\?token=[^\s"<>]+)/.exec(verification.text)[1];
  assert.ok(link.startsWith(`${BASE}/app/verify?token=`), `verification link ${link}`);
  await page.goto(link);
  await page.locator('#home-view').waitFor({ state: 'visible' });
  user.id = await page.evaluate(() => JSON.parse(sessionStorage.getItem('unilink.session')).user.id);

  // Log out, then log in the real way: password, then the emailed code.
  await page.getByRole('button', { name: 'Log out' }).click();
  const login = form(page, 'login-form');
  await login.waitFor({ state: 'visible' });
  await login.getByLabel('University email').fill(user.email);
  await login.getByLabel('Password').fill(user.password);
  const beforeOtp = sink.mails.length;
  await login.getByRole('button', { name: 'Send me a login code' }).click();
  const otpMail = await sink.waitFor(user.email, /login code is:/, { after: beforeOtp });
  const code = /login code is:\s*(\d{6})/.exec(otpMail.text)[1];
  const otp = form(page, 'otp-form');
  await otp.getByLabel('Login code').fill(code);
  await otp.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#home-view').waitFor({ state: 'visible' });
  await page.locator('#presence-status[data-status="online"]').waitFor();
  log(`${user.label} signed up and logged in (id ${user.id}, ${sink.mails.length} mails in the sink)`);
}

async function waitConnected(user) {
  await user.page.waitForFunction(() => window.unilink?.peerConnection?.connectionState === 'connected', null, {
    timeout: STEP_TIMEOUT_MS,
  });
}

/** Frames of the other side's video decoded here (inbound-rtp, video). */
async function framesDecoded(user) {
  return user.page.evaluate(async () => {
    const pc = window.unilink?.peerConnection;
    if (!pc) return 0;
    let frames = 0;
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') frames = Math.max(frames, s.framesDecoded ?? 0);
    }
    return frames;
  });
}

async function waitVideo(user) {
  const frames = await waitFor(`${user.label} decoding video`, async () => {
    const n = await framesDecoded(user);
    return n > 0 ? n : 0;
  });
  // The <video> shows it too.
  await user.page.waitForFunction(() => {
    const video = document.getElementById('remote-video');
    return video.srcObject?.getVideoTracks().length > 0 && video.videoWidth > 0;
  });
  return frames;
}

/** New frames decoded here within a few seconds (not just old counters). */
async function framesFlowing(user) {
  const before = await framesDecoded(user);
  await waitFor(`${user.label} decoding new frames`, async () => (await framesDecoded(user)) >= before + 5);
}

async function sendChat(from, to, text) {
  await from.page.getByLabel('Message').fill(text);
  await from.page.locator('#chat-form').getByRole('button', { name: 'Send' }).click();
  await to.page.locator('#chat-log li[data-from="peer"] .text', { hasText: text }).waitFor();
  await from.page.locator('#chat-log li[data-from="me"] .text', { hasText: text }).waitFor();
}

/** A calls B, B accepts; returns the call id. `duringRing` runs while it rings. */
async function call(a, b, { duringRing } = {}) {
  await a.page.locator(`#online-list li[data-user-id="${b.id}"]`).waitFor();
  await a.page.getByRole('button', { name: `Call ${b.fullName}` }).click();
  const dialog = b.page.getByRole('dialog', { name: 'Incoming call' });
  await dialog.waitFor();
  assert.match(await dialog.textContent(), new RegExp(`@${a.username} is calling`));
  const callId = await a.page.evaluate(() => window.unilink.call?.id);
  assert.ok(callId, 'the caller has a call');
  if (duringRing) await duringRing(callId);
  await dialog.getByRole('button', { name: 'Accept' }).click();
  return callId;
}

async function hangUpAndCheckHistory(a, b, callId, expectedCalls) {
  await a.page.getByRole('button', { name: 'Hang up' }).click();
  for (const user of [a, b]) {
    await user.page.locator('#home-view').waitFor({ state: 'visible' });
    await user.page.locator(`#history-list li[data-call-id="${callId}"][data-status="completed"]`).waitFor();
    const rows = await user.page.locator('#history-list li').count();
    assert.equal(rows, expectedCalls, `${user.label} history rows`);
  }
  const peer = await b.page.locator(`#history-list li[data-call-id="${callId}"]`).getAttribute('data-peer');
  assert.equal(peer, a.username, 'the callee sees the caller in its history');
}

// -------------------------------------------------------------------- main --

async function main() {
  mkdirSync(OUT_DIR, { recursive: true });
  const sink = await startSmtpSink(SMTP_PORT);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  log(`chromium ${browser.version()}`);
  const run = Math.random().toString(36).slice(2, 8);
  const a = await openUser(browser, { label: 'caller', replica: 'a', viewport: { width: 1200, height: 800 } });
  const b = await openUser(browser, { label: 'callee', replica: 'b', viewport: { width: 390, height: 844 } });
  Object.assign(a, {
    email: `ada.${run}@kiit.ac.in`,
    username: `ada_${run}`,
    fullName: 'Ada Lovelace',
    password: `pw-ada-${run}-secret`,
  });
  Object.assign(b, {
    email: `bob.${run}@kiit.ac.in`,
    username: `bob_${run}`,
    fullName: 'Bob Builder',
    password: `pw-bob-${run}-secret`,
  });
  const users = [a, b];

  try {
    await step('both sign up (verification link from the mail) and log in (code from the mail)', () =>
      Promise.all(users.map((u) => signUpAndLogIn(sink, u))),
    );

    await step('each sees the other online', async () => {
      await a.page.locator(`#online-list li[data-user-id="${b.id}"]`).waitFor();
      await b.page.locator(`#online-list li[data-user-id="${a.id}"]`).waitFor();
    });

    // ------------------------------------------------------ scenario 1 --
    const first = await step('A calls, B accepts (pushed over the presence socket)', () => call(a, b));
    await step('both peer connections reach "connected"', () => Promise.all(users.map(waitConnected)));
    await step('each page decodes the other one\'s video (getStats inbound-rtp framesDecoded > 0)', async () => {
      for (const u of users) log(`${u.label}: ${await waitVideo(u)} frames decoded`);
    });
    await step('each browser is on its own gateway replica', async () => {
      for (const u of users) {
        const expected = new URL(GATEWAYS[u.replica].url).host;
        const seen = [...u.upstreams.keys()];
        assert.deepEqual(seen, [expected], `${u.label} answered by ${seen.join(', ')}`);
      }
      for (const [name, expected] of [['a', 1], ['b', 1], ['c', 0]]) {
        const sockets = await metric(GATEWAYS[name].url, 'websocket_connections{kind="call"}');
        assert.equal(sockets, expected, `gateway ${name} holds ${expected} call socket(s)`);
      }
    });
    await step('chat crosses both ways', async () => {
      await sendChat(a, b, 'Hello Bob, can you see me?');
      await sendChat(b, a, 'Loud and clear, Ada!');
    });
    await step('screenshots mid-call', async () => {
      await new Promise((r) => setTimeout(r, 1500)); // a few more frames on screen
      for (const u of users) {
        const file = path.join(OUT_DIR, `${u.label}.png`);
        await u.page.screenshot({ path: file });
        log(`saved ${file}`);
      }
    });
    await step('mute and camera toggles act on the local tracks', async () => {
      const { page } = a;
      const tracks = () =>
        page.evaluate(() => {
          const stream = document.getElementById('local-video').srcObject;
          return { audio: stream.getAudioTracks()[0].enabled, video: stream.getVideoTracks()[0].enabled };
        });
      await page.getByRole('button', { name: 'Mute' }).click();
      await page.getByRole('button', { name: 'Camera off' }).click();
      assert.deepEqual(await tracks(), { audio: false, video: false });
      assert.equal(await page.locator('#toggle-mute').getAttribute('aria-pressed'), 'true');
      await page.getByRole('button', { name: 'Unmute' }).click();
      await page.getByRole('button', { name: 'Camera on' }).click();
      assert.deepEqual(await tracks(), { audio: true, video: true });
      assert.equal(await page.locator('#toggle-camera').getAttribute('aria-pressed'), 'false');
    });
    await step('a page reloaded mid-call rejoins it (the callee\'s, then the caller\'s)', async () => {
      for (const u of [b, a]) {
        await u.page.reload();
        await u.page.locator('#call-view').waitFor({ state: 'visible' });
        await Promise.all(users.map(waitConnected));
        for (const v of users) await framesFlowing(v);
        log(`${u.label} reloaded and rejoined; video flows both ways again`);
      }
    });
    await step('A hangs up; both histories show the completed call', () => hangUpAndCheckHistory(a, b, first, 1));

    await step('B declines a call: A is told, both histories show it rejected', async () => {
      await a.page.getByRole('button', { name: `Call ${b.fullName}` }).click();
      const dialog = b.page.getByRole('dialog', { name: 'Incoming call' });
      await dialog.waitFor();
      const callId = await a.page.evaluate(() => window.unilink.call?.id);
      await dialog.getByRole('button', { name: 'Decline' }).click();
      await a.page.getByRole('status').filter({ hasText: 'declined' }).waitFor();
      await a.page.locator('#home-view').waitFor({ state: 'visible' });
      for (const u of users) {
        await u.page.locator(`#history-list li[data-call-id="${callId}"][data-status="rejected"]`).waitFor();
      }
    });

    // -------------------- scenario 2: the caller's gateway dies mid-call --
    const second = await step('A calls B again', () => call(a, b));
    await step('connected, video both ways', async () => {
      await Promise.all(users.map(waitConnected));
      for (const u of users) await waitVideo(u);
    });
    await step('gateway A is killed (-9) mid-call: A\'s page reconnects its signaling socket through the balancer with last_seq', async () => {
      const lastSeq = await a.page.evaluate(() => window.unilink.call.lastSeq);
      process.kill(GATEWAYS.a.pid, 'SIGKILL');
      GATEWAYS.a.killed = true;
      log(`killed gateway a (pid ${GATEWAYS.a.pid}); A's last seq was ${lastSeq}; the balancer falls back to gateway c`);
      // B writes while A's socket is down; A gets it once it has resumed.
      const text = 'Sent while your gateway was down';
      await b.page.getByLabel('Message').fill(text);
      await b.page.locator('#chat-form').getByRole('button', { name: 'Send' }).click();
      await a.page.waitForFunction(() => window.unilink.call.socketsOpened >= 2);
      const received = a.page.locator('#chat-log li[data-from="peer"] .text', { hasText: text });
      await received.waitFor();
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await received.count(), 1, 'the frame sent meanwhile arrives exactly once');
      await sendChat(a, b, 'Back, through the other gateway');
      for (const u of users) {
        const state = await u.page.evaluate(() => window.unilink.peerConnection.connectionState);
        assert.equal(state, 'connected', `${u.label}'s media never stopped`);
      }
    });
    await step('A hangs up (through gateway c now); both histories show the call', async () => {
      await hangUpAndCheckHistory(a, b, second, 3);
      assert.equal(a.lastUpstream, new URL(GATEWAYS.c.url).host, 'A is served by the fallback gateway c');
      assert.equal(b.lastUpstream, new URL(GATEWAYS.b.url).host, 'B is still served by gateway b');
    });

    // ------ scenario 3: the signaling replica that admitted the caller's call
    // socket dies (-9) while it rings: frames do not pass through signaling,
    // so the call sets up as if nothing happened, on the same sockets.
    let doomed;
    const joinsBefore = await Promise.all(SIGNALING.map(joins));
    const third = await step('A calls again; the signaling replica that admitted A\'s call socket is killed (-9) while it rings', () =>
      call(a, b, {
        duringRing: async () => {
          // The caller joins its call socket while ringing: its JoinCall is the only new one.
          await a.page.waitForFunction(() => window.unilink.call?.ws?.readyState === WebSocket.OPEN);
          const grew = await waitFor('the replica that admitted the caller\'s socket', async () => {
            const now = await Promise.all(SIGNALING.map(joins));
            const i = now.findIndex((n, k) => n > joinsBefore[k]);
            return i >= 0 ? i + 1 : null;
          });
          doomed = SIGNALING[grew - 1];
          process.kill(doomed.pid, 'SIGKILL');
          doomed.killed = true;
          log(`killed signaling replica ${doomed.name} (pid ${doomed.pid}), which admitted A's call socket`);
        },
      }),
    );
    await step('the call still connects', () => Promise.all(users.map(waitConnected)));
    await step('and video flows both ways', async () => {
      for (const u of users) log(`${u.label}: ${await waitVideo(u)} frames decoded`);
    });
    await step('nobody had to reconnect: each page opened its signaling socket once', async () => {
      for (const u of users) {
        const opened = await u.page.evaluate(() => window.unilink.call.socketsOpened);
        assert.equal(opened, 1, `${u.label} opened its signaling socket once`);
      }
      const survivor = SIGNALING.find((r) => !r.killed);
      log(`survivor ${survivor.name} answered ${await joins(survivor)} JoinCalls in all`);
    });
    await step('chat still crosses', () => sendChat(b, a, 'Still here after the failover'));
    await step('A hangs up; both histories show all four calls', () => hangUpAndCheckHistory(a, b, third, 4));

    // ------- scenario 4: relay only, through the real coturn (TURN REST) --
    await step('coturn takes the credentials GET /calls/ice-servers minted, refuses others and private peers', async () => {
      const seen = await probeTurn({ user: a, secret: TURN_SECRET, relayPorts: TURN_RELAY_PORTS });
      log(`allocated ${seen.relayed.address}:${seen.relayed.port} via ${seen.host}:${seen.port}; ` +
        `refused ${Object.keys(seen.refused).length} private/reserved peers (${Object.values(seen.refused)[0]}); ` +
        `${Object.entries(seen.unauthorized).map(([k, v]) => `${k}: ${v}`).join('; ')}`);
    });
    await step('both choose "Always relay my calls" (iceTransportPolicy "relay")', async () => {
      for (const u of users) {
        await u.page.getByLabel('Always relay my calls through the UniLink server').check();
      }
    });
    let relayConnectedMs;
    const fourth = await step('A calls B; both connect through the relay only', async () => {
      const callId = await call(a, b);
      const accepted = Date.now();
      await Promise.all(users.map(waitConnected));
      relayConnectedMs = Date.now() - accepted;
      return callId;
    });
    await step('each selected pair is relay to relay through coturn, and video decodes', async () => {
      for (const u of users) {
        const frames = await waitVideo(u);
        const route = await waitFor(`${u.label}'s selected pair`, async () => {
          const r = await selectedRoute(u.page);
          return r?.pair?.state === 'succeeded' && r.pair.nominated ? r : null;
        });
        assert.equal(route.policy, 'relay', `${u.label}'s peer connection is relay only`);
        for (const side of ['local', 'remote']) {
          const c = route.pair[side];
          assert.equal(c.type, 'relay', `${u.label}'s ${side} candidate is a relay candidate: ${JSON.stringify(c)}`);
          assert.equal(c.address, '127.0.0.1', `${u.label}'s ${side} candidate is on coturn`);
          assert.ok(c.port >= TURN_RELAY_PORTS[0] && c.port <= TURN_RELAY_PORTS[1], `${side} port ${c.port} in the relay range`);
        }
        assert.ok(route.framesDecoded > 0, `${u.label} decodes video through the relay`);
        // The page tells its user too.
        await u.page.locator('#call-stats[data-route="relay"]', { hasText: 'through the relay' }).waitFor();
        log(`${u.label}: ${route.pair.local.type} ${route.pair.local.address}:${route.pair.local.port} (${route.pair.local.relayProtocol}) ⇄ ` +
          `${route.pair.remote.type} ${route.pair.remote.address}:${route.pair.remote.port}, ` +
          `${route.pair.bytesReceived} bytes, ${frames} frames decoded at first check`);
      }
      for (const u of users) await framesFlowing(u);
      const frames = await Promise.all(users.map(framesDecoded));
      log(`relay-only call connected ${relayConnectedMs} ms after Accept; frames decoded ${frames.join(' / ')}`);
    });
    await step('coturn\'s log shows each user\'s allocation and permission, with the minted username', async () => {
      const text = readFileSync(TURN_LOG, 'utf8');
      for (const u of users) {
        for (const what of ['ALLOCATE', 'CREATE_PERMISSION']) {
          const line = new RegExp(`user <\\d+:${u.id}>: incoming packet ${what} processed, success`);
          assert.match(text, line, `coturn logged no successful ${what} for ${u.label}`);
        }
      }
      const forbidden = text.match(/CREATE_PERMISSION processed, error 403/g)?.length ?? 0;
      log(`coturn: ${text.match(/ALLOCATE processed, success/g).length} allocations, ${forbidden} permissions refused with 403`);
    });
    await step('A hangs up; both histories show all five calls', () => hangUpAndCheckHistory(a, b, fourth, 5));

    for (const u of users) {
      const problems = u.problems.filter((p) => !/Failed to load resource/.test(p));
      assert.deepEqual(problems, [], `${u.label} page reported problems`);
      // Server errors the client rode out (retried); worth knowing about.
      for (const e of u.serverErrors) log(`note: ${u.label} got ${e}`);
    }
    log(`PASS (${sink.mails.length} mails delivered over SMTP)`);
  } catch (error) {
    for (const u of users) {
      await u.page.screenshot({ path: path.join(OUT_DIR, `failure-${u.label}.png`) }).catch(() => {});
      const status = await u.page.locator('#status').textContent().catch(() => '?');
      const notice = await u.page.locator('#call-notice').textContent().catch(() => '?');
      log(`${u.label} status: "${status}" call notice: "${notice}"`);
      for (const p of u.problems) log(`${u.label} ${p}`);
    }
    throw error;
  } finally {
    await browser.close().catch(() => {});
    sink.close();
  }
}

const watchdog = setTimeout(() => {
  log(`FAIL: the browser test did not finish within ${OVERALL_TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

main().then(
  () => {
    clearTimeout(watchdog);
    process.exit(0);
  },
  (error) => {
    clearTimeout(watchdog);
    log(`FAIL: ${error.stack || error}`);
    process.exit(1);
  },
);
