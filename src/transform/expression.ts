import jsonata from 'jsonata'

/**
 * A JSONata expression (https://jsonata.org), parsed once when the config is compiled. JSONata
 * was chosen over an expression language of our own: it is documented, well kept, has no
 * dependencies, and users of Node-RED and AWS Step Functions already know it.
 *
 * Bindings name what the expression may read besides its input: `$headers`, `$query`,
 * `$method`, `$path`, `$identity` (and `$status` on responses); see docs/configuration.md.
 */
export class Expression {
  readonly source: string
  readonly #expr: jsonata.Expression

  constructor (source: string) {
    this.source = source
    this.#expr = jsonata(source)
  }

  /** JSONata evaluates asynchronously (its functions may be async); the result is plain JSON. */
  evaluate (input: unknown, bindings: Record<string, unknown>): Promise<unknown> {
    return this.#expr.evaluate(input, bindings)
  }
}

/** Why `source` does not parse, or null: for config validation ("routes[0].transform…: …"). */
export function expressionProblem (source: string): string | null {
  try {
    jsonata(source)
    return null
  } catch (err) {
    const e = err as { message?: string, position?: number }
    return `invalid JSONata expression: ${e.message ?? String(err)}${e.position === undefined ? '' : ` (at character ${e.position})`}`
  }
}
