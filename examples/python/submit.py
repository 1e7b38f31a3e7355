#!/usr/bin/env python3
"""Submit one warren task with pika and wait for its result.

    pip install pika
    python3 examples/python/submit.py echo '{"hello": "world"}'

Arguments: KIND [PAYLOAD-JSON] [PRIORITY]. Environment: AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/%2f), WARREN_PREFIX (default warren), TIMEOUT (seconds, 30).
Exits 0 when the task succeeded, 1 otherwise, and prints the result JSON.
"""
import json
import os
import sys
import uuid

import pika


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else "echo"
    payload = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"hello": "from python"}
    priority = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("WARREN_PREFIX", "warren")
    timeout = float(os.environ.get("TIMEOUT", "30"))

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()  # the broker confirms it has the task
    # A private, server-named reply queue that disappears with this connection.
    reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue

    task_id = str(uuid.uuid4())
    task = {"id": task_id, "kind": kind, "payload": payload, "priority": priority}
    channel.basic_publish(
        exchange=f"{prefix}.submit",
        routing_key=kind,
        body=json.dumps(task).encode(),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            reply_to=reply_queue,
            correlation_id=task_id,
        ),
        mandatory=True,
    )

    result = None

    def on_reply(ch, method, properties, body):
        nonlocal result
        if properties.correlation_id == task_id:
            result = json.loads(body)
            ch.stop_consuming()

    channel.basic_consume(queue=reply_queue, on_message_callback=on_reply, auto_ack=True)
    connection.call_later(timeout, channel.stop_consuming)
    channel.start_consuming()
    connection.close()

    if result is None:
        print(f"no result within {timeout} s", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
