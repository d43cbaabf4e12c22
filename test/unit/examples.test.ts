import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { generateKeyPairSync } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfigFile } from '../../src/index.js'

const root = join(import.meta.dirname, '..', '..', 'examples')

/**
 * Every example config must stay valid. Each is checked in a copy of its folder, with the
 * secrets it expects supplied the way its README says (env vars; a signing key generated on
 * the spot, since no private key is committed).
 */
describe('examples', () => {
  const dirs = readdirSync(root, { withFileTypes: true }).filter((d) =>
    d.isDirectory() && existsSync(join(root, d.name, 'gatehouse.yaml'))
  )
  test('there are examples to check', () => assert.ok(dirs.length >= 1))
  for (const d of dirs) {
    test(`${d.name}/gatehouse.yaml is valid`, () => {
      const dir = mkdtempSync(join(tmpdir(), `gh-example-${d.name}-`))
      try {
        cpSync(join(root, d.name), dir, { recursive: true })
        const text = readFileSync(join(dir, 'gatehouse.yaml'), 'utf8')
        for (const m of text.matchAll(/\$\{file:\.\/([^}]+\.pem)\}/g)) {
          const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
            type: 'pkcs8',
            format: 'pem',
          }) as string
          writeFileSync(join(dir, m[1]!), key)
        }
        const env: NodeJS.ProcessEnv = {}
        for (const m of text.matchAll(/\$\{env:([A-Z0-9_]+)\}/g)) env[m[1]!] = 'example-secret'
        const config = loadConfigFile(join(dir, 'gatehouse.yaml'), { env })
        assert.ok(config.routes.length > 0)
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    })
  }
})
