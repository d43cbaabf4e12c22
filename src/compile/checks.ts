import { got, type CheckIssue, type Parts } from '../config/checks.js'
import type { Config } from '../config/schema.js'
import { expressionProblem } from '../policies/transform/expression.js'

/**
 * What compile() would refuse in a config: today, a transform expression that does not parse or
 * cannot be bounded. The config layer knows nothing of JSONata, so the callers of validateConfig
 * pass this as its `checks` (gatehouse check, start and reload, createGateway, the public API),
 * and each problem is reported at its path and line like any config problem, also beside
 * problems the schema found elsewhere.
 */
export function compileChecks (config: Parts<Config>): CheckIssue[] {
  const issues: CheckIssue[] = []
  ;(got(got(config)?.routes) ?? []).forEach((route, i) => {
    const t = got(got(route)?.transform)
    const request = got(t?.request)
    const response = got(t?.response)
    const expressions = [['request', 'body', request?.body], ['response', 'body', response?.body], [
      'response',
      'events',
      response?.events,
    ]] as const
    for (const [side, key, given] of expressions) {
      const source = got(given)
      const problem = source === undefined ? null : expressionProblem(source)
      if (problem !== null) {
        issues.push({ path: ['routes', i, 'transform', side, key], message: problem })
      }
    }
  })
  return issues
}
