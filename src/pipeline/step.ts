/*
 * The step shape policies implement (declared with the Exchange they run over, which must
 * not import them): re-exported here under the name the policies read best.
 */
export { HANDLED, type Step, type Verdict } from './exchange.js'
