#!/usr/bin/env node
// Checks the import graph of src/: no cycles (type-only imports included) and no import from a
// lower layer to a higher one (docs/architecture.md lists the layers). Run by `npm run lint`.
import fs from 'node:fs'
import path from 'node:path'

const root = path.resolve(import.meta.dirname, '..', 'src')

/**
 * Layers, lowest first. A module may import modules of its own layer or lower ones. Paths are
 * relative to src/; the first matching prefix wins.
 */
const LAYERS = [
  ['version.ts', 'util/', 'types/', 'errors/', 'net/', 'config/'],
  ['observability/'],
  ['stores/', 'identity/', 'upstream/', 'plugins/'],
  ['delivery/'],
  // The per-request state and what steps build on: below the policies.
  ['pipeline/exchange.ts', 'pipeline/step.ts', 'pipeline/body.ts', 'pipeline/respond.ts',
    'pipeline/run.ts', 'pipeline/response.ts'],
  ['policies/'],
  // The route table: matchers and each route's compiled policies.
  ['compile/table.ts'],
  // The flow above the policies: the head, the terminals, whole answers.
  ['pipeline/'],
  ['compile/'],
  ['server/', 'admin/'],
  ['cli/', 'index.ts'],
]

function layerOf (rel) {
  for (let i = 0; i < LAYERS.length; i++) {
    for (const prefix of LAYERS[i]) if (rel === prefix || rel.startsWith(prefix)) return i
  }
  return -1
}

const spec = /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]/g
const graph = new Map()
function walk (dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) walk(p)
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
      const text = fs.readFileSync(p, 'utf8')
      const deps = new Set()
      for (const m of text.matchAll(spec)) {
        let t = path.resolve(path.dirname(p), m[1])
        if (t.endsWith('.js')) t = t.slice(0, -3) + '.ts'
        if (fs.existsSync(t)) deps.add(t)
      }
      graph.set(p, deps)
    }
  }
}
walk(root)

const problems = []
const rel = (p) => path.relative(root, p)
for (const [from, deps] of graph) {
  const lf = layerOf(rel(from))
  if (lf === -1) problems.push(`${rel(from)}: in no layer (add it to scripts/check-imports.mjs)`)
  for (const to of deps) {
    const lt = layerOf(rel(to))
    if (lf !== -1 && lt > lf) {
      problems.push(`${rel(from)} imports ${rel(to)}: a lower layer may not import a higher one`)
    }
  }
}

// Tarjan's strongly connected components: every component of more than one module is a cycle.
let index = 0
const idx = new Map()
const low = new Map()
const stack = []
const on = new Set()
function connect (v) {
  idx.set(v, index)
  low.set(v, index)
  index++
  stack.push(v)
  on.add(v)
  for (const w of graph.get(v) ?? []) {
    if (!graph.has(w)) continue
    if (!idx.has(w)) {
      connect(w)
      low.set(v, Math.min(low.get(v), low.get(w)))
    } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)))
  }
  if (low.get(v) === idx.get(v)) {
    const c = []
    let w
    do {
      w = stack.pop()
      on.delete(w)
      c.push(w)
    } while (w !== v)
    if (c.length > 1) problems.push(`import cycle: ${c.map(rel).sort().join(', ')}`)
  }
}
for (const v of graph.keys()) if (!idx.has(v)) connect(v)

if (problems.length > 0) {
  for (const p of problems) process.stderr.write(p + '\n')
  process.stderr.write(`${problems.length} import problem(s)\n`)
  process.exitCode = 1
} else {
  process.stdout.write(`imports: ${graph.size} modules, no cycles, layers respected\n`)
}
