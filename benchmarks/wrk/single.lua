-- One event per POST. With a unique client event_id each (so every event takes the idempotency
-- path and none is a duplicate), or, with the argument "noid", without event_id (server-generated).
local counter = 0
local prefix = "run"
local with_ids = true
init = function(args)
  prefix = args[1] or prefix
  with_ids = args[2] ~= "noid"
end
request = function()
  counter = counter + 1
  local id = ""
  if with_ids then id = string.format('"event_id":"%s-%d",', prefix, counter) end
  local body = string.format(
    '{%s"user_id":"u%d","item_id":"i%d","type":"click","context":{"page":"home"}}',
    id, counter % 943, counter % 1682)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
end
