#!/usr/bin/env node
// Formats the code with dprint's TypeScript plugin (its wasm build, from npm) under the settings
// in dprint.json. Run by `npm run format`; `--check` (in `npm run lint`) changes nothing and
// fails listing the files that are not formatted.
//
// Why not the dprint CLI: it comes as one native package per platform, and a registry that
// mirrors only some of them makes `npm ci` fail on the lock file. The plugin is the same code,
// so this script formats exactly as the CLI would.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createFromBuffer } from '@dprint/formatter'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const check = process.argv.includes('--check')
const config = JSON.parse(fs.readFileSync(path.join(root, 'dprint.json'), 'utf8'))
const wasm = fs.readFileSync(
  path.join(root, 'node_modules', '@dprint', 'typescript', 'plugin.wasm'),
)
const formatter = createFromBuffer(wasm)
const { lineWidth, indentWidth, useTabs, newLineKind } = config
formatter.setConfig({ lineWidth, indentWidth, useTabs, newLineKind }, config.typescript)
const problems = formatter.getConfigDiagnostics()
if (problems.length > 0) {
  for (const p of problems) process.stderr.write(`dprint.json: ${p.propertyName}: ${p.message}\n`)
  process.exit(2)
}

/** The folders formatted, and the file endings in them (dprint.json `includes`, as a walk). */
const DIRS = ['src', 'test', 'bench', 'scripts', 'examples']
const EXT = /\.(ts|js|mjs|cjs)$/
const SKIP = new Set(['node_modules', 'results', 'dist'])

function* walk (dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(e.name) || e.name.startsWith('.')) continue
    const p = path.join(dir, e.name)
    if (e.isDirectory()) yield* walk(p)
    else if (EXT.test(e.name)) yield p
  }
}

const files = [...DIRS.flatMap((d) => [...walk(path.join(root, d))]),
  ...fs.readdirSync(root).filter((f) => /\.js$/.test(f)).map((f) => path.join(root, f))]
const unformatted = []
for (const file of files) {
  const text = fs.readFileSync(file, 'utf8')
  let out
  try {
    out = formatter.formatText({ filePath: file, fileText: text })
  } catch (err) {
    process.stderr.write(`${path.relative(root, file)}: ${err.message}\n`)
    process.exitCode = 1
    continue
  }
  if (out === text) continue
  unformatted.push(path.relative(root, file))
  if (!check) fs.writeFileSync(file, out)
}
if (check && unformatted.length > 0) {
  process.stderr.write(
    `not formatted (npm run format fixes them):\n  ${unformatted.join('\n  ')}\n`,
  )
  process.exitCode = 1
} else if (!check) {
  process.stdout.write(`formatted ${unformatted.length} of ${files.length} files\n`)
}
