-- Sends each request with a session cookie from a pool (one per
-- connection slot), and keeps the pool current when a response rotates it
-- (unless KEEP_COOKIES=0: then every request presents the cookie it
-- started with). With an empty pool, requests carry no cookie.
local cookies = {}
local idx = 0
local current = 0
local method = "GET"
local keep = true

function init(args)
  method = os.getenv("METHOD") or "GET"
  keep = os.getenv("KEEP_COOKIES") ~= "0"
  local path = os.getenv("COOKIES")
  if path and path ~= "" then
    for line in io.lines(path) do
      if line ~= "" then table.insert(cookies, line) end
    end
  end
end

function request()
  if #cookies == 0 then
    return wrk.format(method, nil, nil, nil)
  end
  idx = idx % #cookies + 1
  current = idx
  return wrk.format(method, nil, { ["Cookie"] = cookies[idx] }, nil)
end

function response(status, headers, body)
  local sc = headers["Set-Cookie"] or headers["set-cookie"]
  if keep and sc and current > 0 then
    local v = sc:match("^([^;]+)")
    if v then cookies[current] = v end
  end
end
