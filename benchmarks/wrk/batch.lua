-- Batches of `size` events per POST, every event_id unique.
local counter = 0
local prefix = "run"
local size = 100
init = function(args)
  prefix = args[1] or prefix
  size = tonumber(args[2] or size)
end
request = function()
  local parts = {}
  for n = 1, size do
    counter = counter + 1
    parts[n] = string.format(
      '{"event_id":"%s-%d","user_id":"u%d","item_id":"i%d","type":"click","context":{"page":"home"}}',
      prefix, counter, counter % 943, counter % 1682)
  end
  local body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/events/batch", {["Content-Type"] = "application/json"}, body)
end
