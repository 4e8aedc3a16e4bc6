// An orchd worker in Node.js: the `worker.js` of a fork()/send() program, ported.
//
// With fork(), the parent pushed each message over the IPC channel with send() and
// the worker answered with process.send(). Under orchd a message is one line on
// stdin and the answer is one line on stdout, in the same order. Logs go to stderr
// (orchd logs them as `node[0]`, `node[1]`, ...). Nothing else changes.
'use strict';

const readline = require('node:readline');

const instance = process.env.ORCHD_INSTANCE ?? '?';
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });

rl.on('line', (message) => {
  console.error(`Received message: ${message}`);
  // Process the message and send a response: exactly one line per message.
  const response = `Processed message: ${message}`;
  process.stdout.write(`${response} (worker ${instance})\n`);
});

// orchd closes stdin when it stops an instance (then sends stop_signal).
rl.on('close', () => process.exit(0));
