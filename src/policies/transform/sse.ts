import type { Expression } from './expression.js'

/**
 * Applies an expression to the JSON of each server-sent event's `data` as the stream passes:
 * only the event being assembled is held (at most `maxEvent` characters), never the stream.
 * Events whose data is not JSON (`data: [DONE]`) and events without data (comments, `retry:`)
 * pass unchanged; an expression that yields nothing drops the event. Line endings are
 * normalised to LF, which the SSE grammar treats the same as CRLF and CR.
 */
export class SseEventTransform {
  readonly #expr: Expression
  readonly #bindings: Record<string, unknown>
  readonly #maxEvent: number
  readonly #decoder = new TextDecoder('utf-8')
  #pending = ''

  constructor (expr: Expression, bindings: Record<string, unknown>, maxEvent: number) {
    this.#expr = expr
    this.#bindings = bindings
    this.#maxEvent = maxEvent
  }

  /** The complete events in `chunk` (plus what was pending), transformed; '' when none completed. */
  async push (chunk: Buffer): Promise<string> {
    let text = this.#pending + this.#decoder.decode(chunk, { stream: true })
    // A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
    let held = ''
    if (text.endsWith('\r')) {
      held = '\r'
      text = text.slice(0, -1)
    }
    if (text.indexOf('\r') !== -1) text = text.replace(/\r\n?/g, '\n')
    const end = text.lastIndexOf('\n\n')
    if (end === -1) {
      this.#pending = text + held
      if (this.#pending.length > this.#maxEvent) {
        throw new Error(`a server-sent event exceeds ${this.#maxEvent} characters`)
      }
      return ''
    }
    this.#pending = text.slice(end + 2) + held
    let out = ''
    for (const event of text.slice(0, end).split('\n\n')) out += await this.#event(event)
    return out
  }

  /** The stream ended: whatever is pending (an unterminated event) goes out as it is. */
  end (): string {
    const rest = this.#pending + this.#decoder.decode()
    this.#pending = ''
    return rest
  }

  async #event (event: string): Promise<string> {
    // Leading blank lines between events are not events.
    if (event === '') return '\n'
    const lines = event.split('\n')
    let data: string | null = null
    for (const line of lines) {
      if (line === 'data' || line.startsWith('data:')) {
        const v = line.length <= 5 ? '' : line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5)
        data = data === null ? v : data + '\n' + v
      }
    }
    if (data === null) return event + '\n\n'
    let json: unknown
    try {
      json = JSON.parse(data)
    } catch {
      return event + '\n\n'
    }
    const result = await this.#expr.evaluate(json, this.#bindings)
    if (result === undefined) return ''
    let out = ''
    let written = false
    for (const line of lines) {
      if (line === 'data' || line.startsWith('data:')) {
        if (!written) {
          out += 'data: ' + JSON.stringify(result) + '\n'
          written = true
        }
        continue
      }
      out += line + '\n'
    }
    return out + '\n'
  }
}
