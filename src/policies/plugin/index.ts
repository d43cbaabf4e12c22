import type { RouteConfig } from '../../config/schema.js'
import { PluginRef } from '../../plugins/loader.js'
import { PluginStep } from './step.js'

export { PluginStep }

/** `plugin: { path, options, timeout }` → the plugin's request hook (the module loads before the table serves). */
export function pluginPolicy (route: RouteConfig): PluginStep | null {
  return route.plugin === undefined ? null : new PluginStep(new PluginRef(route.plugin))
}
