// Bundles the CLI into one CommonJS file, dist/gatehouse.cjs, which bin/gatehouse.cjs loads
// through V8's code cache.
// Why: on a small VM, resolving and reading the ~400 files of the dependency tree one by one
// doubles the gateway's cold start. The library entry (dist/index.js) stays unbundled ESM.
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const here = path.dirname(fileURLToPath(import.meta.url))

// Builtins that a dependency loads at start-up for a feature Gatehouse does not use, replaced by a
// small stand-in that loads the real module on first use (see each shim's header).
// The importer is matched by path so no other module is affected.
const lazyBuiltins = {
  name: 'lazy-builtins',
  setup (b) {
    b.onResolve(
      { filter: /^(node:)?http2$/ },
      (args) =>
        /[\\/]undici[\\/]lib[\\/]dispatcher[\\/]client-h2\.js$/.test(args.importer)
          ? { path: path.join(here, 'shims', 'http2.cjs') }
          : undefined,
    )
  },
}

// src/ imports undici by its public name; its entry point would bundle (and run at every start)
// fetch, WebSocket, the cache stores and the mocks. The stand-in gives the same objects from
// the modules behind them (see scripts/shims/undici.cjs). Only Gatehouse's own modules are
// redirected: a dependency asking for undici gets the package.
const undiciParts = {
  name: 'undici-parts',
  setup (b) {
    b.onResolve({ filter: /^undici$/ }, (args) =>
      /[\\/]node_modules[\\/]/.test(args.importer)
        ? undefined
        : { path: path.join(here, 'shims', 'undici.cjs') })
  },
}

await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/gatehouse.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20.18',
  // Whitespace and syntax only: function names stay readable in stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: true,
  legalComments: 'linked',
  logLevel: 'warning',
  // import.meta is empty in CommonJS; the two modules that read it (the plugin loader and the
  // sqlite store's thread) check for that and fall back to the bundle's own location.
  logOverride: { 'empty-import-meta': 'silent' },
  // Loaded only by the routes that use them, from node_modules: a native addon (its .node file
  // cannot be bundled), the NATS client, and tsx (which spawns esbuild to compile plugins).
  external: ['better-sqlite3', '@nats-io/*', 'tsx', 'tsx/*'],
  plugins: [lazyBuiltins, undiciParts],
})
