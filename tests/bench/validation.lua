-- wrk script of tests/bench/validation.sh: POST a small JSON item.
wrk.method = "POST"
wrk.body = '{"name":"fountain pen","price":12.5,"tags":["office","gift","blue"]}'
wrk.headers["Content-Type"] = "application/json"
