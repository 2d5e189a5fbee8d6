// tests/ws_node_server.js: a Node `ws` server (Debian's node-ws) for the
// WebSocket client tests: it echoes messages, says what the handshake
// carried on /who, and closes with 4001 on /close. Listens on 127.0.0.1;
// prints {"port": N} and serves until killed. TLS when CERT and KEY are set.
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const server = process.env.CERT
  ? https.createServer({ cert: fs.readFileSync(process.env.CERT), key: fs.readFileSync(process.env.KEY) })
  : http.createServer();
const wss = new WebSocketServer({
  server,
  perMessageDeflate: true,
  handleProtocols: (protocols) => (protocols.has('v2') ? 'v2' : false),
});
wss.on('connection', (ws, req) => {
  if (req.url === '/who') {
    ws.send(JSON.stringify({ protocol: ws.protocol, header: req.headers['x-test'] || null,
      extensions: req.headers['sec-websocket-extensions'] || null }));
  }
  if (req.url === '/close') { ws.close(4001, 'node says bye'); return; }
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
setTimeout(() => process.exit(0), 120000).unref();
