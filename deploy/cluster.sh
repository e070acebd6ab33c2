#!/usr/bin/env bash
# A local production "cluster" on this machine's PostgreSQL and Redis (docs/production.md):
#
#   deploy/cluster.sh up       create the databases if missing, then start what is not running yet: the MLflow
#                              server, two Celery workers, the Dagster daemon and the webserver
#   deploy/cluster.sh down     stop every service it started (each in its own process group)
#   deploy/cluster.sh status   say which services run, with their pid, log and address
#
# `make prod-up` / `make prod-down` call it. State, pids and logs live under $BI_PIPELINE_HOME/cluster/
# (dagster/ is DAGSTER_HOME, with deploy/dagster.yaml copied in on every `up`). Every service gets the same
# environment: BI_PIPELINE_EXECUTOR=celery, BI_PIPELINE_MLFLOW_URI of the MLflow server, the BI_PIPELINE_PG_* of the
# Dagster database, and whatever other BI_PIPELINE_* settings the caller exported.
#
# Knobs (environment, defaults in brackets):
#   BI_PIPELINE_HOME [.bi_pipeline]   BI_PIPELINE_PG_HOST [127.0.0.1]   BI_PIPELINE_PG_PORT [5432]
#   BI_PIPELINE_PG_USER [postgres]    BI_PIPELINE_PG_PASSWORD [empty]    BI_PIPELINE_PG_DB [bi_pipeline]
#   BI_PIPELINE_CELERY_BROKER [redis://127.0.0.1:6379/0]   BI_PIPELINE_CELERY_BACKEND [redis://127.0.0.1:6379/1]
#   CLUSTER_WEB_PORT [3000]   CLUSTER_MLFLOW_PORT [5000]   CLUSTER_MLFLOW_DB [$BI_PIPELINE_PG_DB_mlflow]
#   CLUSTER_WORKERS [2]   CLUSTER_WORKER_CONCURRENCY [1]   CLUSTER_START_TIMEOUT [180] (seconds per service)
#   CLUSTER_BIN [.venv/bin]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CLUSTER_BIN:-$REPO/.venv/bin}"
export BI_PIPELINE_HOME="${BI_PIPELINE_HOME:-$REPO/.bi_pipeline}"
mkdir -p "$BI_PIPELINE_HOME"
BI_PIPELINE_HOME="$(cd "$BI_PIPELINE_HOME" && pwd)"
CLUSTER="$BI_PIPELINE_HOME/cluster"

export BI_PIPELINE_PG_HOST="${BI_PIPELINE_PG_HOST:-127.0.0.1}"
export BI_PIPELINE_PG_PORT="${BI_PIPELINE_PG_PORT:-5432}"
export BI_PIPELINE_PG_USER="${BI_PIPELINE_PG_USER:-postgres}"
export BI_PIPELINE_PG_PASSWORD="${BI_PIPELINE_PG_PASSWORD:-}"
export BI_PIPELINE_PG_DB="${BI_PIPELINE_PG_DB:-bi_pipeline}"
export BI_PIPELINE_CELERY_BROKER="${BI_PIPELINE_CELERY_BROKER:-redis://127.0.0.1:6379/0}"
export BI_PIPELINE_CELERY_BACKEND="${BI_PIPELINE_CELERY_BACKEND:-redis://127.0.0.1:6379/1}"
export BI_PIPELINE_EXECUTOR=celery
WEB_PORT="${CLUSTER_WEB_PORT:-3000}"
MLFLOW_PORT="${CLUSTER_MLFLOW_PORT:-5000}"
MLFLOW_DB="${CLUSTER_MLFLOW_DB:-${BI_PIPELINE_PG_DB}_mlflow}"
WORKERS="${CLUSTER_WORKERS:-2}"
CONCURRENCY="${CLUSTER_WORKER_CONCURRENCY:-1}"
TIMEOUT="${CLUSTER_START_TIMEOUT:-180}"
export BI_PIPELINE_MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
export DAGSTER_HOME="$CLUSTER/dagster"
export GX_ANALYTICS_ENABLED="${GX_ANALYTICS_ENABLED:-false}"
export PATH="$BIN:$PATH"

services() {
  echo mlflow
  for ((n = 1; n <= WORKERS; n++)); do echo "worker-$n"; done
  echo daemon
  echo webserver
}

pid_of() {  # the pid of a running service, or nothing
  local file="$CLUSTER/$1.pid"
  [[ -f "$file" ]] || return 0
  local pid
  pid="$(cat "$file")"
  # A live pid that leads its own process group: a stale pid file whose pid another process took is ignored.
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]]; then
    echo "$pid"
  fi
}

address_of() {
  case "$1" in
    mlflow) echo "$BI_PIPELINE_MLFLOW_URI" ;;
    webserver) echo "http://127.0.0.1:$WEB_PORT" ;;
    worker-*) echo "celery $BI_PIPELINE_CELERY_BROKER" ;;
    daemon) echo "DAGSTER_HOME=$DAGSTER_HOME" ;;
  esac
}

pg_url() {  # postgresql://user[:password]@host:port/db
  local auth="$BI_PIPELINE_PG_USER"
  [[ -n "$BI_PIPELINE_PG_PASSWORD" ]] && auth="$auth:$BI_PIPELINE_PG_PASSWORD"
  echo "postgresql://$auth@$BI_PIPELINE_PG_HOST:$BI_PIPELINE_PG_PORT/$1"
}

create_databases() {
  "$BIN/python" - "$BI_PIPELINE_PG_DB" "$MLFLOW_DB" <<'PY'
import os, sys

import psycopg2

try:
    admin = psycopg2.connect(
        host=os.environ["BI_PIPELINE_PG_HOST"], port=os.environ["BI_PIPELINE_PG_PORT"],
        user=os.environ["BI_PIPELINE_PG_USER"], password=os.environ["BI_PIPELINE_PG_PASSWORD"] or None,
        dbname="postgres", connect_timeout=5,
    )
except psycopg2.OperationalError as exc:
    sys.exit(f"cluster: PostgreSQL not reachable at {os.environ['BI_PIPELINE_PG_HOST']}:"
             f"{os.environ['BI_PIPELINE_PG_PORT']}: {exc}")
admin.autocommit = True
with admin.cursor() as cursor:
    for name in sys.argv[1:]:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
            print(f"cluster: created database {name}")
PY
}

check_redis() {
  "$BIN/python" - <<'PY'
import os, sys

import redis

url = os.environ["BI_PIPELINE_CELERY_BROKER"]
try:
    redis.Redis.from_url(url, socket_connect_timeout=5).ping()
except Exception as exc:  # noqa: BLE001
    sys.exit(f"cluster: the Celery broker {url} is not reachable: {exc}")
PY
}

port_free() {
  "$BIN/python" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(('127.0.0.1', int(sys.argv[1])))
except OSError:
    sys.exit(1)" "$1"
}

http_ok() {
  "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$1" 2>/dev/null
}

set_command() {  # CMD: the command line of a service
  case "$1" in
    mlflow)
      # The store's URI (it may hold the password) goes by MLFLOW_BACKEND_STORE_URI, not on the command line.
      CMD=("$BIN/mlflow" server --serve-artifacts --artifacts-destination "$BI_PIPELINE_HOME/mlflow-artifacts"
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1)
      ;;
    worker-*)
      CMD=("$BIN/dagster-celery" worker start -A dagster_celery.app -y "$REPO/deploy/celery.yaml"
        -n "bi-pipeline-$1" -- "--concurrency=$CONCURRENCY")
      ;;
    daemon) CMD=("$BIN/dagster-daemon" run -w "$REPO/workspace.yaml") ;;
    webserver) CMD=("$BIN/dagster-webserver" -w "$REPO/workspace.yaml" -h 127.0.0.1 -p "$WEB_PORT") ;;
  esac
}

ready() {  # whether a started service answers
  local log="$CLUSTER/logs/$1.log"
  case "$1" in
    mlflow) http_ok "$BI_PIPELINE_MLFLOW_URI/health" ;;
    worker-*) grep -q " ready\." "$log" 2>/dev/null ;;
    daemon) "$BIN/dagster-daemon" liveness-check >/dev/null 2>&1 ;;
    webserver) http_ok "http://127.0.0.1:$WEB_PORT/server_info" ;;
  esac
}

start() {
  local name="$1" pid log
  log="$CLUSTER/logs/$name.log"
  pid="$(pid_of "$name")"
  if [[ -n "$pid" ]]; then
    echo "cluster: $name already running (pid $pid)"
    return 0
  fi
  case "$name" in
    mlflow) port_free "$MLFLOW_PORT" || {
      echo "cluster: mlflow: port $MLFLOW_PORT is taken (CLUSTER_MLFLOW_PORT)" >&2
      return 1
    } ;;
    webserver) port_free "$WEB_PORT" || {
      echo "cluster: webserver: port $WEB_PORT is taken (CLUSTER_WEB_PORT)" >&2
      return 1
    } ;;
  esac
  set_command "$name"
  # setsid: each service leads a process group of its own (with the processes it starts), stopped as one by `down`.
  (
    cd "$REPO"
    if [[ "$name" == mlflow ]]; then export MLFLOW_BACKEND_STORE_URI="$(pg_url "$MLFLOW_DB")"; fi
    exec setsid "${CMD[@]}" >"$log" 2>&1 </dev/null
  ) &
  pid=$!
  echo "$pid" >"$CLUSTER/$name.pid"
  local deadline=$((SECONDS + TIMEOUT))
  until ready "$name"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "cluster: $name exited while starting; its log: $log" >&2
      tail -n 20 "$log" >&2 || true
      rm -f "$CLUSTER/$name.pid"
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "cluster: $name did not come up within ${TIMEOUT}s; stopped it; its log: $log" >&2
      tail -n 20 "$log" >&2 || true
      stop "$name"
      return 1
    fi
    sleep 1
  done
  if ! kill -0 "$pid" 2>/dev/null; then  # answered, then exited (e.g. a heartbeat a previous daemon left)
    echo "cluster: $name exited while starting; its log: $log" >&2
    tail -n 20 "$log" >&2 || true
    rm -f "$CLUSTER/$name.pid"
    return 1
  fi
  echo "cluster: $name up (pid $pid) $(address_of "$name"), log $log"
}

stop() {
  local name="$1" pid
  pid="$(pid_of "$name")"
  if [[ -z "$pid" ]]; then
    rm -f "$CLUSTER/$name.pid"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 -- "-$pid" 2>/dev/null; then
    echo "cluster: $name did not stop within 30s: killed" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$CLUSTER/$name.pid"
  echo "cluster: $name stopped"
}

up() {
  mkdir -p "$CLUSTER/logs" "$DAGSTER_HOME"
  cp "$REPO/deploy/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
  create_databases
  check_redis
  local name
  for name in $(services); do
    start "$name" || {
      echo "cluster: not every service is up: \`$0 status\` says which run, \`$0 down\` stops them" >&2
      exit 1
    }
  done
  echo "cluster: up. Dagster UI http://127.0.0.1:$WEB_PORT, MLflow $BI_PIPELINE_MLFLOW_URI (DAGSTER_HOME=$DAGSTER_HOME)"
}

down() {
  local name
  # The webserver and daemon first (no new runs), the workers and MLflow last.
  for name in $(services | tac); do stop "$name"; done
  # Workers a previous `up` started with a larger CLUSTER_WORKERS.
  for file in "$CLUSTER"/worker-*.pid; do
    [[ -e "$file" ]] || continue
    stop "$(basename "$file" .pid)"
  done
}

status() {
  local name pid missing=0
  for name in $(services); do
    pid="$(pid_of "$name")"
    if [[ -n "$pid" ]] && ready "$name"; then
      printf '%-10s running  pid %-7s %s\n' "$name" "$pid" "$(address_of "$name")"
    elif [[ -n "$pid" ]]; then
      printf '%-10s starting or not answering  pid %-7s log %s\n' "$name" "$pid" "$CLUSTER/logs/$name.log"
      missing=1
    else
      printf '%-10s stopped\n' "$name"
      missing=1
    fi
  done
  return "$missing"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
