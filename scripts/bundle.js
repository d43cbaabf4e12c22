// Bundles the CLI into one file, dist/gatehouse.mjs, which bin/gatehouse.js runs.
// Why: on a small VM, resolving and reading the ~400 files of the dependency tree one by one
// doubles the gateway's cold start. The library entry (dist/index.js) stays unbundled.
import { build } from 'esbuild'

await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/gatehouse.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20.18',
  // Whitespace and syntax only: function names stay readable in stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: true,
  legalComments: 'linked',
  // CommonJS dependencies call require(); give the ES module bundle one.
  banner: { js: "import { createRequire as __gatehouseRequire } from 'node:module'; const require = __gatehouseRequire(import.meta.url);" },
  logLevel: 'warning',
})
