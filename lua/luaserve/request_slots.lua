-- luaserve.request_slots: where the framework keeps its own fields of a
-- request. They live in the request table's array part (req[TASK]), so
-- that its hash part holds only what handlers read: method, path, target,
-- body, route, params, and headers and query once read. Eight keys fill
-- an 8-slot hash part instead of a 16-slot one: 120 bytes less per
-- request waiting, and half the copying when a request is made.
return {
  CONN = 1,      -- the connection's checked handle (nil in pool states)
  HRAW = 2,      -- the headers as the core packed them (req.headers is
                 -- made from them on first read)
  TASK = 3,      -- the request's task while it runs, or false
  ROUTE = 4,     -- the matched route object, or false
  T0 = 5,        -- the clock at dispatch (the access line's duration)
  PEER = 6,      -- the client's address read for the access line, or false
  SCHEME = 7,    -- "http" or "https" (req.scheme, unless set on the request)
  APP = 8,       -- the app (req.app)
  -- (eight at most: a ninth would make LuaJIT size the array part for 17)
}
