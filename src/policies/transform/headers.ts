import type { HeaderEditsConfig } from '../../config/schema.js'

/**
 * A header-edit block, compiled: remove, rename, set, add, in that order, on a flat
 * [name, value, …] list. Names in config are lower-case; the list's names may be any case.
 */
export class HeaderEdits {
  readonly #remove: ReadonlySet<string>
  readonly #rename: ReadonlyMap<string, string>
  readonly #set: ReadonlyArray<readonly [string, string]>
  readonly #add: ReadonlyArray<readonly [string, string]>

  constructor (cfg: HeaderEditsConfig) {
    this.#remove = new Set(cfg.remove ?? [])
    this.#rename = new Map(Object.entries(cfg.rename ?? {}))
    this.#set = Object.entries(cfg.set ?? {})
    this.#add = Object.entries(cfg.add ?? {})
  }

  /** Every name this block touches (for config checks against headers the gateway owns). */
  static names (cfg: HeaderEditsConfig): string[] {
    return [...(cfg.remove ?? []), ...Object.keys(cfg.rename ?? {}),
      ...Object.values(cfg.rename ?? {}), ...Object.keys(cfg.set ?? {}),
      ...Object.keys(cfg.add ?? {})]
  }

  apply (out: string[]): void {
    const setNames = this.#set
    let w = 0
    for (let r = 0; r < out.length; r += 2) {
      let name = out[r]!
      const lower = name.toLowerCase()
      if (this.#remove.has(lower)) continue
      const renamed = this.#rename.get(lower)
      if (renamed !== undefined) name = renamed
      const finalLower = renamed ?? lower
      if (setNames.length > 0 && setNames.some(([n]) => n === finalLower)) continue
      out[w++] = name
      out[w++] = out[r + 1]!
    }
    out.length = w
    for (const [n, v] of setNames) out.push(n, v)
    for (const [n, v] of this.#add) out.push(n, v)
  }
}
