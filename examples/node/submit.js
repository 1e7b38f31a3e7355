#!/usr/bin/env node
// Submit one warren task with amqplib and wait for its result.
//
//     npm install --prefix examples/node
//     node examples/node/submit.js echo '{"hello": "world"}'
//
// Arguments: KIND [PAYLOAD-JSON] [PRIORITY]. Environment: AMQP_URL (default
// amqp://guest:guest@127.0.0.1:5672/%2f), WARREN_PREFIX (default warren), TIMEOUT (seconds, 30).
// Exits 0 when the task succeeded, 1 otherwise, and prints the result JSON.
'use strict';

const crypto = require('crypto');
const amqp = require('amqplib');

async function main() {
  const kind = process.argv[2] || 'echo';
  const payload = process.argv[3] ? JSON.parse(process.argv[3]) : { hello: 'from node' };
  const priority = process.argv[4] ? Number(process.argv[4]) : 5;
  const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
  const prefix = process.env.WARREN_PREFIX || 'warren';
  const timeout = Number(process.env.TIMEOUT || '30') * 1000;

  const connection = await amqp.connect(url);
  try {
    // A confirm channel: the broker tells us it has the task.
    const channel = await connection.createConfirmChannel();
    // A private, server-named reply queue that disappears with this connection.
    const { queue: replyQueue } = await channel.assertQueue('', { exclusive: true });

    const id = crypto.randomUUID();
    const result = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no result within ${timeout / 1000} s`)), timeout);
      channel.consume(replyQueue, (message) => {
        if (message && message.properties.correlationId === id) {
          clearTimeout(timer);
          resolve(JSON.parse(message.content.toString('utf8')));
        }
      }, { noAck: true });
    });

    const task = { id, kind, payload, priority };
    await new Promise((resolve, reject) => {
      channel.publish(`${prefix}.submit`, kind, Buffer.from(JSON.stringify(task)), {
        contentType: 'application/json',
        deliveryMode: 2,
        replyTo: replyQueue,
        correlationId: id,
        mandatory: true,
      }, (err) => (err ? reject(new Error('the broker did not take the task')) : resolve()));
    });

    const reply = await result;
    console.log(JSON.stringify(reply, null, 2));
    return reply.status === 'succeeded' ? 0 : 1;
  } finally {
    await connection.close();
  }
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(err.message);
  process.exitCode = 1;
});
