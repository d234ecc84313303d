#!/usr/bin/env bash
# A TLS + token session, denied and then allowed, and the metrics after it.
# Needs: a built leanmqd (cargo build), redis-server, openssl, grpcurl.
# Ports 50777 (gRPC), 9777 (metrics) and 26399 (Redis) must be free.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"; cd "$WORK"
BIN="${LEANMQD:-$ROOT/target/debug/leanmqd}"
GRPCURL="${GRPCURL:-grpcurl} -import-path $ROOT/proto -proto leanmq/v1/broker.proto"
rm -rf data; mkdir -p data
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=demo-ca -days 1 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1" > ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile ext 2>/dev/null
TOKEN=$(head -c 32 /dev/urandom | base64 | tr -d '=+/')
cat > tokens.toml <<TOML
[[tokens]]
name = "orders"
hash = "$(printf %s "$TOKEN" | $BIN hash-token)"
send = ["/order/>"]
subscribe = ["/order/>"]
TOML
redis-server --port 26399 --save '' --appendonly no --daemonize yes --logfile "$WORK/redis.log" >/dev/null
$BIN --listen 127.0.0.1:50777 --redis-url redis://127.0.0.1:26399 --tls-cert server.crt --tls-key server.key \
  --auth-tokens tokens.toml --metrics-listen 127.0.0.1:9777 2>leanmqd.log &
PID=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/50777) 2>/dev/null && break; sleep 0.1; done
SEND='{"path":"/order/status/","payload":"eyJvcmRlcl9pZCI6MX0=","content_type":"application/json"}'
echo '$ grpcurl -cacert ca.crt -d "$SEND" localhost:50777 leanmq.v1.Broker/Send            # no token'
$GRPCURL -cacert ca.crt -d "$SEND" localhost:50777 leanmq.v1.Broker/Send 2>&1
echo '$ grpcurl -cacert ca.crt -H "authorization: Bearer $TOKEN" -d "{\"path\":\"/payment/x\",...}" ... Send   # outside the grant'
$GRPCURL -cacert ca.crt -H "authorization: Bearer $TOKEN" -d '{"path":"/payment/x","payload":"eA=="}' localhost:50777 leanmq.v1.Broker/Send 2>&1
echo '$ grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d "$SEND" localhost:50777 leanmq.v1.Broker/Send   # plaintext to a TLS port'
timeout 5 $GRPCURL -plaintext -H "authorization: Bearer $TOKEN" -d "$SEND" localhost:50777 leanmq.v1.Broker/Send 2>&1 | head -2
echo '$ grpcurl -cacert ca.crt -H "authorization: Bearer $TOKEN" -d "$SEND" localhost:50777 leanmq.v1.Broker/Send   # allowed'
$GRPCURL -cacert ca.crt -H "authorization: Bearer $TOKEN" -d "$SEND" localhost:50777 leanmq.v1.Broker/Send 2>&1
echo '$ grpcurl -cacert ca.crt -H "authorization: Bearer $TOKEN" -d "{\"path\":\"/order/status/\",\"max_messages\":10}" localhost:50777 leanmq.v1.Broker/Receive'
$GRPCURL -cacert ca.crt -H "authorization: Bearer $TOKEN" -d '{"path":"/order/status/","max_messages":10}' localhost:50777 leanmq.v1.Broker/Receive 2>&1 | head -12
echo '$ curl -s localhost:9777/metrics | grep -E "^leanmq_(messages_sent|deliveries)_total|^grpc_server_handling_seconds_count"'
curl -s localhost:9777/metrics | grep -E '^leanmq_(messages_sent|deliveries)_total|^grpc_server_handling_seconds_count'
kill $PID; wait $PID
redis-cli -p 26399 shutdown nosave >/dev/null 2>&1
rm -rf "$WORK"
