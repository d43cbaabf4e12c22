-- GET /small with a 14,336-byte Accept header, a comma list of media types (the head stays
-- under the default 16 KiB max_header_size), then report like report.lua.
local items = {}
for i = 1, 600 do items[i] = string.format('application/vnd.example.v%d+json;q=0.%d', i, i % 10) end
wrk.headers['Accept'] = table.concat(items, ', '):sub(1, 14336)
local dir = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(dir .. 'report.lua')
