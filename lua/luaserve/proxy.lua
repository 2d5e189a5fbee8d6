-- luaserve.proxy: behind a balancer. From a peer that --forwarded-allow-ips
-- trusts (default 127.0.0.1, uvicorn's), X-Forwarded-For,
-- X-Forwarded-Proto and Forwarded (RFC 7239) set req.client.host and
-- req.scheme; from anyone else they are ignored (a client could claim any
-- address). The server calls in only when one of these headers is there,
-- so a request without them pays three table reads.
--
-- Of a chain of addresses ("client, proxy1, proxy2"), the client is the
-- rightmost one that is not a trusted proxy itself: what an untrusted hop
-- wrote to the left of it cannot be believed (uvicorn's rule).

local core = require "luaserve.core"
local slots = require "luaserve.request_slots"
local CONN, SCHEME = slots.CONN, slots.SCHEME

local rawget = rawget
local tonumber = tonumber
local gmatch = string.gmatch
local match = string.match
local lower = string.lower

local M = {}

local CACHE_MAX = 1024   -- addresses parse_allow's check remembers


-- An IPv4 or IPv6 address as a list of 16 bytes (IPv4 mapped into IPv6,
-- so ::ffff:10.0.0.1 and 10.0.0.1 are one address), or nil.
local function bytes_of(addr)
  addr = match(addr, "^%[(.*)%]$") or addr
  local a, b, c, d = match(addr, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    local t = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255 }
    for _, v in ipairs({ a, b, c, d }) do
      v = tonumber(v)
      if v > 255 then return nil end
      t[#t + 1] = v
    end
    return t
  end
  if not addr:find(":", 1, true) or addr:find("[^%x:%.]") or addr:find(":::", 1, true)
     or select(2, addr:gsub("::", "")) > 1 then
    return nil
  end
  local v4 = match(addr, ":(%d+%.%d+%.%d+%.%d+)$")
  local tail = {}
  if v4 then
    local b4 = bytes_of(v4)
    if not b4 then return nil end
    addr = addr:sub(1, -#v4 - 1) .. "0:0"
    tail = { b4[13], b4[14], b4[15], b4[16] }
  end
  local head, rest = match(addr, "^(.-)::(.*)$")
  local groups = {}
  local function add(part)
    if part == "" then return true end
    for g in gmatch(part, "[^:]+") do
      if #g > 4 then return false end
      groups[#groups + 1] = tonumber(g, 16)
    end
    return true
  end
  if head then
    if not add(head) then return nil end
    local n_head = #groups
    local right = {}
    local saved = groups
    groups = right
    if not add(rest) then return nil end
    groups = saved
    local fill = 8 - n_head - #right
    if fill < 1 then return nil end
    for _ = 1, fill do groups[#groups + 1] = 0 end
    for _, g in ipairs(right) do groups[#groups + 1] = g end
  else
    if not add(addr) then return nil end
  end
  if #groups ~= 8 then return nil end
  local t = {}
  for i = 1, 8 do
    local g = groups[i]
    t[#t + 1] = math.floor(g / 256)
    t[#t + 1] = g % 256
  end
  if v4 then for i = 1, 4 do t[12 + i] = tail[i] end end
  return t
end
M.bytes_of = bytes_of


-- b within the network net/plen (bytes_of lists, prefix in IPv6 bits).
local function in_net(b, net, plen)
  for i = 1, 16 do
    local left = plen - (i - 1) * 8
    if left <= 0 then return true end
    if left < 8 then
      local d = 2 ^ (8 - left)
      return math.floor(b[i] / d) == math.floor(net[i] / d)
    end
    if b[i] ~= net[i] then return false end
  end
  return true
end


--- parse_allow(spec): a function(host) -> true when host is trusted, from
-- "127.0.0.1", "10.0.0.0/8, ::1", "*"; or nil, err.
function M.parse_allow(spec)
  if spec == nil then return nil, "missing" end
  local nets, any = {}, false
  for item in gmatch(spec, "[^,%s]+") do
    if item == "*" then
      any = true
    else
      local addr, bits = match(item, "^(.-)/(%d+)$")
      addr = addr or item
      local b = bytes_of(addr)
      if not b then
        return nil, ("%s: not an IP address or CIDR (e.g. 10.0.0.0/8)"):format(item)
      end
      local plen = 128
      if bits then
        plen = tonumber(bits) + (addr:find(":", 1, true) and 0 or 96)
        if plen > 128 then return nil, ("%s: prefix too long"):format(item) end
      end
      nets[#nets + 1] = { b, plen }
    end
  end
  if any then return function() return true end end
  -- host -> trusted. Peers are few (balancers), but the addresses in
  -- forwarding headers come from clients: the cache is emptied when it
  -- holds CACHE_MAX of them, so they cannot grow it without bound.
  local cache, ncached = {}, 0
  return function(host)
    local hit = cache[host]
    if hit ~= nil then return hit end
    local b = host and bytes_of(host)
    local ok = false
    if b then
      for _, n in ipairs(nets) do
        if in_net(b, n[1], n[2]) then ok = true break end
      end
    end
    if host then
      if ncached >= CACHE_MAX then cache, ncached = {}, 0 end
      cache[host] = ok
      ncached = ncached + 1
    end
    return ok
  end
end


local function trim(s)
  return match(s, "^%s*(.-)%s*$")
end


local function list(s)
  local t = {}
  if s then for item in gmatch(s, "[^,]+") do t[#t + 1] = trim(item) end end
  return t
end


-- Forwarded: for=..;proto=.. elements -> lists of for and proto values.
local function parse_forwarded(s)
  local fors, protos = {}, {}
  for element in gmatch(s, "[^,]+") do
    local f, p
    for pair in gmatch(element, "[^;]+") do
      local k, v = match(pair, "^%s*([%w_-]+)%s*=%s*(.-)%s*$")
      if k then
        k = lower(k)
        v = match(v, '^"(.*)"$') or v
        if k == "for" then f = v elseif k == "proto" then p = lower(v) end
      end
    end
    fors[#fors + 1] = f or "unknown"
    protos[#protos + 1] = p or false
  end
  return fors, protos
end


-- "[2001:db8::1]:4711" / "10.0.0.1:80" / "10.0.0.1" -> host, port
local function split_host_port(v)
  local h, p = match(v, "^%[(.-)%]:?(%d*)$")
  if h then return h, tonumber(p) end
  h, p = match(v, "^([%d%.]+):(%d+)$")
  if h then return h, tonumber(p) end
  return v, nil
end


--- new(spec): the function the server calls for a request that carries
-- forwarding headers: it sets req.client and req.scheme when the peer is
-- trusted. spec as parse_allow's.
function M.new(spec)
  local trusted = assert(M.parse_allow(spec))
  return function(req)
    local headers = req.headers
    local peer, peer_port = core.peer(req[CONN])
    if not trusted(peer) then return end
    local fwd = rawget(headers, "forwarded")
    local fors, protos
    if fwd then
      fors, protos = parse_forwarded(fwd)
    else
      fors = list(rawget(headers, "x-forwarded-for"))
      protos = list(rawget(headers, "x-forwarded-proto"))
    end
    local chosen = nil
    for i = #fors, 1, -1 do   -- right to left, past the trusted proxies
      local host = split_host_port(fors[i])
      chosen = i
      if not trusted(host) then break end
    end
    if chosen then
      local host, port = split_host_port(fors[chosen])
      if host ~= "unknown" and host ~= "" then
        req.client = { host = host, port = port or 0 }
      end
    end
    local proto = nil
    if #protos > 0 then
      proto = (#protos == #fors and chosen) and protos[chosen] or protos[#protos]
    end
    if proto == "https" or proto == "http" or proto == "wss" or proto == "ws" then
      req[SCHEME] = (proto == "wss" and "https") or (proto == "ws" and "http") or proto
    end
    return peer, peer_port
  end
end

return M
