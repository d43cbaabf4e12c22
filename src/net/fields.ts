/*
 * Flat header lists ([name, value, …], Node's rawHeaders shape, which undici and
 * ServerResponse.writeHead take as they are): the helpers every part of the request path
 * shares, and the response head as the client gets it.
 */

/**
 * First letters (lower-cased) of every special name (pipeline/headers.ts), plus 'p' for Proxy-*. Of the
 * a-names only Authorization (13 characters) is special: Accept* stays on the fast path.
 * The names and their handling follow the one list in net/owned-headers.ts.
 */
export function maybeSpecial (c: number, length: number): boolean {
  c |= 0x20
  return c === 0x68 || c === 0x63 || c === 0x74 || c === 0x6b || c === 0x75 || c === 0x65 ||
    c === 0x78 || c === 0x66 || c === 0x76 || c === 0x70 || (c === 0x61 && length === 13)
}

/**
 * Response head from undici's raw Buffers to Node's flat [name, value, …] array, hop-by-hop
 * fields removed, Via and X-Request-Id added. latin1 keeps header bytes exactly as sent.
 * null when its framing is one the gateway cannot relay (see Transfer-Encoding below).
 */
export function filterResponseHeaders (raw: Buffer[], requestId: string): string[] | null {
  const out: string[] = []
  let via: string | null = null
  let connection: string | null = null
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1')
    const value = raw[i + 1]!.toString('latin1')
    if (maybeSpecial(name.charCodeAt(0), 0)) {
      switch (name.toLowerCase()) {
        case 'connection':
          connection = connection === null ? value : `${connection}, ${value}`
          continue
        case 'transfer-encoding':
          // undici decodes "chunked" and nothing else: "gzip, chunked" would reach the client
          // still gzipped and unlabelled, and a list with empty items (", chunked,") is not
          // read as chunked at all, so the chunk framing would reach it as content. null: the
          // response cannot be relayed faithfully (502).
          if (value.length !== 7 && value.trim().toLowerCase() !== 'chunked') return null
          continue
        case 'keep-alive':
        case 'te':
        case 'trailer':
        case 'upgrade':
        case 'x-request-id':
          continue
        case 'via':
          via = via === null ? value : `${via}, ${value}`
          continue
      }
      if ((name.charCodeAt(0) | 0x20) === 0x70 && name.toLowerCase().startsWith('proxy-')) continue
    }
    out.push(name, value)
  }
  if (connection !== null) removeConnectionTokens(out, connection)
  out.push('via', via === null ? '1.1 gatehouse' : `${via}, 1.1 gatehouse`)
  out.push('x-request-id', requestId)
  return out
}

/** Drop, in place, every field of a flat [name, value, …] list whose lower-case name `drop` picks. */
export function dropHeaders (out: string[], drop: (lowerName: string) => boolean): void {
  let w = 0
  for (let r = 0; r < out.length; r += 2) {
    if (drop(out[r]!.toLowerCase())) continue
    out[w++] = out[r]!
    out[w++] = out[r + 1]!
  }
  out.length = w
}

/**
 * Add a step's response fields (Exchange.responseFields) to an answer's flat header list: a
 * field of the same name already there is replaced, except Vary, which lists what the answer
 * varies on and is added to. A field given with an empty value is only removed.
 */
export function addFields (out: string[], fields: readonly string[]): void {
  let w = 0
  for (let r = 0; r < out.length; r += 2) {
    const name = out[r]!.toLowerCase()
    let replaced = false
    if (name !== 'vary') {
      for (let i = 0; i < fields.length; i += 2) {
        if (fields[i] === name) {
          replaced = true
          break
        }
      }
    }
    if (replaced) continue
    out[w++] = out[r]!
    out[w++] = out[r + 1]!
  }
  out.length = w
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i + 1] !== '') out.push(fields[i]!, fields[i + 1]!)
  }
}

/** Framing fields: dropped wherever the gateway sends a body it holds whole (it sets the length). */
export function isLengthField (lower: string): boolean {
  return lower === 'content-length' || lower === 'transfer-encoding'
}

/** Drop the fields a Connection header names (other than the standard tokens). */
export function removeConnectionTokens (out: string[], connection: string): void {
  // The common values name no other field (every response of a keep-alive upstream says so).
  if (connection.length <= 10 && isStandardConnectionToken(connection.toLowerCase())) return
  let names: Set<string> | null = null
  for (const token of connection.split(',')) {
    const t = token.trim().toLowerCase()
    if (t === '' || isStandardConnectionToken(t)) continue
    ;(names ??= new Set()).add(t)
  }
  if (names === null) return
  const named = names
  dropHeaders(out, (n) => named.has(n))
}

function isStandardConnectionToken (t: string): boolean {
  return t === 'keep-alive' || t === 'close' || t === 'upgrade'
}

/** The first value of a field in a flat list (lower-case `name`), or null. */
export function headerOf (headers: readonly string[], name: string): string | null {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.length === name.length && headers[i]!.toLowerCase() === name) {
      return headers[i + 1]!
    }
  }
  return null
}

/**
 * The value of a field that must appear once (lower-case name): null when it is absent or
 * repeated (a repeated Origin means nothing a server can act on). One pass over the list.
 */
export function singleHeaderOf (headers: readonly string[], name: string): string | null {
  let found: string | null = null
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.length === name.length && headers[i]!.toLowerCase() === name) {
      if (found !== null) return null
      found = headers[i + 1]!
    }
  }
  return found
}
