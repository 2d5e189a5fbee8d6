"""tests/bench/ws/uvicorn_app.py: the uvicorn peer of tests/bench/ws.sh, a
plain ASGI app run by uvicorn with its `websockets` implementation (Debian's
python3-uvicorn and python3-websockets), with the routes of apps/bench:
/ws/echo sends every message back; in /ws/room/NAME every message a member
sends goes to every member, the sender included.

    python3 -m uvicorn uvicorn_app:app --ws websockets --host 127.0.0.1 --port P
"""

rooms = {}


async def echo(receive, send):
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return
        event["type"] = "websocket.send"
        await send(event)


async def room(name, receive, send):
    members = rooms.setdefault(name, set())
    members.add(send)
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                return
            event["type"] = "websocket.send"
            for member in list(members):
                try:
                    await member(event)
                except Exception:   # a member closing meanwhile
                    members.discard(member)
    finally:
        members.discard(send)
        if not members:
            rooms.pop(name, None)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"not found"})
        return
    if (await receive())["type"] != "websocket.connect":
        return
    parts = path.split("/")
    if path == "/ws/echo":
        await send({"type": "websocket.accept"})
        await echo(receive, send)
    elif len(parts) == 4 and parts[:3] == ["", "ws", "room"] and parts[3]:
        await send({"type": "websocket.accept"})
        await room(parts[3], receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008})
