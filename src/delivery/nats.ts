import { createHash } from 'node:crypto'
import { importModule } from '../util/import.js'
import type { JetStreamClient, JetStreamManager, PubAck, StoredMsg } from '@nats-io/jetstream'
import type { Msg, MsgHdrs, NatsConnection } from '@nats-io/transport-node'
import type { DeliveryStoreConfig } from '../config/schema.js'
import { redactUrl } from '../config/refs.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import type { Logger } from '../observability/logger.js'
import type {
  DeliveryFilter,
  DeliveryRecord,
  DeliveryState,
  DeliveryStore,
  EnqueueResult,
  NewDelivery,
  RouteStats,
  Settlement,
} from './store.js'

/*
 * The delivery log on NATS JetStream, shared by every gateway of a fleet.
 *
 * Three streams, named after `stream` (S):
 *
 *   S          work queue of pending messages, one subject per message: S.deliver.<route>.<id>.
 *              Work-queue retention removes a message once it is acked (delivered) or termed
 *              (dead-lettered), so the stream holds exactly what is still to deliver, and
 *              `max_bytes` with `discard: new` refuses new messages (503) when it is full instead
 *              of dropping old ones. One durable pull consumer per route (gh-<route>) leases them.
 *   S_DEAD     dead letters, one subject per route (S_DEAD.<route>), so one STREAM.INFO gives the
 *              dead count of every route. Same size limit. The status record keeps each letter's
 *              sequence number.
 *   S_STATE    a key-value table built on `max_msgs_per_subject: 1`: a status record per message
 *              (S_STATE.s.<id>: state, attempts, errors, and the request without its body) and
 *              an idempotency record per (route, caller, key):
 *              S_STATE.k.<route>.<sha256(caller NUL key)>. Keys stored before they were per
 *              caller (no caller in their record) keep S_STATE.k.<route>.<sha256(key)>: they
 *              match no new request, and purges still find them.
 *              Writes that must not race are compare-and-set on the subject's last sequence
 *              (Nats-Expected-Last-Subject-Sequence; 0 means "must not exist yet").
 *
 * There is no @nats-io/kv in this install, and KV would be this same stream layout anyway.
 *
 * The message stream is the truth about what is pending: the status record written next to it
 * may be missing (its write failed) and is then rebuilt from the message. A delivered message's
 * body is gone with its ack (so `get` of a delivered record answers an empty body: keeping every
 * body for the retention period would fill max_bytes with work already done); everything else of
 * it stays in its status record until `expire`.
 *
 * Verified against nats-server 2.9.10 (the oldest server this was tried on); nothing here needs
 * a newer one. But before 2.10.5, `discard: new` with `max_bytes` loses data: the server checks
 * the payload against the limit while the file store counts whole records (payload + subject +
 * ~30 bytes), so a message that passes the check but not the store makes the store drop the
 * OLDEST message to fit: an acknowledged request silently gone (nats-server #4771, fixed by
 * #4772; reproduced here on 2.9.10). On such servers the streams get no server-side byte limit
 * and this store refuses new writes itself once a stream's bytes reach max_bytes (#reserve):
 * exact for one gateway, overshooting by at most what other gateways write within a refresh
 * (250 ms) in a fleet. It never drops anything.
 */

type NatsConfig = Extract<DeliveryStoreConfig, { kind: 'nats' }>

const RETRY_AFTER_S = '5'
/** Publish dedupe (Nats-Msg-Id) on the message stream: covers the client's own publish retries. */
const DUPLICATE_WINDOW_MS = 120_000
/**
 * On the dead-letter stream: a settle that dead-lettered and then failed to write its status is
 * tried again only after the lease expires and another attempt fails, so this is longer.
 */
const DEAD_DUPLICATE_WINDOW_MS = 30 * 60_000
/** For a route claimed before openRoute (another process opened it, or nobody did). */
const DEFAULT_LEASE_MS = 30_000
const DEFAULT_MAX_ATTEMPTS = 8
/** Server round trips in flight at once for bulk work (list, replay, purge, expire). */
const IO_CONCURRENCY = 64
/** Status records read per pull while scanning S_STATE. */
const SCAN_BATCH = 1000
/** A message due within this is handed out now rather than nak'd for a few milliseconds. */
const DUE_SLACK_MS = 20
/** Marks a message published by replay, with the sequence of the dead status record it replaces. */
const REPLAY_HEADER = 'Gh-Replay-Of'
/** The first nats-server whose `discard: new` byte limit never drops stored messages (see above). */
const EXACT_LIMITS_SINCE = [2, 10, 5]
/** How stale the byte count of a stream limited by this store may be before a refresh. */
const USAGE_REFRESH_MS = 250
/** A stored record's bytes beyond payload and subject (framing, Nats-Msg-Id header), rounded up. */
const RECORD_OVERHEAD = 100
/** JetStream API error codes used here. */
const WRONG_LAST_SEQUENCE = 10071
const NO_MESSAGE_FOUND = 10037
const CONSUMER_NOT_FOUND = 10014
const STREAM_NOT_FOUND = 10059

/** What a message carries besides its body (which follows this JSON in the payload). */
interface Envelope {
  v: 1
  id: string
  route: string
  method: string
  target: string
  headers: string[]
  idempotencyKey: string | null
  /** Absent in messages stored before keys were per caller: read as ''. */
  caller?: string
  fingerprint: string
  createdAt: number
  /** High-resolution enqueue time: orders `list` among messages of the same millisecond. */
  t: number
}

interface StatusRecord extends Omit<Envelope, 'v'> {
  v: 1
  state: DeliveryState
  attempts: number
  nextAttemptAt: number
  lastError: string | null
  lastStatus: number | null
  updatedAt: number
  /** Sequence of the dead letter in S_DEAD, while dead. */
  deadSeq?: number
}

/** A status record as read, with its sequence (the compare-and-set token); seq 0: not written. */
interface Versioned {
  rec: StatusRecord
  seq: number
}

interface KeyRecord {
  id: string
  fingerprint: string
  createdAt: number
}

/** A message leased by claim() in this process, until settle(). */
interface Claim {
  /** The ack subject of this delivery, or null when settled without a lease held here. */
  reply: string | null
  status: Versioned
  /** The payload as stored, for the dead letter. */
  data: Uint8Array
  claimedAt: number
}

interface RouteState {
  readonly durable: string
  readonly filter: string
  leaseMs: number
  maxAttempts: number
  /** The consumer is known to exist with this lease: openRoute made it, or it was read from the server. */
  declared: boolean
}

/** A stream's bytes as last read, and what this process wrote since (see #reserve). */
interface Usage {
  readonly stream: string
  /** As of the last read, at `at`. */
  bytes: number
  at: number
  /** Written by this process since the last read began, and being written now. */
  stored: number
  inFlight: number
  reading: Promise<void> | null
}

/** Told whether a write counted by #reserve was stored. */
type Written = (stored: boolean) => void

interface Io {
  nc: NatsConnection
  js: JetStreamClient
  jsm: JetStreamManager
  headers: () => MsgHdrs
  inbox: () => string
}

export class NatsDeliveryStore implements DeliveryStore {
  readonly kind = 'nats' as const
  readonly #cfg: NatsConfig
  readonly #logger: Logger
  readonly #names: ReturnType<typeof names>
  #io: Io | null = null
  #starting: Promise<void> | null = null
  #connected = false
  #closed = false
  /** The last failure to write, for status(); cleared by the next successful write. */
  #writeError: { full: boolean, message: string } | null = null
  #lastErrorLog = 0
  /** Byte limits this store enforces itself, on servers whose own lose data (null: the server's are exact). */
  #usage: { queue: Usage, dead: Usage } | null = null
  readonly #routes = new Map<string, RouteState>()
  readonly #claims = new Map<string, Claim>()
  /** Pull requests still open (some outlive their claim: see #pull), each with its cancel. */
  readonly #pulls = new Set<() => void>()

  constructor (cfg: NatsConfig, logger: Logger) {
    this.#cfg = cfg
    this.#logger = logger
    this.#names = names(cfg.stream)
  }

  async start (): Promise<void> {
    if (this.#io !== null) return
    if (this.#closed) throw new Error('the NATS delivery store is closed')
    // Concurrent calls share one connection attempt; a failed one can be tried again.
    this.#starting ??= this.#start().finally(() => {
      this.#starting = null
    })
    await this.#starting
  }

  async #start (): Promise<void> {
    // Loaded only when a NATS delivery store is configured.
    const [{ connect, createInbox, headers }, { jetstream, jetstreamManager }] = await Promise.all([
      importModule<typeof import('@nats-io/transport-node')>('@nats-io/transport-node'),
      importModule<typeof import('@nats-io/jetstream')>('@nats-io/jetstream'),
    ])
    const url = redact(this.#cfg.url)
    let nc: NatsConnection
    try {
      // The first connect tries once and fails fast (refused) or after `timeout` (no answer), so
      // start() cannot hang on an absent server. Once connected, the client reconnects forever.
      nc = await connect({
        servers: this.#cfg.url,
        name: 'gatehouse-delivery',
        timeout: this.#cfg.timeout,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 1000,
        // The default (2 min, 2 pings) would leave a dead connection looking alive for minutes.
        pingInterval: Math.max(5_000, this.#cfg.timeout),
        maxPingOut: 3,
      })
    } catch (err) {
      throw startError(`cannot connect to NATS at ${url}: ${errText(err)}`, err)
    }
    try {
      const jsm = await jetstreamManager(nc, { timeout: this.#cfg.timeout })
      const io: Io = {
        nc,
        js: jetstream(nc, { timeout: this.#cfg.timeout }),
        jsm,
        headers,
        inbox: createInbox,
      }
      const exact = versionAtLeast(nc.info?.version ?? '0.0.0', EXACT_LIMITS_SINCE)
      await this.#ensureStreams(jsm, exact)
      if (!exact) {
        this.#logger.info({
          msg:
            'delivery store enforces max_bytes itself: this NATS server\'s discard-new limit can drop stored messages',
          server: nc.info?.version,
        })
        const usage = (stream: string): Usage => ({
          stream,
          bytes: 0,
          at: 0,
          stored: 0,
          inFlight: 0,
          reading: null,
        })
        this.#usage = { queue: usage(this.#names.stream), dead: usage(this.#names.dead) }
      }
      this.#io = io
      this.#connected = true
      this.#watch(nc).catch(() => {})
    } catch (err) {
      await nc.close().catch(() => {})
      throw startError(
        `cannot set up the JetStream streams for "${this.#cfg.stream}" on ${url}: ${errText(err)}`,
        err,
      )
    }
  }

  async #ensureStreams (jsm: JetStreamManager, exactLimits: boolean): Promise<void> {
    const n = this.#names
    const ms = 1_000_000
    const maxBytes = exactLimits ? this.#cfg.max_bytes : -1
    const common = { storage: 'file' as const, num_replicas: this.#cfg.replicas }
    await ensureStream(jsm, {
      ...common,
      name: n.stream,
      subjects: [`${n.stream}.deliver.*.*`],
      retention: 'workqueue',
      max_bytes: maxBytes,
      discard: 'new',
      duplicate_window: DUPLICATE_WINDOW_MS * ms,
      // stats() reads the first pending message of a route without a round trip to the leader.
      allow_direct: true,
    })
    await ensureStream(jsm, {
      ...common,
      name: n.dead,
      subjects: [`${n.dead}.*`],
      retention: 'limits',
      // Dead letters are bounded like the queue: when full, dead-lettering fails and the message
      // stays pending (its attempts go on) rather than being dropped.
      max_bytes: maxBytes,
      discard: 'new',
      duplicate_window: DEAD_DUPLICATE_WINDOW_MS * ms,
    })
    await ensureStream(jsm, {
      ...common,
      name: n.state,
      subjects: [`${n.state}.>`],
      retention: 'limits',
      max_msgs_per_subject: 1,
      // No byte limit: a full state stream would stop settles, and then nothing could ever leave
      // the queue. It holds small records, bounded by the queue and expire().
      max_bytes: -1,
      discard: 'old',
    })
  }

  /** Connection events: status() and a log line (at most every 10 s for trouble). Ends with the connection. */
  async #watch (nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        this.#connected = false
        this.#logTrouble('delivery store disconnected from NATS', { server: s.server })
      } else if (s.type === 'reconnect') {
        this.#connected = true
        // Errors from the outage say nothing about now; the next write tells again.
        if (this.#writeError?.full === false) this.#writeError = null
        this.#logger.info({ msg: 'delivery store reconnected to NATS', server: s.server })
      } else if (s.type === 'error') {
        this.#logTrouble('delivery store NATS error', { err: errText(s.error) })
      }
    }
  }

  #logTrouble (msg: string, fields: Record<string, unknown>): void {
    const now = Date.now()
    if (now - this.#lastErrorLog < 10_000) return
    this.#lastErrorLog = now
    this.#logger.warn({ msg, store: redact(this.#cfg.url), stream: this.#cfg.stream, ...fields })
  }

  status (): { status: 'ok' | 'unavailable', kind: string, [key: string]: unknown } {
    // A full store is still "ok" (it answers, and delivering frees space), like the sqlite store.
    const ok = this.#io !== null && this.#connected &&
      (this.#writeError === null || this.#writeError.full)
    return {
      status: ok ? 'ok' : 'unavailable',
      kind: 'nats',
      url: redact(this.#cfg.url),
      stream: this.#cfg.stream,
      connected: this.#connected,
      // Envelope (request line and headers) + body must fit: larger requests are refused.
      max_payload: this.#io?.nc.info?.max_payload ?? null,
      full: this.#writeError?.full === true,
      ...(this.#writeError === null ? {} : { error: this.#writeError.message }),
    }
  }

  /** The connection, or a 503 at once: while disconnected the client would only buffer and time out. */
  #ready (): Io {
    if (this.#io === null) {
      throw unavailable(
        this.#closed ? 'the delivery store is closed' : 'the delivery store is not started',
      )
    }
    if (!this.#connected) throw unavailable(`not connected to NATS at ${redact(this.#cfg.url)}`)
    return this.#io
  }

  /** A failed server operation as the 503 clients see, remembered for status() and logged. */
  #failed (err: unknown, what: string): GatewayError {
    if (isGatewayErr(err)) return err
    if (isTooLarge(err)) {
      // This request only: the store is fine. (503 is what the interface allows; a retry of the
      // same request fails again, so the detail says why.)
      return gatewayError(
        'GH_DELIVERY_STORE_UNAVAILABLE',
        'The request is too large for the delivery store',
        {
          reason: `nats ${what}: ${errText(err)} (server max_payload ${
            this.#io?.nc.info?.max_payload ?? '?'
          } bytes)`,
          headers: { 'retry-after': RETRY_AFTER_S },
          cause: err,
        },
      )
    }
    const full = isFull(err)
    const message = `${what}: ${errText(err)}`
    this.#writeError = { full, message }
    this.#logTrouble(full ? 'delivery store full' : 'delivery store operation failed', {
      err: message,
    })
    return gatewayError(
      'GH_DELIVERY_STORE_UNAVAILABLE',
      full
        ? 'The delivery store is full; try again later'
        : 'The delivery store cannot accept requests right now; try again later',
      {
        reason: `nats ${message}`,
        headers: { 'retry-after': RETRY_AFTER_S },
        cause: err,
      },
    )
  }

  // ---- enqueue ----------------------------------------------------------------------------

  /*
   * Round trips: one without an Idempotency-Key (the message and its status record are
   * published together and both acks awaited), two with one (the key record is created first,
   * so that of two racing requests with one key only one publishes).
   *
   * The message's PubAck is what makes the 202 true. If only the status write fails, the message
   * is kept and the enqueue succeeds: get() and claim() rebuild the status from the message. If
   * the message fails, the status and key records written for it are deleted (best effort; a
   * key left behind is recognised as stale because its message does not exist).
   */
  async enqueue (msg: NewDelivery, idempotencyWindowMs: number): Promise<EnqueueResult> {
    const io = this.#ready()
    const n = this.#names
    let keySeq = 0
    if (msg.idempotencyKey !== null) {
      const r = await this.#takeKey(io, msg, idempotencyWindowMs)
      if (typeof r !== 'number') return r
      keySeq = r
    }
    const status: StatusRecord = {
      v: 1,
      ...envelope(msg),
      state: 'pending',
      attempts: 0,
      nextAttemptAt: msg.createdAt,
      lastError: null,
      lastStatus: null,
      updatedAt: msg.createdAt,
    }
    const timeout = this.#cfg.timeout
    const subject = n.deliver(msg.route, msg.id)
    const payload = encodeMessage(msg)
    let written: Written
    try {
      const w = this.#reserve('queue', subject.length + payload.length)
      written = typeof w === 'function' ? w : await w
    } catch (err) {
      if (keySeq > 0) this.#deleteQuietly(n.state, keySeq)
      throw err
    }
    const [m, s] = await Promise.allSettled([
      io.js.publish(subject, payload, { msgID: msg.id, timeout }),
      io.js.publish(n.status(msg.id), JSON.stringify(status), {
        expect: { lastSubjectSequence: 0 },
        timeout,
      }),
    ])
    written(m.status === 'fulfilled')
    if (m.status === 'rejected') {
      if (s.status === 'fulfilled') this.#deleteQuietly(n.state, s.value.seq)
      if (keySeq > 0) this.#deleteQuietly(n.state, keySeq)
      throw this.#failed(m.reason, 'enqueue')
    }
    this.#writeError = null
    if (s.status === 'rejected' && !isConflict(s.reason)) {
      this.#logTrouble('delivery status record not written (rebuilt from the message when read)', {
        id: msg.id,
        err: errText(s.reason),
      })
    }
    return { id: msg.id, duplicate: false }
  }

  /**
   * Takes the (route, key) record for this message: its sequence, or the answer for a key
   * already taken. Like the sqlite store, the window is measured between the two createdAt.
   */
  async #takeKey (io: Io, msg: NewDelivery, windowMs: number): Promise<number | EnqueueResult> {
    const subject = this.#names.key(msg.route, msg.caller, msg.idempotencyKey!)
    const record: KeyRecord = { id: msg.id, fingerprint: msg.fingerprint, createdAt: msg.createdAt }
    let expect = 0
    // A few turns: each lost race means another request changed the record meanwhile.
    for (let turn = 0; turn < 5; turn++) {
      try {
        const ack = await io.js.publish(subject, JSON.stringify(record), {
          expect: { lastSubjectSequence: expect },
          timeout: this.#cfg.timeout,
        })
        return ack.seq
      } catch (err) {
        if (!isConflict(err)) throw this.#failed(err, 'idempotency key')
      }
      const prev = await this.#getMsg(this.#names.state, { last_by_subj: subject })
      if (prev === null) {
        expect = 0
        continue
      }
      const p = prev.json<KeyRecord>()
      if (msg.createdAt - p.createdAt < windowMs) {
        let kept = await this.#wasKept(p.id, msg.route, prev.time.getTime())
        // The first request is between its key and its message: it usually lands within a
        // round trip or two, so look again briefly before answering "try later".
        for (let pause = 10; kept === 'unknown' && pause <= 320; pause *= 2) {
          await new Promise((resolve) => setTimeout(resolve, pause))
          kept = await this.#wasKept(p.id, msg.route, prev.time.getTime())
        }
        if (kept === 'unknown') {
          throw gatewayError(
            'GH_DELIVERY_STORE_UNAVAILABLE',
            'A request with this Idempotency-Key is still being accepted; try again later',
            {
              reason:
                `idempotency key on route ${msg.route} taken by ${p.id}, whose message is not written yet`,
              headers: { 'retry-after': '1' },
            },
          )
        }
        if (kept) {
          if (p.fingerprint === msg.fingerprint) return { id: p.id, duplicate: true }
          throw gatewayError(
            'GH_IDEMPOTENCY_CONFLICT',
            'This Idempotency-Key was already used with a different request',
            {
              reason: `key reused on route ${msg.route} (first delivery ${p.id})`,
            },
          )
        }
      }
      // Outside the window, or left by a request that was never kept: replace it.
      expect = prev.seq
    }
    throw unavailable('the idempotency key kept changing under concurrent requests')
  }

  /**
   * Whether the message a key points to was kept: it has a settled status, or it is in the
   * queue. Neither, shortly after the key was taken: its publish may still be in flight.
   */
  async #wasKept (id: string, route: string, keyTakenAt: number): Promise<boolean | 'unknown'> {
    const st = await this.#readStatus(id)
    if (st !== null && st.rec.state !== 'pending') return true
    const m = await this.#getMsg(this.#names.stream, {
      last_by_subj: this.#names.deliver(st?.rec.route ?? route, id),
    })
    if (m !== null) return true
    return Date.now() - keyTakenAt < 2 * this.#cfg.timeout + 1000 ? 'unknown' : false
  }

  // ---- routes and claims ------------------------------------------------------------------

  /*
   * The consumer: explicit acks, ack_wait = the lease, nak with a delay for retries (JetStream
   * holds the message back until then), and no max_deliver. On a work-queue stream, a message
   * that reaches max_deliver is neither removed nor delivered again: it stays in the stream,
   * counted as ack-pending forever, invisible to workers (seen on 2.9.10). That is a silent loss
   * of a message a client got a 202 for. Instead claim() dead-letters a message itself once it
   * has been delivered deliveryCap() times (the safety net max_deliver would have been), where
   * it can be seen and replayed. max_ack_pending is unlimited too: messages waiting out a retry
   * delay count as ack-pending, and a limit would stop due messages behind them.
   */
  async openRoute (route: string, opts: { leaseMs: number, maxAttempts: number }): Promise<void> {
    const r = this.#routeState(route)
    if (r.declared && r.leaseMs === opts.leaseMs && r.maxAttempts === opts.maxAttempts) return
    await this.#putConsumer(route, r, opts.leaseMs)
    r.leaseMs = opts.leaseMs
    r.maxAttempts = opts.maxAttempts
    r.declared = true
  }

  #routeState (route: string): RouteState {
    let r = this.#routes.get(route)
    if (r === undefined) {
      r = {
        durable: this.#names.durable(route),
        filter: this.#names.deliverRoute(route),
        leaseMs: DEFAULT_LEASE_MS,
        maxAttempts: DEFAULT_MAX_ATTEMPTS,
        declared: false,
      }
      this.#routes.set(route, r)
    }
    return r
  }

  async #putConsumer (route: string, r: RouteState, leaseMs: number): Promise<void> {
    const io = this.#ready()
    try {
      // Create or update: the same call with changed settings updates the durable.
      await io.jsm.consumers.add(this.#names.stream, {
        durable_name: r.durable,
        description: `Gatehouse deliveries of route ${route}`,
        ack_policy: 'explicit',
        deliver_policy: 'all',
        filter_subject: r.filter,
        ack_wait: leaseMs * 1_000_000,
        max_deliver: -1,
        max_ack_pending: -1,
      })
    } catch (err) {
      throw this.#failed(err, `consumer for route ${route}`)
    }
  }

  /** A route claimed without openRoute here: use its consumer as it is, or create one with defaults. */
  async #ensureRoute (route: string): Promise<RouteState> {
    const r = this.#routeState(route)
    if (r.declared) return r
    const io = this.#ready()
    try {
      const info = await io.jsm.consumers.info(this.#names.stream, r.durable)
      r.leaseMs = Math.round((info.config.ack_wait ?? DEFAULT_LEASE_MS * 1_000_000) / 1_000_000)
    } catch (err) {
      if (apiCode(err) !== CONSUMER_NOT_FOUND) {
        throw this.#failed(err, `consumer for route ${route}`)
      }
      await this.#putConsumer(route, r, r.leaseMs)
    }
    r.declared = true
    return r
  }

  /** Deliveries after which claim() dead-letters a message itself (see openRoute). */
  #deliveryCap (r: RouteState): number {
    return 2 * r.maxAttempts + 10
  }

  async claim (
    route: string,
    max: number,
    waitMs: number,
    signal: AbortSignal,
  ): Promise<DeliveryRecord[]> {
    if (signal.aborted || max <= 0) return []
    const r = await this.#ensureRoute(route)
    this.#pruneClaims()
    const deadline = Date.now() + waitMs
    for (;;) {
      const msgs = await this.#pull(
        this.#names.stream,
        r.durable,
        max,
        deadline - Date.now(),
        signal,
      )
      if (signal.aborted || this.#closed) {
        for (const m of msgs ?? []) nak(m.reply, 0, this.#io?.nc)
        return []
      }
      if (msgs === null) {
        // The server never answered the pull: the consumer may be gone (stream recreated).
        r.declared = false
        await this.#ensureRoute(route)
        if (Date.now() >= deadline) return []
        continue
      }
      const out = await this.#admit(r, msgs)
      if (out.length > 0 || Date.now() >= deadline) return out
    }
  }

  /**
   * One pull request: the messages the server sends until it ends the request, or null when it
   * does not answer at all. `no_wait` with `expires` makes the server answer at once with what
   * is due, or wait up to `waitMs` for the first message and then end the request with it (and
   * whatever else is due by then), which is exactly claim()'s contract. The client's fetch()
   * cannot do this (it waits for the whole batch and needs expires >= 1 s).
   *
   * A request aborted or timed out here may still be open on the server, which cannot cancel
   * it: the subscription stays open until the server's expiry and naks what still arrives, so
   * such messages are claimable again at once instead of after a lease.
   */
  #pull (
    stream: string,
    consumer: string,
    batch: number,
    waitMs: number,
    signal?: AbortSignal,
    ackNone = false,
  ): Promise<Msg[] | null> {
    const io = this.#ready()
    if (signal?.aborted === true) return Promise.resolve([])
    const wait = Math.max(5, Math.floor(waitMs))
    const inbox = io.inbox()
    const got: Msg[] = []
    return new Promise((resolve, reject) => {
      let answered = false
      let settled = false
      const finish = (err: Error | null): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (err !== null) reject(err)
        else resolve(answered || got.length > 0 ? got : null)
      }
      const close = (): void => {
        clearTimeout(lateTimer)
        sub.unsubscribe()
        this.#pulls.delete(cancel)
      }
      // close() of the store: as if aborted.
      const cancel = (): void => {
        close()
        finish(null)
      }
      const sub = io.nc.subscribe(inbox, {
        callback: (err, m) => {
          if (err !== null) {
            close()
            finish(err)
            return
          }
          if (m.reply !== undefined && m.reply.startsWith('$JS.ACK.')) {
            if (settled) {
              if (!ackNone) nak(m.reply, 0, io.nc)
              return
            }
            got.push(m)
            if (got.length >= batch) {
              close()
              finish(null)
            }
            return
          }
          // A status: 404 nothing due, 408 the request expired (both end it), 409 and others.
          answered = true
          close()
          const code = m.headers?.code ?? 0
          if (code === 404 || code === 408 || settled) finish(null)
          else {
            finish(
              new Error(
                `pull from ${stream}/${consumer}: ${code} ${m.headers?.description ?? ''}`.trim(),
              ),
            )
          }
        },
      })
      this.#pulls.add(cancel)
      // The server ends the request itself; this is for when it cannot (disconnected, consumer gone).
      const timer = setTimeout(() => finish(null), wait + this.#cfg.timeout)
      const lateTimer = setTimeout(close, wait + 2 * this.#cfg.timeout)
      const onAbort = (): void => finish(null)
      signal?.addEventListener('abort', onAbort, { once: true })
      io.nc.publish(
        `${io.js.apiPrefix}.CONSUMER.MSG.NEXT.${stream}.${consumer}`,
        JSON.stringify({ batch, no_wait: true, expires: wait * 1_000_000 }),
        { reply: inbox },
      )
    })
  }

  /**
   * Checks pulled messages against their status records (one parallel read per message) and
   * returns those to attempt now, leased. The others are settled here: already delivered
   * (the ack after the status write was lost) → ack; dead → term (or finish an interrupted
   * replay); not due yet (a retry whose nak was lost) → nak for the rest of the delay; delivered
   * too often → dead-lettered.
   */
  async #admit (r: RouteState, msgs: Msg[]): Promise<DeliveryRecord[]> {
    const io = this.#ready()
    const statuses = await Promise.all(msgs.map(async (m) => {
      const id = idOfSubject(m.subject)
      return await this.#readStatus(id).catch(() => undefined)
    }))
    const out: DeliveryRecord[] = []
    const now = Date.now()
    for (let i = 0; i < msgs.length; i++) {
      const m = msgs[i]!
      const reply = m.reply!
      let decoded: { env: Envelope, body: Buffer }
      try {
        decoded = decodeMessage(m.data)
      } catch (err) {
        // Not written by Gatehouse: it would fail every worker forever.
        this.#logger.error({
          msg: 'undecodable message in the delivery stream, terminated',
          subject: m.subject,
          err: errText(err),
        })
        io.nc.publish(reply, '+TERM')
        continue
      }
      const st = statuses[i]
      if (st === undefined) {
        // The status could not be read: give the message back rather than guess.
        nak(reply, 1000, io.nc)
        continue
      }
      let status: Versioned = st ?? { rec: statusFromEnvelope(decoded.env), seq: 0 }
      if (status.rec.state === 'delivered') {
        io.nc.publish(reply, '+ACK')
        continue
      }
      if (status.rec.state === 'dead') {
        const replayOf = Number(m.headers?.get(REPLAY_HEADER) ?? 0)
        if (replayOf !== status.seq) {
          io.nc.publish(reply, '+TERM')
          continue
        }
        // A replay published this message but has not (yet) written the status: finish it.
        const rolled = await this.#finishReplay(status, now).catch(() => null)
        if (rolled === null) {
          nak(reply, 1000, io.nc)
          continue
        }
        status = rolled
      }
      if (status.rec.nextAttemptAt > now + DUE_SLACK_MS) {
        nak(reply, status.rec.nextAttemptAt - now, io.nc)
        continue
      }
      const claim: Claim = { reply, status, data: m.data, claimedAt: now }
      const deliveries = deliveryCount(reply)
      if (deliveries > this.#deliveryCap(r)) {
        const error = `claimed ${
          deliveries - 1
        } times without an outcome (lease ${r.leaseMs} ms): the delivery worker may be failing on this message`
        await this.#settleClaim(decoded.env.id, claim, {
          kind: 'dead',
          at: now,
          error,
          status: null,
        }, false)
          .catch((err) =>
            this.#logger.error({
              msg: 'cannot dead-letter a message delivered too often',
              id: decoded.env.id,
              err: errText(err),
            })
          )
        continue
      }
      this.#claims.set(decoded.env.id, claim)
      out.push(toRecord(status.rec, decoded.body))
    }
    return out
  }

  /** Claims never settled (the worker lost them): their leases are long gone. */
  #pruneClaims (): void {
    if (this.#claims.size < 1024) return
    const now = Date.now()
    for (const [id, c] of this.#claims) {
      const lease = this.#routes.get(c.status.rec.route)?.leaseMs ?? DEFAULT_LEASE_MS
      if (now - c.claimedAt > 2 * lease) this.#claims.delete(id)
    }
  }

  // ---- settle -----------------------------------------------------------------------------

  /*
   * The status record is written first (compare-and-set against the version read at claim), then
   * the lease is released (ack, nak with the retry delay, or term). If the process dies between
   * the two, the message comes back after the lease and claim() finishes the job from the status.
   * A dead letter is published before the status that points at it; its Nats-Msg-Id makes a
   * repeat of the same settle store it once.
   */
  async settle (id: string, outcome: Settlement): Promise<void> {
    let claim = this.#claims.get(id)
    this.#claims.delete(id)
    if (claim === undefined) {
      // Settled without a lease held here (another process's claim, or a restart): update the
      // record; the message itself comes back after its lease, and claim() sees the outcome.
      const st = await this.#readStatus(id)
      const rec = st ?? await this.#pendingFromQueue(id)
      if (rec === null || rec.rec.state !== 'pending') return
      const m = await this.#getMsg(this.#names.stream, {
        last_by_subj: this.#names.deliver(rec.rec.route, id),
      })
      if (m === null) return
      claim = { reply: null, status: rec, data: m.data, claimedAt: Date.now() }
    }
    await this.#settleClaim(id, claim, outcome, true)
  }

  async #settleClaim (
    id: string,
    claim: Claim,
    outcome: Settlement,
    countAttempt: boolean,
  ): Promise<void> {
    const io = this.#ready()
    let deadSeq = 0
    for (let turn = 0; turn < 4; turn++) {
      const base = claim.status
      if (base.rec.state !== 'pending') {
        // Finished meanwhile by another worker whose lease overlapped ours: drop this outcome.
        if (claim.reply !== null) {
          io.nc.publish(claim.reply, base.rec.state === 'delivered' ? '+ACK' : '+TERM')
        }
        return
      }
      if (outcome.kind === 'dead' && deadSeq === 0) {
        const subject = this.#names.deadRoute(base.rec.route)
        const written = await this.#reserve('dead', subject.length + claim.data.length)
        try {
          const ack = await io.js.publish(subject, claim.data, {
            msgID: `${id}:${base.seq}`,
            timeout: this.#cfg.timeout,
          })
          deadSeq = ack.seq
          written(true)
        } catch (err) {
          written(false)
          throw this.#failed(err, 'dead letter')
        }
      }
      const next: StatusRecord = {
        ...base.rec,
        attempts: base.rec.attempts + (countAttempt ? 1 : 0),
        updatedAt: outcome.at,
        // A delivered request's headers go with its body (acked out of the queue): what the
        // status keeps of it is what status lookups and idempotency need.
        ...(outcome.kind === 'delivered'
          ? {
            state: 'delivered',
            nextAttemptAt: outcome.at,
            lastError: null,
            lastStatus: outcome.status,
            headers: [],
          }
          : outcome.kind === 'retry'
          ? {
            state: 'pending',
            nextAttemptAt: outcome.nextAttemptAt,
            lastError: outcome.error,
            lastStatus: outcome.status,
          }
          : {
            state: 'dead',
            nextAttemptAt: outcome.at,
            lastError: outcome.error,
            lastStatus: outcome.status,
            deadSeq,
          }),
      }
      try {
        await this.#putStatus(next, base.seq)
      } catch (err) {
        if (!isConflict(err)) throw this.#failed(err, 'status')
        const cur = await this.#readStatus(id)
        if (cur === null) return
        claim.status = cur
        continue
      }
      this.#writeError = null
      if (claim.reply !== null) {
        const verdict = outcome.kind === 'delivered'
          ? '+ACK'
          : outcome.kind === 'retry'
          ? nakText(outcome.nextAttemptAt - Date.now())
          : '+TERM'
        // Sent as a request, the server confirms it (JetStream's "ack ack"): settle resolves once
        // the consumer has counted it, so stats() read just after agrees (with a plain publish a
        // dead message could still count as pending). Best effort: a lost verdict only means the
        // message comes back after its lease, and claim() settles it from the status written above.
        await io.nc.request(claim.reply, verdict, { timeout: this.#cfg.timeout }).catch(() => {})
      }
      return
    }
    throw unavailable(`the status of ${id} kept changing under concurrent settles`)
  }

  // ---- reads ------------------------------------------------------------------------------

  async get (id: string): Promise<DeliveryRecord | null> {
    this.#ready()
    const st = await this.#readStatus(id)
    if (st === null) {
      const p = await this.#pendingFromQueue(id)
      return p === null ? null : await this.#hydrate(p)
    }
    return await this.#hydrate(st)
  }

  /**
   * A message whose status write failed: found by id alone. The wildcard lookup costs the
   * server a scan of the subjects, which is why it is only the fallback.
   */
  async #pendingFromQueue (id: string): Promise<Versioned | null> {
    const m = await this.#getMsg(this.#names.stream, {
      last_by_subj: this.#names.deliverAnyRoute(id),
    })
    if (m === null) return null
    return { rec: statusFromEnvelope(decodeMessage(m.data).env), seq: 0 }
  }

  /** The full record: the body comes from the queue (pending) or the dead letter (dead). */
  async #hydrate (st: Versioned): Promise<DeliveryRecord | null> {
    const n = this.#names
    if (st.rec.state === 'pending') {
      const m = await this.#getMsg(n.stream, { last_by_subj: n.deliver(st.rec.route, st.rec.id) })
      // A pending status without a message: left by an enqueue whose message was refused.
      return m === null ? null : toRecord(st.rec, decodeMessage(m.data).body)
    }
    if (st.rec.state === 'dead' && st.rec.deadSeq !== undefined) {
      const m = await this.#getMsg(n.dead, { seq: st.rec.deadSeq })
      if (m !== null) return toRecord(st.rec, decodeMessage(m.data).body)
    }
    return toRecord(st.rec, Buffer.alloc(0))
  }

  /**
   * Scans every status record (S_STATE is not indexed by anything but id), newest first by
   * createdAt, keeping only the `limit` best as it goes.
   */
  async list (filter: DeliveryFilter): Promise<DeliveryRecord[]> {
    const limit = Math.max(0, Math.floor(filter.limit))
    if (limit === 0) return []
    const match = (rec: StatusRecord): boolean =>
      (filter.state === undefined || rec.state === filter.state) &&
      (filter.route === undefined || rec.route === filter.route)
    const found = await this.#scanStatuses(match, limit + 64)
    const ordered = [...found.values()].sort(newestFirst)
    const out: DeliveryRecord[] = []
    // Hydrate in slices: orphaned pending statuses (no message) drop out and the next fill in.
    let i = 0
    while (i < ordered.length && out.length < limit) {
      const slice = ordered.slice(i, i + limit - out.length)
      i += slice.length
      for (const r of await mapLimit(slice, (st) => this.#hydrate(st))) if (r !== null) out.push(r)
    }
    return out
  }

  /** Status records that match, by id (a record updated mid-scan is seen once, in its last version). */
  async #scanStatuses (
    match: (rec: StatusRecord) => boolean,
    keep = Infinity,
  ): Promise<Map<string, Versioned>> {
    const found = new Map<string, Versioned>()
    await this.#scan(`${this.#names.state}.s.*`, (m, seq) => {
      const rec = parseStatus(m.data)
      if (rec === null) return
      if (!match(rec)) {
        found.delete(rec.id)
        return
      }
      found.set(rec.id, { rec, seq })
      if (found.size > keep * 4) {
        const best = [...found.values()].sort(newestFirst).slice(0, keep)
        found.clear()
        for (const b of best) found.set(b.rec.id, b)
      }
    })
    return found
  }

  /**
   * Reads S_STATE (the subjects matching `filter`) from start to end through an ephemeral
   * consumer without acks, in batches.
   */
  async #scan (filter: string, onMsg: (m: Msg, seq: number) => void): Promise<void> {
    const io = this.#ready()
    const stream = this.#names.state
    let name: string
    try {
      const info = await io.jsm.consumers.add(stream, {
        ack_policy: 'none',
        deliver_policy: 'all',
        filter_subject: filter,
        mem_storage: true,
        num_replicas: 1,
        // Left behind by a crash, it goes away by itself.
        inactive_threshold: 60_000 * 1_000_000,
      })
      name = info.name
      if (info.num_pending === 0) {
        io.jsm.consumers.delete(stream, name).catch(() => {})
        return
      }
    } catch (err) {
      throw this.#failed(err, 'scan')
    }
    try {
      for (;;) {
        const msgs = await this.#pull(stream, name, SCAN_BATCH, this.#cfg.timeout, undefined, true)
        if (msgs === null) throw new Error(`no answer from ${stream} while scanning`)
        let left = -1
        for (const m of msgs) {
          const t = m.reply!.split('.')
          onMsg(m, Number(t[t.length === 9 ? 5 : 7]))
          left = Number(t[t.length === 9 ? 8 : 10])
        }
        if (msgs.length === 0 || left === 0) return
      }
    } catch (err) {
      throw this.#failed(err, 'scan')
    } finally {
      io.jsm.consumers.delete(stream, name).catch(() => {})
    }
  }

  // ---- replay, purge, expire --------------------------------------------------------------

  async replay (
    which: { ids: readonly string[] } | { dead: true, route?: string },
    now: number,
  ): Promise<number> {
    this.#ready()
    let targets: Versioned[]
    if ('ids' in which) {
      const read = await mapLimit([...new Set(which.ids)], (id) => this.#readStatus(id))
      targets = read.filter((st): st is Versioned => st !== null && st.rec.state === 'dead')
    } else {
      const route = which.route
      targets = [
        ...(await this.#scanStatuses((rec) =>
          rec.state === 'dead' && (route === undefined || rec.route === route)
        )).values(),
      ]
      // Oldest first, so that they are attempted in their original order.
      targets.sort((a, b) => -newestFirst(a, b))
    }
    const done = await mapLimit(targets, (st) => this.#replayOne(st, now))
    return done.filter(Boolean).length
  }

  /*
   * The dead letter is published back to the queue (marked with the dead status's sequence),
   * then the status is set to pending with attempts reset, then the letter is deleted. A claim
   * that receives the message before the status is written sees the mark and finishes the
   * replay itself (#finishReplay), so the message is neither terminated as dead nor lost.
   */
  async #replayOne (st: Versioned, now: number): Promise<boolean> {
    const io = this.#ready()
    const n = this.#names
    if (st.rec.deadSeq === undefined) return false
    const letter = await this.#getMsg(n.dead, { seq: st.rec.deadSeq })
    if (letter === null) return false
    const h = io.headers()
    h.set(REPLAY_HEADER, String(st.seq))
    const subject = n.deliver(st.rec.route, st.rec.id)
    const written = await this.#reserve('queue', subject.length + letter.data.length)
    try {
      await io.js.publish(subject, letter.data, {
        msgID: `${st.rec.id}:replay:${st.seq}`,
        headers: h,
        timeout: this.#cfg.timeout,
      })
      written(true)
    } catch (err) {
      written(false)
      throw this.#failed(err, 'replay')
    }
    const done = await this.#finishReplay(st, now)
    return done !== null
  }

  /** The status half of a replay (see #replayOne); null when the record is no longer that dead one. */
  async #finishReplay (st: Versioned, now: number): Promise<Versioned | null> {
    const { deadSeq, ...rest } = st.rec
    const rec: StatusRecord = {
      ...rest,
      state: 'pending',
      attempts: 0,
      nextAttemptAt: now,
      updatedAt: now,
    }
    let seq: number
    try {
      seq = await this.#putStatus(rec, st.seq)
    } catch (err) {
      if (!isConflict(err)) throw this.#failed(err, 'replay status')
      // Someone else (a claim, or a concurrent replay) finished it: fine if it is pending now.
      const cur = await this.#readStatus(st.rec.id)
      return cur !== null && cur.rec.state === 'pending' ? cur : null
    }
    if (deadSeq !== undefined) await this.#deleteQuietly(this.#names.dead, deadSeq)
    return { rec, seq }
  }

  async purge (state: 'dead' | 'delivered', route: string | undefined): Promise<number> {
    this.#ready()
    const targets = await this.#scanStatuses((rec) =>
      rec.state === state && (route === undefined || rec.route === route)
    )
    const dropped = await mapLimit([...targets.values()], (st) => this.#drop(st))
    return dropped.filter(Boolean).length
  }

  /**
   * Deletes delivered and dead records (with their dead letters and idempotency keys) last
   * updated before `before`, and idempotency keys older than that whose delivery is gone.
   * Dead letters whose status write never happened (a crash between the two) are not found
   * here; they are rare, and purge of the dead letters' route stream by an operator clears them.
   */
  async expire (before: number): Promise<number> {
    this.#ready()
    const n = this.#names
    const statuses = new Map<string, Versioned>()
    const keys: Array<{ key: KeyRecord, seq: number }> = []
    await this.#scan(`${n.state}.>`, (m, seq) => {
      if (m.subject.startsWith(`${n.state}.s.`)) {
        const rec = parseStatus(m.data)
        if (rec !== null) statuses.set(rec.id, { rec, seq })
      } else {
        try {
          keys.push({ key: JSON.parse(Buffer.from(m.data).toString('utf8')) as KeyRecord, seq })
        } catch {}
      }
    })
    const expired = [...statuses.values()].filter((st) =>
      st.rec.state !== 'pending' && st.rec.updatedAt < before
    )
    const dropped = await mapLimit(expired, (st) => this.#drop(st, false))
    // Delivered before their headers were dropped at delivery (an older Gatehouse): dropped now.
    const stale = [...statuses.values()].filter((st) =>
      st.rec.state === 'delivered' && st.rec.updatedAt >= before && st.rec.headers.length > 0
    )
    await mapLimit(
      stale,
      (st) => this.#putStatus({ ...st.rec, headers: [] }, st.seq).catch(() => 0),
    )
    for (const st of expired) statuses.delete(st.rec.id)
    const gone = new Set(expired.map((st) => st.rec.id))
    // A key goes with its delivery, or when it is old and points at nothing (a failed enqueue).
    const staleKeys = keys.filter((k) =>
      gone.has(k.key.id) || (k.key.createdAt < before && !statuses.has(k.key.id))
    )
    await mapLimit(staleKeys, (k) => this.#deleteQuietly(n.state, k.seq))
    return dropped.filter(Boolean).length
  }

  /**
   * Deletes one status record by its exact sequence (so a record that changed since it was read,
   * say replayed, is left alone), then its dead letter and its idempotency key.
   */
  async #drop (st: Versioned, withKey = true): Promise<boolean> {
    const io = this.#ready()
    const n = this.#names
    try {
      await io.jsm.streams.deleteMessage(n.state, st.seq, false)
    } catch (err) {
      if (apiCode(err) === NO_MESSAGE_FOUND) return false
      throw this.#failed(err, 'delete')
    }
    if (st.rec.deadSeq !== undefined) await this.#deleteQuietly(n.dead, st.rec.deadSeq)
    if (withKey && st.rec.idempotencyKey !== null) {
      const k = await this.#getMsg(n.state, {
        last_by_subj: n.key(st.rec.route, st.rec.caller ?? '', st.rec.idempotencyKey),
      }).catch(() => null)
      if (k !== null && k.json<KeyRecord>().id === st.rec.id) {
        await this.#deleteQuietly(n.state, k.seq)
      }
    }
    return true
  }

  /*
   * pending: the route consumer's num_pending (not yet delivered) + num_ack_pending (leased, or
   * waiting out a retry delay). dead: one STREAM.INFO of S_DEAD, counts per route subject.
   * oldestPendingAt: the first message of the route in the queue. On a work queue acked messages
   * are gone, so that is the oldest pending one (a replayed message keeps its createdAt but sits
   * at the end of the queue, so this can miss an older replayed one). Routes without a consumer
   * (never opened by any gateway) are not listed.
   */
  async stats (_now: number): Promise<Record<string, RouteStats>> {
    const io = this.#ready()
    const n = this.#names
    const out: Record<string, { pending: number, dead: number, oldestPendingAt: number | null }> =
      {}
    try {
      const [consumers, dead] = await Promise.all([
        listAll(io.jsm.consumers.list(n.stream)),
        io.jsm.streams.info(n.dead, { subjects_filter: `${n.dead}.*` }),
      ])
      for (const [subject, count] of Object.entries(dead.state.subjects ?? {})) {
        if (count > 0) {
          out[decodeToken(subject.slice(n.dead.length + 1))] = {
            pending: 0,
            dead: count,
            oldestPendingAt: null,
          }
        }
      }
      await mapLimit(consumers, async (c) => {
        if (!c.name.startsWith('gh-')) return
        const route = decodeToken(c.name.slice(3))
        const pending = c.num_pending + c.num_ack_pending
        if (pending === 0) return
        const first = await io.jsm.direct.getMessage(n.stream, {
          seq: c.ack_floor.stream_seq + 1,
          next_by_subj: n.deliverRoute(route),
        }).catch(() => null)
        let oldest: number | null = null
        try {
          if (first !== null) oldest = decodeMessage(first.data).env.createdAt
        } catch {}
        const s = out[route] ??= { pending: 0, dead: 0, oldestPendingAt: null }
        s.pending = pending
        s.oldestPendingAt = oldest
      })
    } catch (err) {
      throw this.#failed(err, 'stats')
    }
    return out
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const io = this.#io
    this.#io = null
    this.#connected = false
    for (const cancel of [...this.#pulls]) cancel()
    // Leases still held stay with the server: they expire and the messages are claimed again.
    this.#claims.clear()
    if (io === null) return
    // Drain flushes acks and naks still buffered; bounded, as the server may be gone.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      io.nc.drain().catch(() => {}),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.#cfg.timeout)
      }),
    ])
    clearTimeout(timer)
    if (!io.nc.isClosed()) await io.nc.close().catch(() => {})
  }

  /**
   * On servers whose byte limit can drop stored messages (see the top of this file): refuses a
   * write that would take the stream past max_bytes, else counts it until its answer comes (call
   * the function returned with whether it was stored). The stream's bytes are read at most every
   * USAGE_REFRESH_MS in the background; a write that looks too big is refused only after a fresh
   * read, so space freed by deliveries counts at once. Writes stored while a read is on its way
   * may be counted twice until the next read: the estimate errs towards full.
   */
  #reserve (which: 'queue' | 'dead', size: number): Written | Promise<Written> {
    const u = this.#usage?.[which]
    if (u === undefined) return noop
    const cost = size + RECORD_OVERHEAD
    if (Date.now() - u.at > USAGE_REFRESH_MS) this.#readUsage(u).catch(() => {})
    // Synchronous when there is room: the publish leaves in the caller's turn.
    if (u.bytes + u.stored + u.inFlight + cost <= this.#cfg.max_bytes) return this.#count(u, cost)
    return this.#readUsage(u).then(() => {
      if (u.bytes + u.stored + u.inFlight + cost > this.#cfg.max_bytes) {
        const err = Object.assign(
          new Error(
            `maximum bytes exceeded (${u.stream}: ${u.bytes} of ${this.#cfg.max_bytes} bytes)`,
          ),
          { name: 'StoreFull' },
        )
        throw this.#failed(err, which === 'queue' ? 'enqueue' : 'dead letter')
      }
      return this.#count(u, cost)
    })
  }

  #count (u: Usage, cost: number): Written {
    u.inFlight += cost
    return (stored) => {
      u.inFlight -= cost
      if (stored) u.stored += cost
    }
  }

  /** One STREAM.INFO at a time; callers during it share its answer. */
  async #readUsage (u: Usage): Promise<void> {
    u.reading ??= (async () => {
      // Stored before the request left: in the answer. Stored after: maybe, so kept (twice).
      const counted = u.stored
      try {
        const info = await this.#ready().jsm.streams.info(u.stream)
        u.bytes = info.state.bytes
        u.stored -= counted
        u.at = Date.now()
      } catch (err) {
        throw this.#failed(err, `size of ${u.stream}`)
      } finally {
        u.reading = null
      }
    })()
    await u.reading
  }

  // ---- small server operations ------------------------------------------------------------

  async #readStatus (id: string): Promise<Versioned | null> {
    const m = await this.#getMsg(this.#names.state, { last_by_subj: this.#names.status(id) })
    if (m === null) return null
    const rec = parseStatus(m.data)
    return rec === null ? null : { rec, seq: m.seq }
  }

  /** Compare-and-set: `expect` is the sequence read (0: must not exist). Returns the new sequence. */
  async #putStatus (rec: StatusRecord, expect: number): Promise<number> {
    const ack: PubAck = await this.#ready().js.publish(
      this.#names.status(rec.id),
      JSON.stringify(rec),
      {
        expect: { lastSubjectSequence: expect },
        timeout: this.#cfg.timeout,
      },
    )
    return ack.seq
  }

  /** STREAM.MSG.GET from the stream leader (direct gets may answer from a lagging replica). */
  async #getMsg (
    stream: string,
    query: { seq: number } | { last_by_subj: string },
  ): Promise<StoredMsg | null> {
    try {
      return await this.#ready().jsm.streams.getMessage(stream, query)
    } catch (err) {
      if (apiCode(err) === NO_MESSAGE_FOUND) return null
      throw this.#failed(err, `read from ${stream}`)
    }
  }

  async #deleteQuietly (stream: string, seq: number): Promise<void> {
    try {
      await this.#io?.jsm.streams.deleteMessage(stream, seq, false)
    } catch {}
  }
}

// ---- helpers --------------------------------------------------------------------------------

function names (stream: string) {
  const dead = `${stream}_DEAD`
  const state = `${stream}_STATE`
  return {
    stream,
    dead,
    state,
    deliver: (route: string, id: string) =>
      `${stream}.deliver.${encodeToken(route)}.${encodeToken(id)}`,
    deliverRoute: (route: string) => `${stream}.deliver.${encodeToken(route)}.*`,
    deliverAnyRoute: (id: string) => `${stream}.deliver.*.${encodeToken(id)}`,
    deadRoute: (route: string) => `${dead}.${encodeToken(route)}`,
    status: (id: string) => `${state}.s.${encodeToken(id)}`,
    // Hashed: a client's key may hold anything, and its length is the client's choice.
    key: (route: string, caller: string, key: string) =>
      `${state}.k.${encodeToken(route)}.${
        createHash('sha256').update(caller === '' ? key : `${caller}\0${key}`).digest('hex')
      }`,
    durable: (route: string) => `gh-${encodeToken(route)}`,
  }
}

/**
 * A route name or id as one subject token (and consumer name): letters, digits and "-" as they
 * are (readable in `nats stream view`), every other byte as _XX. Route names allow "." (a token
 * separator) and "_" (the escape), so both are escaped.
 */
export function encodeToken (s: string): string {
  let out = ''
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b)
    out += /[A-Za-z0-9-]/.test(c) ? c : `_${b.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out === '' ? '_' : out
}

function decodeToken (t: string): string {
  const bytes: number[] = []
  for (let i = 0; i < t.length; i++) {
    if (t[i] === '_' && i + 2 < t.length && /^[0-9A-F]{2}$/.test(t.slice(i + 1, i + 3))) {
      bytes.push(parseInt(t.slice(i + 1, i + 3), 16))
      i += 2
    } else {
      bytes.push(t.charCodeAt(i))
    }
  }
  return Buffer.from(bytes).toString('utf8')
}

function idOfSubject (subject: string): string {
  return decodeToken(subject.slice(subject.lastIndexOf('.') + 1))
}

function envelope (msg: NewDelivery): Omit<Envelope, 'v'> {
  return {
    id: msg.id,
    route: msg.route,
    method: msg.method,
    target: msg.target,
    headers: [...msg.headers],
    idempotencyKey: msg.idempotencyKey,
    caller: msg.caller,
    fingerprint: msg.fingerprint,
    createdAt: msg.createdAt,
    t: performance.timeOrigin + performance.now(),
  }
}

/** [u32 length of the JSON envelope][envelope][body bytes as they are]. */
function encodeMessage (msg: NewDelivery): Buffer {
  const env = Buffer.from(JSON.stringify({ v: 1, ...envelope(msg) }), 'utf8')
  const head = Buffer.allocUnsafe(4)
  head.writeUInt32BE(env.length, 0)
  return Buffer.concat([head, env, msg.body])
}

function decodeMessage (data: Uint8Array): { env: Envelope, body: Buffer } {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  if (buf.length < 4) throw new Error('message too short')
  const len = buf.readUInt32BE(0)
  if (4 + len > buf.length) throw new Error('bad envelope length')
  const env = JSON.parse(buf.toString('utf8', 4, 4 + len)) as Envelope
  if (env.v !== 1) throw new Error(`unknown message version ${String(env.v)}`)
  // A copy: the client's read buffer is not ours to keep.
  return { env, body: Buffer.from(buf.subarray(4 + len)) }
}

function statusFromEnvelope (env: Envelope): StatusRecord {
  const { v: _v, ...rest } = env
  return {
    v: 1,
    ...rest,
    state: 'pending',
    attempts: 0,
    nextAttemptAt: env.createdAt,
    lastError: null,
    lastStatus: null,
    updatedAt: env.createdAt,
  }
}

function parseStatus (data: Uint8Array): StatusRecord | null {
  try {
    const rec = JSON.parse(
      Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'),
    ) as StatusRecord
    return rec.v === 1 ? rec : null
  } catch {
    return null
  }
}

function toRecord (rec: StatusRecord, body: Buffer): DeliveryRecord {
  return {
    id: rec.id,
    route: rec.route,
    method: rec.method,
    target: rec.target,
    headers: rec.headers,
    body,
    idempotencyKey: rec.idempotencyKey,
    caller: rec.caller ?? '',
    fingerprint: rec.fingerprint,
    createdAt: rec.createdAt,
    state: rec.state,
    attempts: rec.attempts,
    nextAttemptAt: rec.nextAttemptAt,
    lastError: rec.lastError,
    lastStatus: rec.lastStatus,
    updatedAt: rec.updatedAt,
  }
}

function newestFirst (a: Versioned, b: Versioned): number {
  return b.rec.createdAt - a.rec.createdAt || b.rec.t - a.rec.t
}

/** Delivery count from an ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending> (v2 adds domain and account hash). */
function deliveryCount (reply: string): number {
  const t = reply.split('.')
  return Number(t[t.length === 9 ? 4 : 6])
}

function nak (reply: string | undefined, delayMs: number, nc: NatsConnection | undefined): void {
  if (reply === undefined || nc === undefined || nc.isClosed()) return
  nc.publish(reply, nakText(delayMs))
}

function nakText (delayMs: number): string {
  const delay = Math.max(0, Math.round(delayMs))
  return delay === 0 ? '-NAK' : `-NAK ${JSON.stringify({ delay: delay * 1_000_000 })}`
}

async function ensureStream (
  jsm: JetStreamManager,
  cfg: Parameters<JetStreamManager['streams']['add']>[0],
): Promise<void> {
  let info
  try {
    info = await jsm.streams.info(cfg.name)
  } catch (err) {
    if (apiCode(err) !== STREAM_NOT_FOUND) throw err
    await jsm.streams.add(cfg)
    return
  }
  if (info.config.retention !== cfg.retention) {
    throw new Error(
      `stream ${cfg.name} exists with retention "${info.config.retention}", not "${cfg.retention}"`,
    )
  }
  const c = info.config
  if (
    c.max_bytes !== cfg.max_bytes || c.num_replicas !== cfg.num_replicas ||
    c.discard !== cfg.discard
  ) {
    // A changed max_bytes or replicas in the config applies to the existing stream.
    await jsm.streams.update(cfg.name, {
      ...c,
      max_bytes: cfg.max_bytes,
      num_replicas: cfg.num_replicas,
      discard: cfg.discard,
    })
  }
}

function noop (): void {}

function versionAtLeast (version: string, min: readonly number[]): boolean {
  const v = version.split(/[.-]/).slice(0, 3).map(Number)
  for (let i = 0; i < min.length; i++) {
    const a = v[i] ?? 0
    if (Number.isNaN(a)) return false
    if (a !== min[i]) return a > min[i]!
  }
  return true
}

async function listAll<T> (lister: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = []
  for await (const item of lister) all.push(item)
  return all
}

/** `fn` over `items`, at most IO_CONCURRENCY at once, results in order. */
async function mapLimit<T, R> (items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(IO_CONCURRENCY, items.length) }, worker))
  return out
}

function apiCode (err: unknown): number | null {
  if (err === null || typeof err !== 'object') return null
  if (
    (err as Error).name !== 'JetStreamApiError' &&
    (err as Error).name !== 'ConsumerNotFoundError' && (err as Error).name !== 'StreamNotFoundError'
  ) return null
  const code = (err as { code?: unknown }).code
  return typeof code === 'number' ? code : null
}

function isConflict (err: unknown): boolean {
  return apiCode(err) === WRONG_LAST_SEQUENCE
}

/** Limits of the stream (bytes, messages) or of the account's storage. */
function isFull (err: unknown): boolean {
  if (err instanceof Error && err.name === 'StoreFull') return true
  return apiCode(err) !== null &&
    /maximum (bytes|messages)|resource|storage|exceeded/i.test(errText(err))
}

/** Bigger than the server's max_payload (refused by the client) or the stream's max_msg_size. */
function isTooLarge (err: unknown): boolean {
  return /max_payload|maximum message size/i.test(errText(err))
}

function isGatewayErr (err: unknown): err is GatewayError {
  return err instanceof Error && err.name === 'GatewayError'
}

function errText (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/**
 * Credentials in the URL stay out of logs and status. Parsed (redactUrl), not matched: a
 * password may hold '@' or '/'. NATS server addresses are often written without a scheme.
 */
function redact (url: string): string {
  if (url.indexOf('@') === -1) return url
  return redactUrl(url.includes('://') ? url : `nats://${url}`)
}

function unavailable (reason: string): GatewayError {
  return gatewayError(
    'GH_DELIVERY_STORE_UNAVAILABLE',
    'The delivery store is not available; try again later',
    {
      reason,
      headers: { 'retry-after': RETRY_AFTER_S },
    },
  )
}

/** start() runs before any client exists: its detail is for the operator, so it says what failed. */
function startError (message: string, cause: unknown): GatewayError {
  return gatewayError('GH_DELIVERY_STORE_UNAVAILABLE', message, {
    reason: message,
    headers: { 'retry-after': RETRY_AFTER_S },
    cause,
  })
}
