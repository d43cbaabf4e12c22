import neostandard from 'neostandard'

// Layout (indentation, line width, quotes, semicolons, spacing) is dprint's (dprint.json), so
// the style rules are off here: ESLint checks what a formatter cannot.
export default [
  ...neostandard({
    ts: true,
    noStyle: true,
    ignores: ['dist/**', 'node_modules/**', '.ci/node24/**', '.scratch/**'],
  }),
]
