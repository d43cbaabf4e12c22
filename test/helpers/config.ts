import assert from 'node:assert/strict'
import { ConfigError, parseConfig, type ConfigIssue } from '../../src/index.js'

export const FILE = 'gatehouse.yaml'

/** parseConfig must throw a ConfigError; return it. */
export function configError (
  text: string,
  options: Parameters<typeof parseConfig>[1] = {},
): ConfigError {
  try {
    parseConfig(text, { env: {}, ...options }, FILE)
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`)
    return err
  }
  return assert.fail('expected parseConfig to throw a ConfigError')
}

/** The one issue reported at `path` (fails if there is not exactly one). */
export function issueAt (err: ConfigError, path: string): ConfigIssue {
  const found = err.issues.filter((i) => i.path === path)
  assert.equal(found.length, 1, `expected one issue at ${path}, got:\n${err.message}`)
  return found[0]!
}
