-- luaserve.metrics: `--metrics-path /metrics`, Prometheus' text format.
-- Every request is counted at the end of its pipeline (server.lua, where
-- the access line is written) into this worker's counters in shared
-- memory (core/metrics.c); a scrape, answered by whichever worker takes
-- it, adds up every worker's. Nothing here runs when the option is off.
--
--   luaserve_http_requests_total{route,method,status}        counter
--   luaserve_http_request_duration_seconds{route}            histogram
--   luaserve_http_requests_in_flight                          gauge
--   luaserve_http_connections                                 gauge
--   luaserve_event_loop_lag_seconds{worker}                   gauge
--   luaserve_sync_pool_threads, _busy_threads, _queue_depth   gauges
--   luaserve_shared_dict_bytes, _capacity_bytes, _entries     gauges
--   luaserve_shared_dict_evictions_total                      counter
--   luaserve_workers, luaserve_worker_restarts_total

local core = require "luaserve.core"

local series_of = core.metrics_series
local observe = core.metrics_observe
local concat = table.concat
local fmt = string.format

local M = {}

local UNMATCHED = "(unmatched)"   -- 404 and 405: no route template
local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

-- route -> method -> status -> the series' index (registered once)
local cache = {}


--- observe(req, status, seconds): count one answered request.
function M.observe(req, status, seconds)
  local route = req.route or UNMATCHED
  local by_method = cache[route]
  if by_method == nil then by_method = {} cache[route] = by_method end
  local method = req.method
  local by_status = by_method[method]
  if by_status == nil then by_status = {} by_method[method] = by_status end
  local i = by_status[status]
  if i == nil then
    i = series_of(route, method, status)
    by_status[status] = i
  end
  observe(i, seconds)
end


-- A label value as the text format wants it.
local function label(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end


local function num(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v % 1 == 0 and v < 2^53 and v > -2^53 then return fmt("%d", v) end
  local s = fmt("%.15g", v)   -- the shortest text that reads back the same
  if tonumber(s) ~= v then s = fmt("%.17g", v) end
  return s
end


--- render(): the text of a scrape.
function M.render()
  local snap = core.metrics_snapshot()
  local out = {}
  local function head(name, kind, help)
    out[#out + 1] = fmt("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
  end
  local function line(name, labels, v)
    out[#out + 1] = fmt("%s%s %s\n", name, labels, num(v))
  end
  local list = snap.series
  table.sort(list, function(a, b)
    if a.route ~= b.route then return a.route < b.route end
    if a.method ~= b.method then return a.method < b.method end
    return a.status < b.status
  end)

  head("luaserve_http_requests_total", "counter",
    "Requests answered, by route template, method and status.")
  for _, s in ipairs(list) do
    line("luaserve_http_requests_total", fmt('{route="%s",method="%s",status="%s"}',
      label(s.route), label(s.method), label(s.status)), s.count)
  end

  -- One histogram per route: the series of its methods and statuses added.
  local routes, by_route = {}, {}
  for _, s in ipairs(list) do
    local r = by_route[s.route]
    if not r then
      r = { count = 0, sum = 0, buckets = {} }
      for j = 1, #snap.bounds + 1 do r.buckets[j] = 0 end
      by_route[s.route] = r
      routes[#routes + 1] = s.route
    end
    r.count = r.count + s.count
    r.sum = r.sum + s.sum
    for j = 1, #s.buckets do r.buckets[j] = r.buckets[j] + s.buckets[j] end
  end
  head("luaserve_http_request_duration_seconds", "histogram",
    "Time from a request's arrival to its answer, by route template.")
  local name = "luaserve_http_request_duration_seconds"
  for _, route in ipairs(routes) do
    local r, l = by_route[route], label(route)
    local cum = 0
    for j, bound in ipairs(snap.bounds) do
      cum = cum + r.buckets[j]
      line(name .. "_bucket", fmt('{route="%s",le="%s"}', l, num(bound)), cum)
    end
    line(name .. "_bucket", fmt('{route="%s",le="+Inf"}', l), r.count)
    line(name .. "_sum", fmt('{route="%s"}', l), r.sum)
    line(name .. "_count", fmt('{route="%s"}', l), r.count)
  end

  head("luaserve_http_requests_in_flight", "gauge",
    "Requests being handled now (all workers).")
  line("luaserve_http_requests_in_flight", "", snap.inflight)
  head("luaserve_http_connections", "gauge", "Open client connections (all workers).")
  line("luaserve_http_connections", "", snap.conns)
  head("luaserve_event_loop_lag_seconds", "gauge",
    "The longest time one run of Lua code held a worker's loop in the last 10 to 20 s.")
  for _, w in ipairs(snap.workers) do
    line("luaserve_event_loop_lag_seconds", fmt('{worker="%d"}', w.slot), w.lag)
  end
  head("luaserve_sync_pool_threads", "gauge", "Threads of the sync pools (all workers).")
  line("luaserve_sync_pool_threads", "", snap.pool_threads)
  head("luaserve_sync_pool_busy_threads", "gauge", "Pool threads running a sync function.")
  line("luaserve_sync_pool_busy_threads", "", snap.pool_busy)
  head("luaserve_sync_pool_queue_depth", "gauge", "Sync jobs waiting for a pool thread.")
  line("luaserve_sync_pool_queue_depth", "", snap.pool_queued)
  head("luaserve_shared_dict_bytes", "gauge", "Bytes luaserve.shared's entries use.")
  line("luaserve_shared_dict_bytes", "", snap.dict.bytes)
  head("luaserve_shared_dict_capacity_bytes", "gauge", "luaserve.shared's capacity (--shared-size).")
  line("luaserve_shared_dict_capacity_bytes", "", snap.dict.capacity)
  head("luaserve_shared_dict_entries", "gauge", "Entries in luaserve.shared.")
  line("luaserve_shared_dict_entries", "", snap.dict.count)
  head("luaserve_shared_dict_evictions_total", "counter",
    "Live entries luaserve.shared evicted to make room.")
  line("luaserve_shared_dict_evictions_total", "", snap.dict.evicted)
  head("luaserve_workers", "gauge", "Worker processes running.")
  line("luaserve_workers", "", snap.nworkers)
  head("luaserve_worker_restarts_total", "counter",
    "Workers the master replaced after they died or were killed.")
  line("luaserve_worker_restarts_total", "", snap.restarts)
  return concat(out)
end


--- mount(app, path): answer GET path with the metrics. Raises if the app
-- has a route there.
function M.mount(app, path)
  app:get(path, function()
    return 200, M.render(), { ["Content-Type"] = CONTENT_TYPE }
  end)
end

return M
