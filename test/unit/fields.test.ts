import assert from 'node:assert/strict'
import { test } from 'node:test'
import { headerOf, singleHeaderOf } from '../../src/net/fields.js'

test('headerOf: the first value of a field, by lower-case name, whatever case it was sent in', () => {
  const raw = ['Host', 'a.example', 'ORIGIN', 'https://app.example', 'origin',
    'https://evil.example']
  assert.equal(headerOf(raw, 'origin'), 'https://app.example')
  assert.equal(headerOf(raw, 'host'), 'a.example')
  assert.equal(headerOf(raw, 'accept'), null)
})

test('singleHeaderOf: the value of a field sent once; null when absent or repeated', () => {
  assert.equal(singleHeaderOf(['Origin', 'https://app.example'], 'origin'), 'https://app.example')
  assert.equal(singleHeaderOf(['Accept', '*/*'], 'origin'), null)
  assert.equal(
    singleHeaderOf(['Origin', 'https://a.example', 'origin', 'https://a.example'], 'origin'),
    null,
  )
  // An empty value is a value (the caller decides what it means).
  assert.equal(singleHeaderOf(['Origin', ''], 'origin'), '')
  // A name that only starts like the field is another field.
  assert.equal(
    singleHeaderOf(['Origin-Extra', 'x', 'Origin', 'https://b.example'], 'origin'),
    'https://b.example',
  )
})
