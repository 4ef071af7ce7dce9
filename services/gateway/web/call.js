// One call: an RTCPeerConnection and its signaling socket,
// `WS /ws/webrtc/{call_id}?token=` (frames as in ARCHITECTURE.md).
//
// Who offers: always the caller, exactly once per connection attempt, as
// soon as both sides have a socket — when the server says
// `connection_ready` (the callee joined after us), or, right after our
// socket opens, when `GET /ws/webrtc/connection-state/{id}` already counts
// two users (the callee joined first). The callee only answers. So there
// is never glare, and neither join order loses the offer.
//
// A dropped socket is opened again with `&last_seq=<seq of the last relayed
// frame seen>`; the server resumes right after it, so nothing is lost or
// repeated. Frames we send carry `cid` (this page's id) and `cseq` (1, 2,
// 3…) and are kept until the server's `{"type":"ack","cseq":n}`; after a
// reconnect, or a second without the ack, every unacknowledged frame is
// sent again, in order (the server relays each once). Close 1000 (after
// `call_ended`) and 1008 (refused) are final.

import { calls, socketUrl } from './api.js';

const RECONNECT_GIVE_UP_MS = 30_000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const STATS_EVERY_MS = 1_000;
/** Unacknowledged frames are sent again after this long. */
const RESEND_AFTER_MS = 1_000;

function clientId() {
  return globalThis.crypto?.randomUUID?.().replaceAll('-', '') ?? `${Date.now()}${Math.random()}`.replace('.', '');
}

/** The session id of an SDP (`o=<user> <session id> …`): one per peer connection. */
function sdpSession(sdp) {
  return /^o=\S+ (\S+) /m.exec(sdp ?? '')?.[1] ?? null;
}

/** Why a call ended, from a `call_ended` frame (`status`, `user_id`, `message`). */
function endedReason(frame, me) {
  switch (frame.status) {
    case 'rejected':
      return 'the call was declined';
    case 'missed':
      return 'no answer';
    case 'cancelled':
      return frame.user_id === me ? 'you cancelled the call' : 'the caller cancelled the call';
    default:
      if (frame.user_id === me) return 'you ended the call';
      if (frame.user_id) return 'the other side ended the call';
      return frame.message || 'the call has ended';
  }
}

export class CallSession {
  /**
   * @param {object} options
   * @param {object} options.call the call JSON from the API
   * @param {string} options.me our user id
   * @param {MediaStream|null} options.localStream
   * @param {boolean} [options.relayOnly] only relay (TURN) candidates: the
   *   other side never learns our addresses (iceTransportPolicy "relay")
   * @param {object} options.on handlers: state(s), peerState(s), remoteStream(stream),
   *   chat(message), notice(text), stats(summary), ended(reason)
   */
  constructor({ call, me, localStream, relayOnly = false, on }) {
    this.call = call;
    this.id = call.id;
    this.me = me;
    this.isCaller = call.initiator_id === me;
    this.peerId = this.isCaller ? call.receiver_id : call.initiator_id;
    this.localStream = localStream;
    this.relayOnly = relayOnly;
    this.on = on;
    this.ws = null;
    this.lastSeq = 0;
    this.everOpened = false;
    this.socketsOpened = 0;
    this.cid = clientId();
    this.nextCseq = 1;
    this.unacked = new Map(); // cseq → frame text, in sending order
    this.lastSent = 0;
    this.resendTimer = null;
    this.pendingCandidates = [];
    this.offered = false;
    this.ended = false;
    this.reconnectSince = null;
    this.reconnectTimer = null;
    this.statsTimer = null;
    this.backoff = 250;
    this.pc = null;
    this.onEnded = null;
    // Frames are handled one after the other (each may await the peer connection).
    this.inbox = Promise.resolve();
  }

  async start() {
    let iceServers = [];
    try {
      const answer = await calls.iceServers();
      iceServers = (answer.ice_servers || []).map((s) => ({
        urls: s.urls,
        ...(s.username ? { username: s.username, credential: s.credential } : {}),
      }));
    } catch (e) {
      this.on.notice(`ICE servers unavailable (${e.message}); trying without`);
    }
    if (this.ended) return;
    if (this.relayOnly && !iceServers.some((s) => [s.urls].flat().some((u) => /^turns?:/.test(u)))) {
      this.on.notice('relaying was asked for, but this server offers no relay: the call cannot connect');
    }
    this.iceServers = iceServers;
    this.createPeerConnection();
    this.statsTimer = setInterval(() => this.reportStats(), STATS_EVERY_MS);
    this.on.state('signaling');
    this.openSocket();
  }

  /** A fresh peer connection carrying our tracks (again, after the other side reloaded). */
  createPeerConnection() {
    if (this.pc) this.pc.close();
    this.pendingCandidates = [];
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.relayOnly ? 'relay' : 'all',
    });
    this.pc = pc;
    const kinds = new Set();
    for (const track of this.localStream?.getTracks() ?? []) {
      pc.addTrack(track, this.localStream);
      kinds.add(track.kind);
    }
    if (this.isCaller) {
      // Receive what we cannot send (no camera or microphone here).
      for (const kind of ['audio', 'video']) {
        if (!kinds.has(kind)) pc.addTransceiver(kind, { direction: 'recvonly' });
      }
    }
    pc.addEventListener('icecandidate', (event) => {
      if (event.candidate && pc === this.pc) {
        this.send({ type: 'ice_candidate', candidate: event.candidate.toJSON() });
      }
    });
    pc.addEventListener('track', (event) => {
      const stream = event.streams[0] ?? new MediaStream([event.track]);
      this.remoteStream = stream;
      this.on.remoteStream(stream);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this.pc) return;
      const state = pc.connectionState;
      this.on.state(state);
      this.send({ type: 'connection_state', state });
      if (state === 'failed' && this.isCaller) this.offer({ iceRestart: true });
    });
  }

  async openSocket() {
    if (this.ended) return;
    // Without a frame seen yet, the server starts after what it last
    // delivered to us (as for a fresh page).
    const resume = this.everOpened && this.lastSeq > 0 ? { last_seq: this.lastSeq } : {};
    let url;
    try {
      url = await socketUrl(`/ws/webrtc/${encodeURIComponent(this.id)}`, resume);
    } catch (e) {
      this.socketLost(`cannot reach the server: ${e.message}`);
      return;
    }
    if (this.ended) return;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.addEventListener('open', () => this.socketOpened(ws));
    ws.addEventListener('message', (event) => {
      this.inbox = this.inbox
        .then(() => this.onFrame(event.data))
        .catch((e) => this.on.notice(`signaling: ${e.message}`));
    });
    ws.addEventListener('close', (event) => {
      if (this.ws === ws) this.ws = null;
      if (this.ended) return;
      if (event.code === 1000) {
        this.finish('the call has ended');
      } else if (event.code === 1008) {
        this.finish(event.reason || 'the server refused the call connection');
      } else {
        this.socketLost(event.reason || `connection lost (${event.code})`);
      }
    });
  }

  async socketOpened(ws) {
    this.everOpened = true;
    this.socketsOpened += 1;
    this.backoff = 250;
    this.reconnectSince = null;
    this.on.notice('');
    this.resend();
    clearInterval(this.resendTimer);
    this.resendTimer = setInterval(() => {
      if (this.unacked.size > 0 && Date.now() - this.lastSent >= RESEND_AFTER_MS) this.resend();
    }, RESEND_AFTER_MS / 2);
    if (this.isCaller && !this.offered) {
      try {
        const state = await calls.connectionState(this.id);
        if (state.user_count >= 2) this.offer();
      } catch {
        /* connection_ready will tell us */
      }
    }
  }

  socketLost(why) {
    if (this.ended) return;
    this.reconnectSince ??= Date.now();
    if (Date.now() - this.reconnectSince > RECONNECT_GIVE_UP_MS) {
      this.hangUp(`signaling lost: ${why}`);
      return;
    }
    this.on.notice(`reconnecting signaling… (${why})`);
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 4_000);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.openSocket(), wait);
  }

  /** Sends a frame now, or when the socket is back; kept until acknowledged. */
  send(frame) {
    if (this.ended) return;
    if (frame.type === 'ping') {
      if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
      return;
    }
    const cseq = this.nextCseq++;
    const text = JSON.stringify({ ...frame, cid: this.cid, cseq });
    this.unacked.set(cseq, text);
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(text);
      this.lastSent = Date.now();
    }
  }

  /** Every unacknowledged frame again, in order. */
  resend() {
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    for (const text of this.unacked.values()) this.ws.send(text);
    this.lastSent = Date.now();
  }

  async offer({ iceRestart = false } = {}) {
    if (this.ended || !this.pc) return;
    if (this.offered && !iceRestart) return;
    this.offered = true;
    try {
      const offer = await this.pc.createOffer({ iceRestart });
      await this.pc.setLocalDescription(offer);
      this.send({ type: 'offer', offer: { type: offer.type, sdp: offer.sdp } });
    } catch (e) {
      this.offered = false;
      this.on.notice(`could not create an offer: ${e.message}`);
    }
  }

  async onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === 'ack') {
      for (const cseq of this.unacked.keys()) {
        if (cseq <= frame.cseq) this.unacked.delete(cseq);
      }
      return;
    }
    if (typeof frame.seq === 'number' && frame.seq > this.lastSeq) this.lastSeq = frame.seq;
    const pc = this.pc;
    switch (frame.type) {
      case 'connection_ready':
        // The other side opened a fresh socket: it joined, or its page
        // was reloaded (a resumed socket is not announced).
        this.on.peerState('joined');
        if (this.isCaller && pc) {
          if (!this.offered) {
            this.offer();
          } else if (pc.signalingState === 'have-local-offer' && pc.localDescription) {
            // Not answered yet: the (new) page did not get it; send it again.
            const { type, sdp } = pc.localDescription;
            this.send({ type: 'offer', offer: { type, sdp } });
          } else {
            // Its connection is new: so is ours (faster than an ICE and DTLS restart).
            this.createPeerConnection();
            this.offered = false;
            this.offer();
          }
        }
        break;
      case 'offer':
        if (this.isCaller || !pc) break;
        // An offer from another session (the caller's page was reloaded)
        // gets a fresh connection.
        if (pc.remoteDescription && sdpSession(pc.remoteDescription.sdp) !== sdpSession(frame.offer?.sdp)) {
          this.createPeerConnection();
        }
        try {
          await this.answer(frame.offer);
        } catch {
          // An offer our connection cannot take: start over with a fresh one.
          try {
            this.createPeerConnection();
            await this.answer(frame.offer);
          } catch (e) {
            this.on.notice(`could not answer: ${e.message}`);
          }
        }
        break;
      case 'answer':
        if (!this.isCaller || !pc || pc.signalingState !== 'have-local-offer') break;
        try {
          await pc.setRemoteDescription(frame.answer);
          await this.flushCandidates();
        } catch (e) {
          this.on.notice(`could not apply the answer: ${e.message}`);
        }
        break;
      case 'ice_candidate':
        if (!pc) break;
        if (pc.remoteDescription) {
          await pc.addIceCandidate(frame.candidate).catch(() => {});
        } else {
          this.pendingCandidates.push(frame.candidate);
        }
        break;
      case 'connection_state':
        this.on.peerState(frame.state);
        break;
      case 'chat_message':
        this.on.chat({ mine: frame.from === this.me, text: frame.text, timestamp: frame.timestamp });
        break;
      case 'user_disconnected':
        this.on.peerState('disconnected');
        this.on.notice('the other side lost its connection; waiting for it to come back…');
        break;
      case 'call_ended':
        this.finish(endedReason(frame, this.me));
        break;
      case 'error':
        this.on.notice(`server: ${frame.message}`);
        break;
      default:
        break;
    }
  }

  async answer(offer) {
    const pc = this.pc;
    await pc.setRemoteDescription(offer);
    await this.flushCandidates();
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this.send({ type: 'answer', answer: { type: answer.type, sdp: answer.sdp } });
  }

  async flushCandidates() {
    const waiting = this.pendingCandidates.splice(0);
    for (const candidate of waiting) {
      await this.pc.addIceCandidate(candidate).catch(() => {});
    }
  }

  chat(text) {
    const trimmed = text.trim();
    if (!trimmed) return;
    this.send({ type: 'chat_message', text: trimmed, timestamp: new Date().toISOString() });
  }

  /** Toggles our microphone; returns whether it is now muted. */
  toggleMute() {
    const tracks = this.localStream?.getAudioTracks() ?? [];
    const muted = tracks.some((t) => t.enabled);
    for (const t of tracks) t.enabled = !muted;
    return muted;
  }

  /** Toggles our camera; returns whether it is now off. */
  toggleCamera() {
    const tracks = this.localStream?.getVideoTracks() ?? [];
    const off = tracks.some((t) => t.enabled);
    for (const t of tracks) t.enabled = !off;
    return off;
  }

  async reportStats() {
    if (!this.pc) return;
    try {
      const report = await this.pc.getStats();
      let video = null;
      let pair = null;
      for (const s of report.values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
      }
      const local = pair && report.get(pair.localCandidateId);
      const remote = pair && report.get(pair.remoteCandidateId);
      const route = local && remote ? (local.candidateType === 'relay' || remote.candidateType === 'relay' ? 'relay' : 'direct') : null;
      this.on.stats(
        video && {
          framesDecoded: video.framesDecoded ?? 0,
          width: video.frameWidth ?? 0,
          height: video.frameHeight ?? 0,
          fps: video.framesPerSecond ?? 0,
          route,
        },
      );
    } catch {
      /* the connection is closing */
    }
  }

  /**
   * Ends the call for both sides, then cleans up here: `end_call` over the
   * signaling socket when it is open (the server answers `call_ended`),
   * else — or without an answer within 2 s — `POST /calls/end`, retried
   * when the server asks for it (502/503/504, or no answer).
   */
  async hangUp(reason = 'you ended the call') {
    if (this.ended) return;
    if (this.ws?.readyState === WebSocket.OPEN) {
      const ended = new Promise((resolve) => {
        this.onEnded = resolve;
      });
      this.ws.send(JSON.stringify({ type: 'end_call' }));
      const answered = await Promise.race([ended.then(() => true), sleep(2_000).then(() => false)]);
      if (answered || this.ended) return;
    }
    let failure = null;
    for (const wait of [0, 250, 750, 1500]) {
      if (wait) await sleep(wait);
      try {
        await calls.end(this.id);
        failure = null;
        break;
      } catch (e) {
        // 409: it had already ended.
        failure = e.status === 409 ? null : e;
        if (![0, 502, 503, 504].includes(e.status)) break;
      }
    }
    if (failure) this.on.notice(`ending the call: ${failure.message}`);
    this.finish(reason);
  }

  /** Cleans up here; the call is over. */
  finish(reason) {
    if (this.ended) return;
    this.ended = true;
    this.onEnded?.();
    clearTimeout(this.reconnectTimer);
    clearInterval(this.statsTimer);
    clearInterval(this.resendTimer);
    if (this.ws) this.ws.close(1000, 'call over');
    this.ws = null;
    if (this.pc) this.pc.close();
    for (const track of this.localStream?.getTracks() ?? []) track.stop();
    this.on.ended(reason);
  }
}
