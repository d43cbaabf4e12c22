import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { RouteExchange } from '../../src/compile/table.js'
import type { Identity, ProviderKind } from '../../src/identity/types.js'
import { callerOf } from '../../src/pipeline/accept.js'

/** The two things callerOf reads of a request: who it is, and where it comes from. */
function request (identity: Identity | null, address = '203.0.113.7'): RouteExchange {
  return { identity, resolveClientIp: () => address } as unknown as RouteExchange
}

function identity (
  kind: ProviderKind,
  provider: string,
  claims: Record<string, unknown>,
  subject: string | null = null,
  clientId: string | null = null,
): Identity {
  return {
    provider,
    kind,
    subject,
    clientId,
    scopes: new Set(),
    claims,
    expiresAt: Infinity,
    phantom: null,
  }
}

test('callerOf: one caller, one scope; scopes of different callers never meet', () => {
  const scopes = [
    callerOf(request(null)),
    callerOf(request(null, '198.51.100.1')),
    callerOf(request(identity('api_key', 'keys', { sub: 'alice' }, 'alice', 'alice'))),
    callerOf(request(identity('api_key', 'keys', { sub: 'bob' }, 'bob', 'bob'))),
    // The same id at another provider is another caller.
    callerOf(request(identity('api_key', 'partner-keys', { sub: 'alice' }, 'alice', 'alice'))),
    callerOf(request(identity('jwt', 'sso', { sub: 'x' }, 'x', null))),
    // A token without sub whose client is named like someone's sub.
    callerOf(request(identity('jwt', 'sso', { client_id: 'x' }, 'x', 'x'))),
    // Introspection: a username that equals another caller's sub.
    callerOf(request(identity('introspection', 'idp', { username: 'x' }, 'x', null))),
    callerOf(request(identity('introspection', 'idp', { sub: 'x' }, 'x', null))),
    callerOf(request(identity('webhook', 'github', {}))),
  ]
  assert.equal(new Set(scopes).size, scopes.length, scopes.join('\n'))
})

test('callerOf: a token that names no one is scoped by its address, not shared by all such tokens', () => {
  const nobody = identity('jwt', 'sso', { iss: 'https://idp.example' })
  assert.notEqual(
    callerOf(request(nobody, '203.0.113.7')),
    callerOf(request(nobody, '203.0.113.8')),
  )
  assert.equal(callerOf(request(nobody, '203.0.113.7')), callerOf(request(nobody, '203.0.113.7')))
})

test('callerOf: a webhook\'s sender is its provider, whatever address a retry comes from', () => {
  const hook = identity('webhook', 'stripe', {})
  assert.equal(callerOf(request(hook, '203.0.113.7')), callerOf(request(hook, '192.0.2.44')))
})
