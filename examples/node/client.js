// The parent side of the fork()/send() program, ported: instead of forking workers
// and calling send() on each, connect to orchd and write lines. orchd picks the
// worker (round-robin here), restarts crashed ones, and returns the replies in the
// order the messages were sent.
//
//   node examples/node/client.js [PORT] [MESSAGE...]
'use strict';

const net = require('node:net');
const readline = require('node:readline');

const port = Number(process.argv[2] ?? 7071);
const messages = process.argv.length > 3
  ? process.argv.slice(3)
  : ['Hello from parent process 1', 'Hello from parent process 2'];

const socket = net.connect(port, '127.0.0.1', () => {
  for (const m of messages) socket.write(`${m}\n`);
  socket.end(); // no more messages; orchd still sends every reply
});
let n = 0;
readline.createInterface({ input: socket }).on('line', (response) => {
  n += 1;
  console.log(`Received response ${n}: ${response}`);
});
socket.on('error', (e) => {
  console.error(`cannot reach orchd on 127.0.0.1:${port}: ${e.message}`);
  process.exitCode = 1;
});
