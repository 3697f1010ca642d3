// Node.js peer for the fan-out benchmark: a broadcast server on the `ws`
// package with wsflow's message limit (1 MiB), done the way the `ws`
// README broadcasts: `clients.forEach(send)`.
//
//   /sub  a subscriber; every message it sends is answered with `ok joined`
//         (the load generator's subscribe command). It receives every
//         published message from the moment it is connected.
//   /pub  a publisher; every text or binary message it sends goes to every
//         open subscriber, the received buffer passed on unchanged.
//
// Prints `listening on ws://ADDR/sub` like `wsflow up`.
//
//   npm install --prefix target/bench-node ws@8.23.0
//   NODE_PATH=target/bench-node/node_modules node bench/peers/ws-fanout.js [PORT]
'use strict';

const http = require('http');
const { WebSocket, WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const options = { noServer: true, maxPayload: 1024 * 1024, perMessageDeflate: false };
const subscribers = new WebSocketServer(options);
const publishers = new WebSocketServer({ ...options, clientTracking: false });
const byPath = { '/sub': subscribers, '/pub': publishers };

const server = http.createServer((request, response) => {
  response.writeHead(426).end();
});

server.on('upgrade', (request, socket, head) => {
  const wss = byPath[new URL(request.url, 'http://localhost').pathname];
  if (!wss) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request));
});

subscribers.on('connection', (ws) => {
  ws.on('message', () => ws.send('ok joined'));
  ws.on('error', () => {});
});

publishers.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    subscribers.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
  ws.on('error', () => {});
});

server.listen(port, '127.0.0.1', () => {
  const { address, port } = server.address();
  process.stdout.write(`listening on ws://${address}:${port}/sub\n`);
});

process.on('SIGTERM', () => process.exit(0));
