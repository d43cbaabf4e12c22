/**
 * Dynamic import of modules that are not bundled (native addons, the NATS client, tsx, plugin
 * files). The CLI runs as one bundle inside vm.Script, where a bare import() has no loader;
 * bin/gatehouse.cjs registers one under this symbol. Used as a library, plain import() works.
 */
export function importModule<T = unknown> (specifier: string): Promise<T> {
  const hook = (globalThis as Record<symbol, ((s: string) => Promise<unknown>) | undefined>)[HOOK]
  return (hook !== undefined ? hook(specifier) : import(specifier)) as Promise<T>
}

const HOOK = Symbol.for('gatehouse.import')
