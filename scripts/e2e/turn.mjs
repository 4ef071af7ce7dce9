// TURN for the browser end-to-end test (scripts/e2e.sh starts coturn with
// deploy/coturn/turnserver.conf on 127.0.0.1 inside its network namespace):
//
//   * a minimal TURN client over UDP (RFC 5389/5766: Allocate and
//     CreatePermission with long-term credentials) that asks the real coturn
//     what it accepts: the credentials GET /calls/ice-servers minted, not a
//     wrong or expired one; a permission for the test's own peer (loopback,
//     allowed for this run only), none for private, shared, link-local
//     (cloud metadata), reserved or multicast peers;
//   * what a page's peer connection uses: the selected candidate pair and
//     the video it decodes (getStats).

import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';

const MAGIC = 0x2112a442;
const ATTR = {
  USERNAME: 0x0006,
  MESSAGE_INTEGRITY: 0x0008,
  ERROR_CODE: 0x0009,
  XOR_PEER_ADDRESS: 0x0012,
  REALM: 0x0014,
  NONCE: 0x0015,
  XOR_RELAYED_ADDRESS: 0x0016,
  REQUESTED_TRANSPORT: 0x0019,
};
const METHOD = { ALLOCATE: 0x003, REFRESH: 0x004, CREATE_PERMISSION: 0x008 };

function attribute(type, value) {
  const padded = Buffer.alloc(4 + Math.ceil(value.length / 4) * 4);
  padded.writeUInt16BE(type, 0);
  padded.writeUInt16BE(value.length, 2);
  value.copy(padded, 4);
  return padded;
}

function xorAddress(ip, port) {
  const value = Buffer.alloc(8);
  value.writeUInt8(0x01, 1); // IPv4
  value.writeUInt16BE(port ^ (MAGIC >>> 16), 2);
  const octets = ip.split('.').map(Number);
  value.writeUInt32BE((((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]) ^ MAGIC) >>> 0, 4);
  return value;
}

function readXorAddress(value) {
  const port = value.readUInt16BE(2) ^ (MAGIC >>> 16);
  const raw = (value.readUInt32BE(4) ^ MAGIC) >>> 0;
  return { address: [24, 16, 8, 0].map((s) => (raw >>> s) & 0xff).join('.'), port };
}

/** A request: header, attributes, and MESSAGE-INTEGRITY when `key` is given. */
function encode(method, attributes, key) {
  const id = randomBytes(12);
  let body = Buffer.concat(attributes);
  const header = (length) => {
    const h = Buffer.alloc(20);
    h.writeUInt16BE(method, 0); // class: request
    h.writeUInt16BE(length, 2);
    h.writeUInt32BE(MAGIC, 4);
    id.copy(h, 8);
    return h;
  };
  if (key) {
    // The HMAC covers the message with the length already counting itself.
    const mac = createHmac('sha1', key).update(Buffer.concat([header(body.length + 24), body])).digest();
    body = Buffer.concat([body, attribute(ATTR.MESSAGE_INTEGRITY, mac)]);
  }
  return { id, bytes: Buffer.concat([header(body.length), body]) };
}

function decode(bytes) {
  const type = bytes.readUInt16BE(0);
  const attrs = new Map();
  for (let at = 20; at + 4 <= 20 + bytes.readUInt16BE(2); ) {
    const t = bytes.readUInt16BE(at);
    const length = bytes.readUInt16BE(at + 2);
    attrs.set(t, bytes.subarray(at + 4, at + 4 + length));
    at += 4 + Math.ceil(length / 4) * 4;
  }
  const klass = ((type >> 7) & 0x2) | ((type >> 4) & 0x1); // 2 = success, 3 = error
  const error = attrs.get(ATTR.ERROR_CODE);
  return {
    id: bytes.subarray(8, 20),
    ok: klass === 2,
    code: klass === 2 ? 200 : error ? (error[2] & 0x7) * 100 + error[3] : 0,
    reason: error ? error.subarray(4).toString('utf8') : '',
    attrs,
  };
}

/**
 * One TURN client (one UDP socket, so one allocation) authenticated with
 * `username`/`password` (the TURN REST pair: "<expiry>:<user id>" and
 * base64(HMAC-SHA1(secret, username))).
 */
export class TurnClient {
  constructor({ host, port, username, password }) {
    Object.assign(this, { host, port, username, password });
    this.socket = dgram.createSocket('udp4');
    this.waiting = new Map();
    this.socket.on('message', (msg) => {
      if (msg.length < 20 || msg.readUInt32BE(4) !== MAGIC) return;
      const answer = decode(msg);
      const key = answer.id.toString('hex');
      this.waiting.get(key)?.(answer);
      this.waiting.delete(key);
    });
  }

  async request(method, attributes, { auth = true } = {}) {
    const extra = [];
    let key = null;
    if (auth && this.realm) {
      extra.push(
        attribute(ATTR.USERNAME, Buffer.from(this.username)),
        attribute(ATTR.REALM, Buffer.from(this.realm)),
        attribute(ATTR.NONCE, Buffer.from(this.nonce)),
      );
      key = createHash('md5').update(`${this.username}:${this.realm}:${this.password}`).digest();
    }
    const { id, bytes } = encode(method, [...attributes, ...extra], key);
    for (let attempt = 0; attempt < 4; attempt++) {
      const answer = new Promise((resolve) => {
        this.waiting.set(id.toString('hex'), resolve);
        setTimeout(() => resolve(null), 500);
      });
      this.socket.send(bytes, this.port, this.host);
      const got = await answer;
      if (got) return got;
    }
    throw new Error(`no answer from TURN ${this.host}:${this.port}`);
  }

  /** Allocate: the first try is challenged (401 with realm and nonce), the second authenticated. */
  async allocate() {
    const transport = attribute(ATTR.REQUESTED_TRANSPORT, Buffer.from([17, 0, 0, 0]));
    const challenge = await this.request(METHOD.ALLOCATE, [transport], { auth: false });
    assert.equal(challenge.code, 401, `unauthenticated Allocate answered ${challenge.code}`);
    this.realm = challenge.attrs.get(ATTR.REALM).toString('utf8');
    this.nonce = challenge.attrs.get(ATTR.NONCE).toString('utf8');
    const answer = await this.request(METHOD.ALLOCATE, [transport]);
    if (answer.ok) this.relayed = readXorAddress(answer.attrs.get(ATTR.XOR_RELAYED_ADDRESS));
    return answer;
  }

  /** CreatePermission for `ip`: 200, or 403 when the server refuses that peer. */
  permit(ip) {
    return this.request(METHOD.CREATE_PERMISSION, [attribute(ATTR.XOR_PEER_ADDRESS, xorAddress(ip, 0))]);
  }

  async close() {
    if (this.relayed) {
      // Refresh with lifetime 0 releases the allocation (and its relay port).
      await this.request(METHOD.REFRESH, [attribute(0x000d, Buffer.from([0, 0, 0, 0]))]).catch(() => {});
    }
    this.socket.close();
  }
}

/** TURN REST credentials as signaling mints them, for the negative cases. */
export function restCredential(secret, username) {
  return createHmac('sha1', secret).update(username).digest('base64');
}

/** Peers the relay must refuse (deploy/coturn/turnserver.conf), one per range. */
export const FORBIDDEN_PEERS = {
  '10.0.0.0/8': '10.1.2.3',
  '172.16.0.0/12': '172.20.0.5',
  '192.168.0.0/16': '192.168.1.1',
  '100.64.0.0/10 (carrier-grade NAT, pod networks)': '100.64.0.10',
  '169.254.0.0/16 (cloud metadata)': '169.254.169.254',
  '0.0.0.0/8': '0.0.0.1',
  '127.0.0.0/8 beyond the test\'s own 127.0.0.1': '127.0.0.53',
  '198.18.0.0/15': '198.18.0.1',
  '224.0.0.0/4 (multicast)': '224.0.0.251',
  '240.0.0.0/4': '240.0.0.1',
};

/**
 * What the page's live peer connection uses: its configuration's
 * iceTransportPolicy, the selected candidate pair (via the transport) and
 * both candidates, and the frames of video it decoded.
 */
export async function selectedRoute(page) {
  return page.evaluate(async () => {
    const pc = window.unilink?.peerConnection;
    if (!pc) return null;
    const report = await pc.getStats();
    let pair = null;
    let frames = 0;
    for (const s of report.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
      if (s.type === 'inbound-rtp' && s.kind === 'video') frames = Math.max(frames, s.framesDecoded ?? 0);
    }
    const candidate = (id) => {
      const c = id && report.get(id);
      return c ? { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol } : null;
    };
    return {
      policy: pc.getConfiguration().iceTransportPolicy,
      connectionState: pc.connectionState,
      pair: pair && {
        state: pair.state,
        nominated: pair.nominated,
        local: candidate(pair.localCandidateId),
        remote: candidate(pair.remoteCandidateId),
        bytesReceived: pair.bytesReceived,
      },
      framesDecoded: frames,
    };
  });
}

/**
 * Asks the real coturn, with the credentials GET /calls/ice-servers gave
 * `user`'s page, what it accepts (see the top). Returns what it saw.
 */
export async function probeTurn({ user, secret, relayPorts: [low, high] }) {
  const answer = await user.page.evaluate(() => import('/app/api.js').then((api) => api.calls.iceServers()));
  const turn = answer.ice_servers.find((s) => [s.urls].flat().some((u) => u.startsWith('turn:')));
  assert.ok(turn, `GET /calls/ice-servers offers no TURN server: ${JSON.stringify(answer)}`);
  const urls = [turn.urls].flat();
  const udp = urls.map((u) => /^turn:([^:?]+):(\d+)\?transport=udp$/.exec(u)).find(Boolean);
  assert.ok(udp && urls.some((u) => u.endsWith('?transport=tcp')), `TURN URLs ${urls.join(', ')}: udp and tcp`);
  const [host, port] = [udp[1], Number(udp[2])];

  // The REST scheme: "<expiry>:<user id>", HMAC-SHA1 of it with the secret
  // coturn was started with (so signaling and coturn share it).
  const [expiry, userId] = turn.username.split(':');
  const now = Math.floor(Date.now() / 1000);
  assert.equal(userId, user.id, 'the TURN username names the signed-in user');
  assert.ok(Number(expiry) > now && Number(expiry) <= now + answer.ttl + 5, `expiry ${expiry}, ttl ${answer.ttl}`);
  assert.equal(turn.credential, restCredential(secret, turn.username), 'credential = base64(HMAC-SHA1(TURN_SECRET, username))');

  const client = new TurnClient({ host, port, username: turn.username, password: turn.credential });
  const refused = {};
  let relayed;
  try {
    const allocation = await client.allocate();
    assert.ok(allocation.ok, `Allocate with the minted credentials: ${allocation.code} ${allocation.reason}`);
    relayed = client.relayed;
    assert.equal(relayed.address, host, 'relayed on the listening address');
    assert.ok(relayed.port >= low && relayed.port <= high, `relay port ${relayed.port} in ${low}-${high}`);
    const own = await client.permit('127.0.0.1');
    assert.ok(own.ok, `permission for the test's own peer 127.0.0.1: ${own.code} ${own.reason}`);
    for (const [range, ip] of Object.entries(FORBIDDEN_PEERS)) {
      const permission = await client.permit(ip);
      assert.equal(permission.code, 403, `permission for ${ip} (${range}): ${permission.code} ${permission.reason}`);
      refused[ip] = `${permission.code} ${permission.reason}`;
    }
  } finally {
    await client.close();
  }

  const unauthorized = {};
  const tries = {
    'signed with another secret': [turn.username, restCredential(`${secret}-not`, turn.username)],
    'expired a minute ago': [`${now - 60}:${userId}`, restCredential(secret, `${now - 60}:${userId}`)],
  };
  for (const [what, [username, password]] of Object.entries(tries)) {
    const other = new TurnClient({ host, port, username, password });
    try {
      const allocation = await other.allocate();
      assert.equal(allocation.code, 401, `Allocate with a credential ${what}: ${allocation.code} ${allocation.reason}`);
      unauthorized[what] = `${allocation.code} ${allocation.reason}`;
    } finally {
      await other.close();
    }
  }
  return { host, port, relayed, refused, unauthorized };
}
