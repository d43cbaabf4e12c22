import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { LogCapture } from '../helpers/index.js'
import { createLogger } from '../../src/observability/logger.js'
import { AccessLog, type AccessEntry } from '../../src/observability/access-log.js'

const entry: AccessEntry = {
  id: 'abc',
  route: 'r',
  method: 'GET',
  path: '/x',
  status: 200,
  target: 'http://127.0.0.1:1',
  attempts: 1,
  bytesIn: 0,
  bytesOut: 5,
  ms: 1.5,
  upstreamMs: 0.75,
  code: null,
  reason: null,
  provider: null,
  subject: null,
}

describe('access log line', () => {
  test('has the same shape as the other log lines and every field', () => {
    const logs = new LogCapture()
    new AccessLog(createLogger('info', logs)).write(entry)
    const line = logs.lines[0]!
    assert.equal(line.level, 'info')
    assert.match(line.time, /^\d{4}-\d\d-\d\dT/)
    assert.deepEqual(
      { ...line, time: undefined },
      {
        level: 'info',
        time: undefined,
        msg: 'request',
        id: 'abc',
        route: 'r',
        method: 'GET',
        path: '/x',
        status: 200,
        target: 'http://127.0.0.1:1',
        attempts: 1,
        bytes_in: 0,
        bytes_out: 5,
        ms: 1.5,
        upstream_ms: 0.75,
      },
    )
  })

  test('escapes quotes, backslashes, control and non-ASCII characters (valid JSON)', () => {
    const logs = new LogCapture()
    new AccessLog(createLogger('info', logs)).write({
      ...entry,
      id: 'a"b\\c',
      path: '/ü/"x"\u0001',
      target: null,
      upstreamMs: null,
      status: 502,
      code: 'GH_UPSTREAM_RESET',
      reason: 'up: "closed"\n',
    })
    const line = logs.lines[0]!
    assert.equal(line.id, 'a"b\\c')
    assert.equal(line.path, '/ü/"x"\u0001')
    assert.equal(line.target, null)
    assert.equal(line.upstream_ms, null)
    assert.equal(line.code, 'GH_UPSTREAM_RESET')
    assert.equal(line.reason, 'up: "closed"\n')
  })

  test('names the provider and subject of an authenticated caller', () => {
    const logs = new LogCapture()
    new AccessLog(createLogger('info', logs)).write({
      ...entry,
      provider: 'sso',
      subject: 'svc "batch"',
    })
    assert.equal(logs.lines[0]!.auth, 'sso')
    assert.equal(logs.lines[0]!.sub, 'svc "batch"')
    new AccessLog(createLogger('info', logs)).write({
      ...entry,
      provider: 'partner',
      subject: null,
    })
    assert.equal(logs.lines[1]!.sub, null)
  })

  test('is not written when the level is above info', () => {
    const logs = new LogCapture()
    new AccessLog(createLogger('warn', logs)).write(entry)
    assert.equal(logs.lines.length, 0)
  })
})
