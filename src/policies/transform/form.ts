/**
 * application/x-www-form-urlencoded → a JSON object, strictly: URLSearchParams keeps a
 * malformed escape ("%zz", a cut UTF-8 sequence) as literal text, which would hand the
 * upstream a value the sender never meant. Names repeated become arrays, in order.
 * Returns null for a malformed body.
 */
export function formToJson (body: Buffer): Record<string, string | string[]> | null {
  const out: Record<string, string | string[]> = Object.create(null)
  const text = body.toString('latin1')
  if (text.length === 0) return out
  for (const pair of text.split('&')) {
    if (pair === '') continue
    const eq = pair.indexOf('=')
    const name = decode(eq === -1 ? pair : pair.slice(0, eq))
    const value = decode(eq === -1 ? '' : pair.slice(eq + 1))
    if (name === null || value === null) return null
    const prev = out[name]
    if (prev === undefined) out[name] = value
    else if (Array.isArray(prev)) prev.push(value)
    else out[name] = [prev, value]
  }
  // A plain object (Object.create(null) would print oddly in plugins and logs).
  return { ...out }
}

/** '+' is a space; escapes must be whole UTF-8 sequences; raw bytes must be printable ASCII. */
function decode (s: string): string | null {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    // Raw non-ASCII or control bytes are not form-urlencoded (the sender forgot to escape).
    if (c < 0x20 || c > 0x7e) return null
  }
  try {
    return decodeURIComponent(s.replaceAll('+', ' '))
  } catch {
    return null
  }
}
