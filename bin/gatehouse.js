#!/usr/bin/env node
import { main } from '../dist/gatehouse.mjs'

main(process.argv.slice(2)).then((code) => {
  if (typeof code === 'number') process.exitCode = code
}, (err) => {
  console.error(err && err.stack ? err.stack : err)
  process.exitCode = 1
})
