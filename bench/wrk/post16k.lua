-- POST a 16 KiB body (wrk adds Content-Length), then report like report.lua.
wrk.method = 'POST'
wrk.body = string.rep('x', 16384)
wrk.headers['Content-Type'] = 'application/octet-stream'
local dir = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(dir .. 'report.lua')
