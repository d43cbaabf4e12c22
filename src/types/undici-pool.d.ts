// undici's Pool module on its own. The package entry point also loads fetch, WebSocket,
// EventSource and the cache stores (about 200 ms of start-up on a small VM), none of which a
// proxy uses. The path is internal to undici, so package.json pins undici to 7.30.x and the
// test suite would catch a move.
declare module 'undici/lib/dispatcher/pool.js' {
  import { Pool } from 'undici'
  export default Pool
}

// The same for the identity client (src/identity/http.ts): the Agent and the request API alone.
declare module 'undici/lib/dispatcher/agent.js' {
  import { Agent } from 'undici'
  export default Agent
}

declare module 'undici/lib/api/api-request.js' {
  import type { Dispatcher } from 'undici'
  /** Dispatcher.prototype.request, unbound: call it with the dispatcher as `this`. */
  export default function request (this: Dispatcher, opts: Dispatcher.RequestOptions): Promise<Dispatcher.ResponseData>
}
