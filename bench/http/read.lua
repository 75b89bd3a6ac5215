-- Primary-key reads through POST /v1/queries, spread over the seeded rows.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local rows = tonumber(os.getenv("ROWS") or "10000")
request = function()
  local id = string.format("todo-%09d", math.random(0, rows - 1))
  return wrk.format(nil, "/v1/queries", nil, '["SELECT id, title, completed_at FROM todos WHERE id = ?", ["' .. id .. '"]]')
end
