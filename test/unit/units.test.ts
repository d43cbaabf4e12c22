import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  formatDuration,
  formatSize,
  isUnitlessDuration,
  parseDuration,
  parseSize,
} from '../../src/config/units.js'

describe('parseDuration', () => {
  it('parses each unit into milliseconds', () => {
    assert.equal(parseDuration('500ms'), 500)
    assert.equal(parseDuration('2s'), 2_000)
    assert.equal(parseDuration('5m'), 300_000)
    assert.equal(parseDuration('1h'), 3_600_000)
    assert.equal(parseDuration('1d'), 86_400_000)
  })

  it('parses fractional amounts and rounds to whole milliseconds', () => {
    assert.equal(parseDuration('1.5s'), 1_500)
    assert.equal(parseDuration('0.25m'), 15_000)
    assert.equal(parseDuration('1.0004s'), 1_000)
  })

  it('accepts zero with a unit', () => {
    assert.equal(parseDuration('0s'), 0)
    assert.equal(parseDuration('0ms'), 0)
  })

  it('tolerates surrounding whitespace and a space before the unit', () => {
    assert.equal(parseDuration('  2s  '), 2_000)
    assert.equal(parseDuration('10 m'), 600_000)
  })

  it('refuses a bare number other than 0: a duration needs a unit', () => {
    // `first_byte: 60` looks like a minute; it used to mean 60 ms.
    assert.equal(parseDuration(250), null)
    assert.equal(parseDuration(60), null)
    assert.equal(parseDuration(0), 0)
    assert.equal(isUnitlessDuration(60), true)
    assert.equal(isUnitlessDuration('60'), true)
    assert.equal(isUnitlessDuration(' 1.5 '), true)
    assert.equal(isUnitlessDuration(-5), false)
    assert.equal(isUnitlessDuration('60x'), false)
  })

  it('rejects negative, NaN and infinite numbers', () => {
    assert.equal(parseDuration(-1), null)
    assert.equal(parseDuration(Number.NaN), null)
    assert.equal(parseDuration(Number.POSITIVE_INFINITY), null)
  })

  it('rejects malformed strings', () => {
    for (
      const bad of ['', ' ', 's', '2sec', '2S', '2MS', '-1s', '+1s', '1e3ms', '.5s', '1.s', '1h30m',
        '2 m s', 'ten seconds', '5w']
    ) {
      assert.equal(parseDuration(bad), null, `parseDuration(${JSON.stringify(bad)})`)
    }
  })

  it('rejects a unit-less string other than zero', () => {
    assert.equal(parseDuration('1500'), null)
    assert.equal(parseDuration(' 0 '), 0)
  })

  it('parses "0", the string formatDuration prints for zero', () => {
    assert.equal(parseDuration(formatDuration(0)), 0)
  })
})

describe('parseSize', () => {
  it('parses binary units into bytes', () => {
    assert.equal(parseSize('16KiB'), 16 * 1024)
    assert.equal(parseSize('10MiB'), 10 * 1024 ** 2)
    assert.equal(parseSize('1GiB'), 1024 ** 3)
    assert.equal(parseSize('2TiB'), 2 * 1024 ** 4)
  })

  it('parses decimal units into bytes', () => {
    assert.equal(parseSize('512B'), 512)
    assert.equal(parseSize('1KB'), 1_000)
    assert.equal(parseSize('10MB'), 10_000_000)
    assert.equal(parseSize('1GB'), 1_000_000_000)
    assert.equal(parseSize('1TB'), 1_000_000_000_000)
  })

  it('takes a unit-less string as bytes', () => {
    assert.equal(parseSize('1024'), 1024)
    assert.equal(parseSize('0'), 0)
  })

  it('parses fractional amounts and rounds down to whole bytes', () => {
    assert.equal(parseSize('1.5KiB'), 1536)
    assert.equal(parseSize('1.5B'), 1)
    assert.equal(parseSize('0.5MiB'), 512 * 1024)
  })

  it('tolerates surrounding whitespace and a space before the unit', () => {
    assert.equal(parseSize(' 10 MiB '), 10 * 1024 ** 2)
  })

  it('takes a bare integer as bytes', () => {
    assert.equal(parseSize(4096), 4096)
    assert.equal(parseSize(0), 0)
  })

  it('rejects negative, fractional, unsafe and non-finite numbers', () => {
    assert.equal(parseSize(-1), null)
    assert.equal(parseSize(1.5), null)
    assert.equal(parseSize(2 ** 53), null)
    assert.equal(parseSize(Number.NaN), null)
    assert.equal(parseSize(Number.POSITIVE_INFINITY), null)
  })

  it('rejects malformed strings', () => {
    for (
      const bad of ['', 'KiB', '10kib', '10kb', '10 K', '10XB', '-1KiB', '1e3', '.5KiB', '10 MiB/s',
        'ten', '1,024']
    ) {
      assert.equal(parseSize(bad), null, `parseSize(${JSON.stringify(bad)})`)
    }
  })
})

describe('formatDuration', () => {
  it('prints zero as "0"', () => {
    assert.equal(formatDuration(0), '0')
  })

  it('uses the largest unit that divides the value exactly', () => {
    assert.equal(formatDuration(2_000), '2s')
    assert.equal(formatDuration(90_000), '90s')
    assert.equal(formatDuration(120_000), '2m')
    assert.equal(formatDuration(5_400_000), '90m')
    assert.equal(formatDuration(3_600_000), '1h')
    assert.equal(formatDuration(86_400_000), '1d')
    assert.equal(formatDuration(172_800_000), '2d')
  })

  it('falls back to milliseconds when no larger unit divides the value', () => {
    assert.equal(formatDuration(1_500), '1500ms')
    assert.equal(formatDuration(250), '250ms')
  })

  it('prints values that parseDuration reads back unchanged', () => {
    for (const ms of [1, 250, 1_500, 2_000, 90_000, 120_000, 3_600_000, 5_400_000, 86_400_000]) {
      assert.equal(parseDuration(formatDuration(ms)), ms, `round trip of ${ms}`)
    }
  })
})

describe('formatSize', () => {
  it('prints values below 1KiB in bytes', () => {
    assert.equal(formatSize(0), '0B')
    assert.equal(formatSize(1000), '1000B')
    assert.equal(formatSize(1023), '1023B')
  })

  it('uses the largest binary unit that divides the value exactly', () => {
    assert.equal(formatSize(1024), '1KiB')
    assert.equal(formatSize(1024 ** 2), '1MiB')
    assert.equal(formatSize(10 * 1024 ** 2), '10MiB')
    assert.equal(formatSize(1024 ** 3), '1GiB')
    assert.equal(formatSize(1536 * 1024), '1536KiB')
  })

  it('falls back to bytes when no unit divides the value', () => {
    assert.equal(formatSize(1536), '1536B')
    assert.equal(formatSize(1024 ** 2 + 1), '1048577B')
  })

  it('caps the unit at GiB', () => {
    assert.equal(formatSize(2 * 1024 ** 4), '2048GiB')
  })

  it('prints values that parseSize reads back unchanged', () => {
    for (const bytes of [0, 1, 1023, 1024, 1536, 1024 ** 2, 3 * 1024 ** 3, 2 * 1024 ** 4]) {
      assert.equal(parseSize(formatSize(bytes)), bytes, `round trip of ${bytes}`)
    }
  })
})
