// `npm start`: the demo model API and Gatehouse in front of it, stopped together with Ctrl-C.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
const children = [
  spawn(process.execPath, [join(here, 'demo-model.js')], { stdio: 'inherit' }),
  spawn(process.execPath, [join(root, 'bin', 'gatehouse.cjs'), 'start', '--config',
    join(here, 'gatehouse.yaml')], { stdio: 'inherit' }),
]
process.stdout.write(`
Gatehouse is starting on http://127.0.0.1:8080 (admin on http://127.0.0.1:9901). Try:
  curl -s localhost:8080/api/v1/models
  curl -s -X POST localhost:8080/api/v1/predict -H 'content-type: application/json' -d '{"text":"great and fast"}'
  curl -sN -X POST localhost:8080/api/v1/generate -H 'content-type: application/json' -d '{"prompt":"tokens arrive one by one"}'
  curl -s localhost:9901/metrics | grep gatehouse_requests_total

`)
let stopping = false
const stop = (signal) => {
  if (stopping) return
  stopping = true
  for (const c of children) c.kill(signal)
}
process.on('SIGINT', () => stop('SIGINT'))
process.on('SIGTERM', () => stop('SIGTERM'))
for (const c of children) {
  c.on('exit', (code) => {
    if (!stopping) {
      stop('SIGTERM')
      process.exitCode = code ?? 1
    }
  })
}
