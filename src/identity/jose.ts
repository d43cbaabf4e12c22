/** jose's module type; the code is loaded on first use (loadJose). */
export type Jose = typeof import('jose')

let mod: Promise<Jose> | null = null

/**
 * jose is loaded when the first JWT provider or phantom-token signer starts, not at process
 * start: a config without them never evaluates it (it is most of the CLI bundle's size).
 */
export function loadJose (): Promise<Jose> {
  mod ??= import('jose')
  return mod
}
