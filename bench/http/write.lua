-- Single-row write transactions through POST /v1/transactions, unique keys
-- per thread so every request inserts one row.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local thread_id = 0
setup = function(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end
request = function()
  counter = counter + 1
  local id = string.format("w-%d-%d-%d", tid or 0, counter, math.random(0, 1000000000))
  return wrk.format(nil, "/v1/transactions", nil, '[["INSERT INTO todos (id, title) VALUES (?, ?)", ["' .. id .. '", "written through the API"]]]')
end
