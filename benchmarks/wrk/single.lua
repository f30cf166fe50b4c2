-- One event per POST, each with a unique event_id (so none is a duplicate).
local counter = 0
local prefix = "run"
init = function(args) prefix = args[1] or prefix end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"event_id":"%s-%d","user_id":"u%d","item_id":"i%d","type":"click","context":{"page":"home"}}',
    prefix, counter, counter % 943, counter % 1682)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
end
