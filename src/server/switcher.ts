import type { RouteTable } from '../compile/index.js'

/**
 * The live route table, held in one place and replaced whole (traefik's HandlerSwitcher).
 *
 * A reload builds the next table aside and swaps it in with one assignment, so there is no
 * moment when half of a config is live. Each request reads `table` once, when it arrives, and
 * keeps that table to its end: requests routed before a swap finish on the old one. Nothing
 * else changes a table; anything that must follow the swap (providers, stores, pools) is the
 * reload's business (server/reload.ts).
 */
export class TableSwitcher {
  #table: RouteTable

  constructor (table: RouteTable) {
    this.#table = table
  }

  /** The table new requests are routed on. */
  get table (): RouteTable {
    return this.#table
  }

  /** Make `next` the live table; returns the one it replaces. */
  swap (next: RouteTable): RouteTable {
    const prev = this.#table
    this.#table = next
    return prev
  }
}
