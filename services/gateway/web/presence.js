// The presence socket, `WS /calls/ws/{user_id}?token=`: while it is open the
// user is online; the server pushes `incoming_call`, `call_accepted`,
// `call_rejected`, `call_missed` and `call_ended` over it. A text `ping`
// every 20 s keeps it (and the presence) alive. It reconnects by itself,
// with backoff, until `close()`.

import { socketUrl } from './api.js';

const PING_EVERY_MS = 20_000;
const MAX_BACKOFF_MS = 10_000;

export class PresenceSocket {
  /**
   * @param {string} userId
   * @param {{onPush: (push: object) => void, onStatus: (status: string) => void}} handlers
   */
  constructor(userId, { onPush, onStatus }) {
    this.userId = userId;
    this.onPush = onPush;
    this.onStatus = onStatus;
    this.ws = null;
    this.closed = false;
    this.backoff = 500;
    this.pinger = null;
    this.retry = null;
    this.connect();
  }

  async connect() {
    if (this.closed) return;
    this.onStatus('connecting');
    let url;
    try {
      // reconnects=1: this client opens the socket again when it closes, so
      // the gateway may ask it to move to another replica.
      url = await socketUrl(`/calls/ws/${encodeURIComponent(this.userId)}`, { reconnects: 1 });
    } catch {
      this.scheduleReconnect();
      return;
    }
    if (this.closed) return;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.addEventListener('open', () => {
      this.backoff = 500;
      this.onStatus('online');
      this.pinger = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send('ping');
      }, PING_EVERY_MS);
    });
    ws.addEventListener('message', (event) => {
      if (typeof event.data !== 'string' || event.data === 'pong') return;
      let push;
      try {
        push = JSON.parse(event.data);
      } catch {
        return;
      }
      if (push && typeof push.type === 'string' && push.type !== 'pong') this.onPush(push);
    });
    ws.addEventListener('close', (event) => {
      clearInterval(this.pinger);
      this.pinger = null;
      if (this.ws === ws) this.ws = null;
      if (this.closed) return;
      // 1008: refused (token revoked, account closed): do not hammer.
      if (event.code === 1008) {
        this.onStatus('refused');
        this.backoff = MAX_BACKOFF_MS;
      }
      this.scheduleReconnect();
    });
  }

  scheduleReconnect() {
    if (this.closed) return;
    this.onStatus('reconnecting');
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.retry = setTimeout(() => this.connect(), wait);
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
    this.onStatus('offline');
  }
}
