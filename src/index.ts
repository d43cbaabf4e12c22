/**
 * Gatehouse: an identity-aware, streaming API gateway for machine-learning services.
 *
 * @example
 * ```ts
 * import { createGateway, loadConfigFile } from 'gatehouse'
 * const gateway = createGateway(loadConfigFile('gatehouse.yaml'))
 * await gateway.listen()
 * ```
 */
import { compileChecks } from './compile/checks.js'
import * as configLoad from './config/load.js'
import type { Config } from './config/schema.js'

export { createGateway } from './server/gateway.js'
export { settleMallocThresholds } from './util/malloc.js'
export type { Gateway, GatewayOptions, ListenInfo } from './server/gateway.js'
export type { Config, ConfigInput, RouteConfig, UpstreamConfig } from './config/schema.js'
export { compile, describeTable, RouteTable } from './compile/index.js'
export type { CompiledRoute, CompileDeps } from './compile/index.js'
export { ConfigError, GatewayError, ERRORS, isGatewayError } from './errors/index.js'
export type { ConfigIssue, ErrorCode } from './errors/index.js'
export { definePlugin } from './plugins/api.js'
export type {
  PluginContext,
  PluginDefinition,
  PluginRequest,
  PluginResponse,
  PluginUpstreamResponse,
  PluginLogger,
} from './plugins/api.js'
export type { Identity } from './identity/types.js'
export { VERSION } from './version.js'

/*
 * The config loaders of the public API check what compile() checks too (JSONata expressions), so
 * a config they accept is one the gateway starts with. src/config itself knows nothing of
 * expressions: the check is passed in (LoadOptions.checks), and a caller may pass its own.
 */
type LoadOptions = configLoad.LoadOptions
type ValidateOptions = Parameters<typeof configLoad.validateConfig>[1]

/** Read, resolve and validate a YAML config file. Throws ConfigError listing every problem. */
export function loadConfigFile (file: string, options: LoadOptions = {}): Config {
  return configLoad.loadConfigFile(file, { checks: compileChecks, ...options })
}

/** Parse and validate YAML text. `file` only labels error messages. */
export function parseConfig (
  text: string,
  options: LoadOptions = {},
  file: string | null = null,
): Config {
  return configLoad.parseConfig(text, { checks: compileChecks, ...options }, file)
}

/** Validate an already-parsed config object. A Config that came out of these is returned as it is. */
export function validateConfig (
  raw: unknown,
  options: ValidateOptions = {},
  file: string | null = null,
): Config {
  return configLoad.validateConfig(raw, { checks: compileChecks, ...options }, file)
}
