import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'

/** The `gatehouse` executable as users run it; it imports dist/, so `npm run build` must have run. */
export const BIN = fileURLToPath(new URL('../../bin/gatehouse.cjs', import.meta.url))

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Run a short-lived command (check, routes, deliveries ...) to completion; `cwd` defaults to ours. */
export async function runCli (args: string[], cwd?: string): Promise<CliResult> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => {
    stdout += c
  })
  child.stderr.setEncoding('utf8').on('data', (c: string) => {
    stderr += c
  })
  const [code] = await once(child, 'close') as [number | null]
  return { code, stdout, stderr }
}
