import type { Identity } from '../identity/types.js'

/*
 * The plugin API: what a module named by a route's `plugin.path` exports. Plugins see only the
 * routes that name them; every other route streams byte for byte without them.
 *
 *   import { definePlugin } from 'gatehouse'
 *   export default definePlugin({
 *     name: 'rerank',
 *     gatehouse: '^0.1',
 *     async onRequest (ctx) { ... },
 *     async onResponse (ctx) { ... },
 *   })
 */

/** The request as it will be sent upstream; every field may be changed by onRequest. */
export interface PluginRequest {
  method: string
  /** Upstream path (after strip_prefix and any path rewrite), without the query. */
  path: string
  query: URLSearchParams
  /** Lower-case name → value (repeated fields joined with ", "). Host and the gateway's own fields are not here. */
  headers: Record<string, string>
  /**
   * The parsed JSON body (undefined when the body is not JSON). Assigning it sends the new
   * value as JSON; assigning `rawBody` sends those bytes instead.
   */
  body: unknown
  rawBody: Buffer
}

/** The upstream's answer, read whole; every field may be changed by onResponse. */
export interface PluginUpstreamResponse {
  status: number
  headers: Record<string, string>
  /** Parsed JSON (undefined when the body is not JSON); assign to replace it. */
  body: unknown
  rawBody: Buffer
}

/** A response a hook returns to answer the client itself (short-circuit, or replace). */
export interface PluginResponse {
  status: number
  headers?: Record<string, string>
  /** Objects and arrays are sent as JSON; strings and Buffers as they are. */
  body?: unknown
}

export interface PluginLogger {
  debug(obj: object | string, msg?: string): void
  info(obj: object | string, msg?: string): void
  warn(obj: object | string, msg?: string): void
  error(obj: object | string, msg?: string): void
}

export interface PluginContext<Options = Record<string, unknown>> {
  readonly route: string
  readonly requestId: string
  /** Who called (null on routes without auth). */
  readonly identity: Identity | null
  /** `plugin.options` from the config. */
  readonly options: Options
  readonly request: PluginRequest
  /** Set before onResponse. */
  response: PluginUpstreamResponse | null
  /** Shared between onRequest and onResponse of one request. */
  readonly state: Record<string, unknown>
  /** Aborted when the hook runs out of time or the client goes away: pass it to fetch(). */
  readonly signal: AbortSignal
  readonly log: PluginLogger
  /** Build a response for a hook to return. */
  respond(status: number, body?: unknown, headers?: Record<string, string>): PluginResponse
}

export interface PluginDefinition<Options = Record<string, unknown>> {
  readonly name: string
  /** The Gatehouse versions this plugin works with, as a semver range (e.g. '^0.1'). */
  readonly gatehouse: string
  /** Before the request goes upstream: change ctx.request, or return a response to answer at once. */
  onRequest?: (
    ctx: PluginContext<Options>,
  ) => void | PluginResponse | Promise<void | PluginResponse>
  /** After the upstream answered (read whole): change ctx.response, or return a response to send instead. */
  onResponse?: (
    ctx: PluginContext<Options>,
  ) => void | PluginResponse | Promise<void | PluginResponse>
}

/** Identity function that gives a plugin module its types. */
export function definePlugin<Options = Record<string, unknown>> (
  plugin: PluginDefinition<Options>,
): PluginDefinition<Options> {
  return plugin
}
