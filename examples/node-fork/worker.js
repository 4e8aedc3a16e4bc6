// The worker of the seeds' fork() example, written for fork(): messages come in
// through process.on('message') and each answer goes out with process.send().
//
// The seed post used `require('worker_threads').parentPort`, which belongs to
// worker threads: in a process started with child_process.fork() it is null, and the
// worker throws at start-up. A forked worker talks to its parent through `process`.
//
// This file runs unchanged under its own fork() parent (node parent.js) and under
// orchd with protocol = "node" (pool.toml): there orchd is the parent.
'use strict';

process.on('message', (message) => {
  console.log(`Received message: ${message}`);
  // Process the message and send a response: exactly one send() per message.
  const response = `Processed message: ${message}`;
  process.send(response);
});

// Nothing else keeps the process alive: when the parent disconnects (orchd does so
// when it stops an instance, after its messages are answered), it exits by itself.
