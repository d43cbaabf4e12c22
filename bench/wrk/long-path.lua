-- GET an 8,192-byte path (/small/ and 16-byte segments; the upstream answers /small/*), then
-- report like report.lua. 8 KiB is the gateway's default listen.limits.max_uri.
local path = '/small/' .. string.rep('0123456789abcde/', 511)
wrk.path = path .. string.rep('x', 8192 - #path)
local dir = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(dir .. 'report.lua')
