// The seeds' parent, adapted: fork() N copies of worker.js, send() them the messages
// in turn, print each response. The seed never ended; this one disconnects the
// workers (which then exit) once every message has its response.
//
//   node examples/node-fork/parent.js [MESSAGE...]      (WORKERS=N, default 2)
//
// orchd does the same with pool.toml beside this file, and more: it re-forks crashed
// workers with backoff, redelivers their unanswered messages, and serves any client.
'use strict';

const { fork } = require('child_process');
const path = require('path');

const messages = process.argv.length > 2
  ? process.argv.slice(2)
  : ['Hello from parent process 1', 'Hello from parent process 2'];
const numWorkers = Math.max(1, Number(process.env.WORKERS ?? 2));

// Create child processes
const workers = [];
for (let i = 0; i < numWorkers; i++) {
  workers.push(fork(path.join(__dirname, 'worker.js')));
}

let pending = messages.length;
const done = () => {
  for (const worker of workers) worker.disconnect();
};

// Listen for responses from child processes
workers.forEach((worker, i) => {
  worker.on('message', (response) => {
    console.log(`Received response from child process ${i + 1}: ${response}`);
    pending -= 1;
    if (pending === 0) done();
  });
});

// Send messages to child processes, round-robin
messages.forEach((message, i) => workers[i % numWorkers].send(message));
if (pending === 0) done();
