#!/usr/bin/env bash
# Submit one warren task with nothing but curl, through RabbitMQ's management HTTP API, and
# wait for its result.
#
#     examples/curl.sh echo '{"hello": "world"}'
#
# Arguments: KIND [PAYLOAD-JSON] [PRIORITY]. Environment: MGMT_URL (default
# http://127.0.0.1:15672), MGMT_USER / MGMT_PASS (default guest / guest), VHOST (default %2f,
# URL-encoded), WARREN_PREFIX (default warren), TIMEOUT (seconds, 30).
# Prints the result JSON; exits 0 when the task succeeded, 1 otherwise.
#
# The HTTP API cannot hold a connection open, so the reply queue is an ordinary queue that
# this script declares (it expires by itself after 10 minutes unused), polls, and deletes.
# The API is meant for operators and tests; programs should speak AMQP (see examples/python,
# examples/node). Uses jq to format the result when it is installed.
set -euo pipefail

kind=${1:-echo}
payload=${2:-'{"hello": "from curl"}'}
priority=${3:-5}
api=${MGMT_URL:-http://127.0.0.1:15672}/api
auth=${MGMT_USER:-guest}:${MGMT_PASS:-guest}
vhost=${VHOST:-%2f}
prefix=${WARREN_PREFIX:-warren}
timeout=${TIMEOUT:-30}

id="curl-$(date +%s)-$$-$RANDOM"
reply="$prefix.reply.$id"
call() { curl -sS --fail-with-body -u "$auth" -H 'content-type: application/json' "$@"; }
# A JSON string literal of $1.
quote() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n')"; }

call -X PUT "$api/queues/$vhost/$reply" \
  -d '{"durable": false, "auto_delete": false, "arguments": {"x-expires": 600000}}' >/dev/null
trap 'call -X DELETE "$api/queues/$vhost/$reply" >/dev/null 2>&1 || true' EXIT

task="{\"id\": \"$id\", \"kind\": $(quote "$kind"), \"payload\": $payload, \"priority\": $priority}"
published=$(call -X POST "$api/exchanges/$vhost/$prefix.submit/publish" -d "{
  \"routing_key\": $(quote "$kind"),
  \"payload\": $(quote "$task"),
  \"payload_encoding\": \"string\",
  \"properties\": {\"delivery_mode\": 2, \"content_type\": \"application/json\",
                 \"reply_to\": \"$reply\", \"correlation_id\": \"$id\"}
}")
case $published in
  *'"routed":true'*) ;;
  *) echo "the task was not routed (is warren running with prefix $prefix?): $published" >&2; exit 1 ;;
esac

deadline=$((SECONDS + timeout))
while [ "$SECONDS" -lt "$deadline" ]; do
  got=$(call -X POST "$api/queues/$vhost/$reply/get" \
    -d '{"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}')
  if [ "$got" != "[]" ]; then
    if command -v jq >/dev/null; then
      printf '%s' "$got" | jq '.[0].payload | fromjson'
    else
      printf '%s\n' "$got"
    fi
    # The payload is a JSON string inside the API's JSON, so its quotes arrive escaped.
    case $got in
      *'\"status\":\"succeeded\"'*) exit 0 ;;
      *) exit 1 ;;
    esac
  fi
  sleep 0.2
done
echo "no result within $timeout s" >&2
exit 1
