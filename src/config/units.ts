/**
 * Human-readable durations and sizes, as written in gatehouse.yaml.
 * A bare number is taken as bytes (sizes); a duration needs a unit, except 0.
 */

const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/
const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
}

/** A number, or a numeric string, that parseDuration refuses only for its missing unit. */
export function isUnitlessDuration (value: string | number): boolean {
  return typeof value === 'number'
    ? Number.isFinite(value) && value > 0
    : /^\s*\d+(?:\.\d+)?\s*$/.test(value)
}

/** Parse `500ms`, `2s`, `5m`, `1h`, `1d` (or 0) into milliseconds; null when malformed or unit-less. */
export function parseDuration (value: string | number): number | null {
  // Zero needs no unit (and "0" is what formatDuration writes). Any other unit-less value is
  // ambiguous: `first_byte: 60` looks like seconds and used to mean 60 ms.
  if (value === 0 || (typeof value === 'string' && value.trim() === '0')) return 0
  if (typeof value === 'number') return null
  const m = DURATION_RE.exec(value.trim())
  if (m === null) return null
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] as string]!)
}

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?$/
const SIZE_UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3,
  KiB: 1024,
  MB: 1e6,
  MiB: 1024 ** 2,
  GB: 1e9,
  GiB: 1024 ** 3,
  TB: 1e12,
  TiB: 1024 ** 4,
}

/** Parse `512B`, `16KiB`, `10MiB`, `1GB` (or a number of bytes) into bytes; null when malformed. */
export function parseSize (value: string | number): number | null {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : null
  const m = SIZE_RE.exec(value.trim())
  if (m === null) return null
  return Math.floor(Number(m[1]) * SIZE_UNITS[m[2] ?? 'B']!)
}

export function formatDuration (ms: number): string {
  if (ms === 0) return '0'
  for (
    const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const
  ) {
    if (ms % size === 0) return `${ms / size}${unit}`
  }
  return `${ms}ms`
}

export function formatSize (bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`
  }
  return `${bytes}B`
}
