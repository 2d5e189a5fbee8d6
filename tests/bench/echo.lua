-- wrk script: POST 1 KB to /echo (used when ../shared/bench is absent).
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
