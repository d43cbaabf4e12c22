-- POST a 1 KiB JSON body (wrk adds Content-Length), then report like report.lua.
wrk.method = 'POST'
wrk.body = '{"q":"running shoes","n":10,"user":"u-123","pad":"' .. string.rep('x', 970) .. '"}'
wrk.headers['Content-Type'] = 'application/json'
local dir = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(dir .. 'report.lua')
