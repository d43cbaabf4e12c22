-- GET /small with an 8,192-byte header value of '(' characters (a shape that makes a
-- backtracking comment or quoted-string parser go quadratic), then report like report.lua.
wrk.headers['X-Comment'] = string.rep('(', 8192)
local dir = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(dir .. 'report.lua')
