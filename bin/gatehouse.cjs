#!/usr/bin/env node
'use strict'
// CommonJS, not ESM like the rest of the package: an ES module entry point starts Node's ESM
// loader first, about 8 ms of every cold start. The loader still starts, later and only then,
// for the import() calls below (plugins, delivery stores).
const fs = require('node:fs')
const { createRequire } = require('node:module')
const path = require('node:path')
const v8 = require('node:v8')
const vm = require('node:vm')

// A small young generation (Node's default grows to 16 MiB) is collected often enough that the
// 64 KiB buffers of a long stream are freed as they pass: peak memory for a 1 GiB transfer
// stays where a 16 MiB one leaves it, and streaming gets faster (BENCHMARKS.md). It must be set
// before the heap grows, so it is set here, before the gateway loads. An operator's own
// --max-semi-space-size (flag or NODE_OPTIONS) wins.
const own = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)]
if (!own.some((a) => a.startsWith('--max-semi-space-size'))) v8.setFlagsFromString('--max-semi-space-size=1')

// The CLI is one bundle, compiled with V8's code cache: 30-45 ms off every cold start.
// The cache lives next to the bundle (same trust as the code itself), one file per Node version;
// V8 checks it against the source and rejects a stale one. Where the directory is read-only the
// cache is simply not written.
const dist = path.join(__dirname, '..', 'dist')
const file = path.join(dist, 'gatehouse.cjs')
const cacheFile = path.join(dist, `.gatehouse-${process.version}-${process.arch}.v8cache`)
let cachedData
try {
  cachedData = fs.readFileSync(cacheFile)
} catch {}
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${fs.readFileSync(file, 'utf8')}\n})`, {
  filename: file,
  cachedData,
})
// import() has no loader inside vm.Script: the bundle's dynamic imports (delivery stores, the
// NATS client, tsx and plugin files; see src/util/import.ts) come through this file's own.
globalThis[Symbol.for('gatehouse.import')] = (specifier) => import(specifier)
const cjs = { exports: {} }
script.runInThisContext()(cjs.exports, createRequire(file), cjs, file, dist)
if (cachedData === undefined || script.cachedDataRejected) {
  // After start-up, so the functions compiled while starting are in the cache too.
  setTimeout(() => {
    try {
      const tmp = `${cacheFile}.${process.pid}`
      fs.writeFileSync(tmp, script.createCachedData())
      fs.renameSync(tmp, cacheFile)
    } catch {}
  }, 1500).unref()
}

cjs.exports.main(process.argv.slice(2)).then((code) => {
  if (typeof code === 'number') process.exitCode = code
}, (err) => {
  console.error(err && err.stack ? err.stack : err)
  process.exitCode = 1
})
