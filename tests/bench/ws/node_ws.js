// tests/bench/ws/node_ws.js: the Node peer of tests/bench/ws.sh, on Node's
// `ws` (Debian's node-ws; run with NODE_PATH=/usr/share/nodejs), with the
// routes of apps/bench: /ws/echo sends every message back; in
// /ws/room/NAME every message a member sends goes to every member, the
// sender included. ws's defaults (no permessage-deflate on the server).
// Env: PORT. Listens on 127.0.0.1.
const http = require('http');
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ noServer: true });
const rooms = new Map();

function echo(ws) {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
}

function join(ws, name) {
  let room = rooms.get(name);
  if (!room) rooms.set(name, (room = new Set()));
  room.add(ws);
  ws.on('message', (data, isBinary) => {
    for (const member of room) member.send(data, { binary: isBinary });
  });
  ws.on('close', () => {
    room.delete(ws);
    if (room.size === 0) rooms.delete(name);
  });
}

const server = http.createServer((req, res) => {
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found');
});
server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  const room = path.match(/^\/ws\/room\/([^/]+)$/);
  if (path !== '/ws/echo' && !room) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => (room ? join(ws, room[1]) : echo(ws)));
});
server.listen(Number(process.env.PORT), '127.0.0.1', 2048);
