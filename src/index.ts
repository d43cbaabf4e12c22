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
export { createGateway } from './server/gateway.js'
export type { Gateway, GatewayOptions, ListenInfo } from './server/gateway.js'
export { loadConfigFile, parseConfig, validateConfig } from './config/load.js'
export type { Config, ConfigInput, RouteConfig, UpstreamConfig } from './config/schema.js'
export { compile, describeTable, RouteTable } from './compile/index.js'
export type { CompiledRoute } from './compile/index.js'
export { ConfigError, GatewayError, ERRORS, isGatewayError } from './errors/index.js'
export type { ConfigIssue, ErrorCode } from './errors/index.js'
export { definePlugin } from './plugins/api.js'
export type { PluginContext, PluginDefinition, PluginRequest, PluginResponse, PluginUpstreamResponse, PluginLogger } from './plugins/api.js'
export type { Identity } from './identity/types.js'
export { VERSION } from './version.js'
