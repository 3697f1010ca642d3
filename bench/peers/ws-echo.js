// Node.js peer for the benchmark: an echo server on the `ws` package with
// wsflow's message limit (1 MiB). Every text or binary message goes back
// unchanged. Prints `listening on ws://ADDR/echo` like `wsflow up`.
//
//   npm install --prefix target/bench-node ws@8.23.0
//   NODE_PATH=target/bench-node/node_modules node bench/peers/ws-echo.js [PORT]
'use strict';

const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const server = new WebSocketServer({
  host: '127.0.0.1',
  port,
  path: '/echo',
  maxPayload: 1024 * 1024,
  perMessageDeflate: false,
});

server.on('listening', () => {
  const { address, port } = server.address();
  process.stdout.write(`listening on ws://${address}:${port}/echo\n`);
});

server.on('connection', (socket) => {
  socket._socket.setNoDelay(true);
  socket.on('message', (data, isBinary) => {
    socket.send(data, { binary: isBinary });
  });
  socket.on('error', () => {});
});

process.on('SIGTERM', () => process.exit(0));
