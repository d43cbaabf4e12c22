// prom-client's metric classes on their own (src/observability/metrics.ts). The package entry
// point also loads the Pushgateway client (node:zlib, node:https) and the cluster aggregator,
// which Gatehouse does not use, at every start. The paths are internal to prom-client, so
// package.json pins it to 15.1.x and the test suite would catch a move.
declare module 'prom-client/lib/registry.js' {
  import { Registry } from 'prom-client'
  export default Registry
}
declare module 'prom-client/lib/counter.js' {
  import { Counter } from 'prom-client'
  export default Counter
}
declare module 'prom-client/lib/gauge.js' {
  import { Gauge } from 'prom-client'
  export default Gauge
}
declare module 'prom-client/lib/defaultMetrics.js' {
  import { collectDefaultMetrics } from 'prom-client'
  export default collectDefaultMetrics
}
