#!/usr/bin/env bash
# Installs (once, cached) and starts Apache Kafka 4.4 itself, the anchor broker of the tests
# that need what only Kafka has: transactions, TLS, mTLS, SCRAM, session-timeout hand-over.
#
#   scripts/kafka.sh install    fetch the broker's jars with Maven (tests/kafka/pom.xml) into the cache
#   scripts/kafka.sh start      format a single-node KRaft cluster in a fresh directory, start it,
#                               wait for a real metadata answer on every listener; writes
#                               $RUN_DIR/kafka.env (the listeners and the test CA) and prints its path
#   scripts/kafka.sh stop       stop the broker started by `start` (its log stays in $RUN_DIR)
#
# Listeners, all on loopback and on free ports:
#   PLAINTEXT  no security                         PSEUDONYMIZER_KAFKA_BROKERS
#   SSL        server certificate from the test CA PSEUDONYMIZER_KAFKA_SSL_BROKERS
#   MTLS       SSL, client certificate required    PSEUDONYMIZER_KAFKA_MTLS_BROKERS
#   SASL_SSL   SCRAM-SHA-512 over TLS              PSEUDONYMIZER_KAFKA_SASL_BROKERS
# The test CA, the client certificate and the SCRAM user's password file are named by
# PSEUDONYMIZER_KAFKA_TLS_DIR (ca.pem, client.pem, client.key, scram.password; user "worker").
set -euo pipefail

KAFKA_VERSION=4.4.0
CACHE=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
RUN_DIR=${KAFKA_RUN_DIR:-$CACHE/run/kafka}
HERE=$(cd "$(dirname "$0")/.." && pwd)
# The broker shares 2 cores and the memory with the worker, Tansu and cargo: a small fixed heap.
HEAP=${PSEUDONYMIZER_KAFKA_HEAP:-512m}
SCRAM_USER=worker

install() {
  if [ -f "$LIBS/.complete" ]; then
    return 0
  fi
  echo "installing Apache Kafka $KAFKA_VERSION into $LIBS (first time only, about 20 s)" >&2
  rm -rf "$LIBS"
  mkdir -p "$LIBS"
  mvn -q -B -f "$HERE/tests/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2
  touch "$LIBS/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

java_run() {
  # $1: main class; the rest its arguments.
  local main=$1
  shift
  java -Xms128m -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$RUN_DIR/log4j2.properties" \
    -cp "$LIBS/*" "$main" "$@"
}

# java_run in place of the (background) shell that calls it, so that `$!` is the JVM's pid
# and `stop` kills the broker itself, not a shell whose JVM would live on.
java_exec() {
  local main=$1
  shift
  exec java -Xms128m -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$RUN_DIR/log4j2.properties" \
    -cp "$LIBS/*" "$main" "$@"
}

# A test CA, the broker's certificate (for 127.0.0.1 and localhost) and a client certificate,
# all PEM; the broker reads PEM key stores directly (ssl.keystore.type=PEM).
make_certificates() {
  local tls=$RUN_DIR/tls
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pseudonymizer test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    for who in broker client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$who.ext" -out "$who.pem" 2>/dev/null
      # PKCS#8, as Kafka's PEM key store wants it.
      openssl pkcs8 -topk8 -nocrypt -in "$who.key" -out "$who.pk8"
      mv "$who.pk8" "$who.key"
    done
    cat broker.key broker.pem >broker-keystore.pem
    python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >scram.password
    chmod 600 ./*.key scram.password
  )
}

write_configs() {
  local plain=$1 ssl=$2 mtls=$3 sasl=$4 controller=$5 tls=$RUN_DIR/tls
  cat >"$RUN_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$plain,SSL://127.0.0.1:$ssl,MTLS://127.0.0.1:$mtls,SASL_SSL://127.0.0.1:$sasl,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$plain,SSL://127.0.0.1:$ssl,MTLS://127.0.0.1:$mtls,SASL_SSL://127.0.0.1:$sasl
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$RUN_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# TLS: one server certificate for every TLS listener; MTLS requires a client certificate.
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.mtls.ssl.client.auth=required
# SASL_SSL: SCRAM-SHA-512, users created at format time.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  cat >"$RUN_DIR/log4j2.properties" <<EOF
appender.file.type=File
appender.file.name=file
appender.file.fileName=$RUN_DIR/kafka.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.request.name=kafka.request.logger
logger.request.level=WARN
EOF
}

# True when the listener answers a metadata request (a real Kafka round trip, not a port probe):
# the Kafka Java admin client lists the cluster's nodes over it.
metadata_answers() {
  local bootstrap=$1 properties=$2
  timeout 60 java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$RUN_DIR/log4j2-client.properties" \
    -cp "$LIBS/*" org.apache.kafka.tools.ClusterTool cluster-id \
    --bootstrap-server "$bootstrap" --config "$properties" >/dev/null 2>&1
}

start() {
  install
  stop
  # A broker left running on this directory by an earlier run (its pid file lost) would write
  # into the fresh data directory: stop any.
  pkill -f -- "$RUN_DIR/server.properties" 2>/dev/null && sleep 2 || true
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR/data"
  local plain ssl mtls sasl controller
  plain=$(free_port); ssl=$(free_port); mtls=$(free_port); sasl=$(free_port); controller=$(free_port)
  make_certificates
  write_configs "$plain" "$ssl" "$mtls" "$sasl" "$controller"
  local tls=$RUN_DIR/tls password
  password=$(cat "$tls/scram.password")
  local began=$SECONDS
  local cluster_id
  cluster_id=$(java_run kafka.tools.StorageTool random-uuid)
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN_DIR/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$password]" >>"$RUN_DIR/format.log" 2>&1
  java_exec kafka.Kafka "$RUN_DIR/server.properties" >"$RUN_DIR/kafka.out" 2>&1 &
  echo $! >"$RUN_DIR/kafka.pid"

  # Client settings for the readiness check, one file per listener.
  printf 'rootLogger.level=OFF\n' >"$RUN_DIR/log4j2-client.properties"
  printf '' >"$RUN_DIR/plain.properties"
  printf 'security.protocol=SSL\nssl.truststore.type=PEM\nssl.truststore.location=%s\n' \
    "$tls/ca.pem" >"$RUN_DIR/ssl.properties"
  cat "$RUN_DIR/ssl.properties" >"$RUN_DIR/mtls.properties"
  cat "$tls/client.key" "$tls/client.pem" >"$tls/client-keystore.pem"
  printf 'ssl.keystore.type=PEM\nssl.keystore.location=%s\n' "$tls/client-keystore.pem" >>"$RUN_DIR/mtls.properties"
  cat "$RUN_DIR/ssl.properties" >"$RUN_DIR/sasl.properties"
  printf 'security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' \
    "$SCRAM_USER" "$password" >>"$RUN_DIR/sasl.properties"

  # Ready when every listener answers a metadata request (bounded: 120 s in all).
  local listener port
  for listener in plain:$plain ssl:$ssl mtls:$mtls sasl:$sasl; do
    port=${listener#*:}
    until metadata_answers "127.0.0.1:$port" "$RUN_DIR/${listener%%:*}.properties"; do
      if ! kill -0 "$(cat "$RUN_DIR/kafka.pid")" 2>/dev/null; then
        echo "kafka exited; the end of its log follows ($RUN_DIR/kafka.log)" >&2
        tail -n 40 "$RUN_DIR/kafka.log" "$RUN_DIR/kafka.out" >&2 || true
        return 1
      fi
      if [ $((SECONDS - began)) -gt 120 ]; then
        echo "kafka's ${listener%%:*} listener did not answer within 120 s ($RUN_DIR/kafka.log)" >&2
        stop
        return 1
      fi
      sleep 0.5
    done
  done
  cat >"$RUN_DIR/kafka.env" <<EOF
PSEUDONYMIZER_KAFKA_BROKERS=127.0.0.1:$plain
PSEUDONYMIZER_KAFKA_SSL_BROKERS=127.0.0.1:$ssl
PSEUDONYMIZER_KAFKA_MTLS_BROKERS=127.0.0.1:$mtls
PSEUDONYMIZER_KAFKA_SASL_BROKERS=127.0.0.1:$sasl
PSEUDONYMIZER_KAFKA_TLS_DIR=$tls
PSEUDONYMIZER_KAFKA_SCRAM_USER=$SCRAM_USER
PSEUDONYMIZER_KAFKA_LOG=$RUN_DIR/kafka.log
PSEUDONYMIZER_KAFKA_LIBS=$LIBS
PSEUDONYMIZER_KAFKA_START_SECS=$((SECONDS - began))
EOF
  echo "kafka $KAFKA_VERSION ready in $((SECONDS - began)) s (log: $RUN_DIR/kafka.log)" >&2
  echo "$RUN_DIR/kafka.env"
}

stop() {
  if [ -f "$RUN_DIR/kafka.pid" ]; then
    local pid
    pid=$(cat "$RUN_DIR/kafka.pid")
    kill "$pid" 2>/dev/null || true
    # A controlled shutdown takes a few seconds; then it is killed.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN_DIR/kafka.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
