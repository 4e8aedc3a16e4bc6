// The seeds' fork() parent as a benchmark: fork WORKERS copies of the example
// worker (examples/node-fork/worker.js, unchanged), send() them N messages in turn,
// print each response as the seed does, and disconnect once every message has its
// response. run.sh compares it with orchd running the same worker file.
'use strict';

const { fork } = require('child_process');
const path = require('path');

const n = Number(process.argv[2] ?? 100000);
const numWorkers = Math.max(1, Number(process.env.WORKERS ?? 4));
const worker = path.join(__dirname, '..', '..', 'examples', 'node-fork', 'worker.js');

const workers = [];
for (let i = 0; i < numWorkers; i++) {
  workers.push(fork(worker));
}

let pending = n;
workers.forEach((w, i) => {
  w.on('message', (response) => {
    console.log(`Received response from child process ${i + 1}: ${response}`);
    pending -= 1;
    if (pending === 0) {
      // Counted here: the workers' console.log shares this stdout, so lines there
      // may interleave.
      console.error(`responses: ${n}`);
      for (const w of workers) w.disconnect();
    }
  });
});

for (let i = 0; i < n; i++) {
  workers[i % numWorkers].send(`message ${i}`);
}
