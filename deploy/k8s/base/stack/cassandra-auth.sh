#!/bin/sh
# Cassandra's roles, before `tickflow-admin migrate` (the migration Job's init container, in the
# cassandra image for its cqlsh). Idempotent: every deploy runs it again.
#
# 1. The superuser from Secret tickflow-cassandra-admin replaces the built-in cassandra/cassandra:
#    created while logging in as cassandra (possible only on a fresh cluster), then the built-in
#    role is dropped, so its well-known password opens nothing.
# 2. system_auth is replicated as AUTH_REPLICATION says (every node of dc1), so a login does not
#    depend on the one node that happens to hold the role.
# 3. The services' role from Secret tickflow-cassandra-credentials: login, not superuser; it may
#    create keyspaces (the migration creates KEYSPACE and, as its creator, gets every permission
#    on it) and has every permission on KEYSPACE when that exists already. Its password follows
#    the Secret (ALTER ROLE on each run).
set -eu

host=${CASSANDRA_HOST:-cassandra}
port=${CASSANDRA_PORT:-9042}
attempts=${AUTH_ATTEMPTS:-60}
: "${ADMIN_USERNAME:?from Secret tickflow-cassandra-admin}" "${ADMIN_PASSWORD:?from Secret tickflow-cassandra-admin}"
: "${APP_USERNAME:?from Secret tickflow-cassandra-credentials}" "${APP_PASSWORD:?from Secret tickflow-cassandra-credentials}"
: "${AUTH_REPLICATION:?e.g. {'class': 'NetworkTopologyStrategy', 'dc1': 3}}" "${KEYSPACE:?the services' keyspace}"

if [ "$ADMIN_USERNAME" = cassandra ] || [ "$APP_USERNAME" = cassandra ]; then
  echo "cassandra-auth: the built-in role 'cassandra' is dropped here; name the roles otherwise" >&2
  exit 2
fi
if [ "$ADMIN_USERNAME" = "$APP_USERNAME" ]; then
  echo "cassandra-auth: the services' role must not be the superuser; use two names" >&2
  exit 2
fi

# A CQL string literal: quotes doubled.
literal() { printf "'%s'" "$(printf %s "$1" | sed "s/'/''/g")"; }
# cql USER PASSWORD STATEMENTS
cql() {
  user=$1 password=$2
  shift 2
  cqlsh "$host" "$port" --request-timeout=30 -u "$user" -p "$password" -e "$*"
}

log=$(mktemp)
tries=0
until cql "$ADMIN_USERNAME" "$ADMIN_PASSWORD" "SELECT release_version FROM system.local" >/dev/null 2>"$log"; do
  tries=$((tries + 1))
  if [ "$tries" -gt "$attempts" ]; then
    echo "cassandra-auth: neither $ADMIN_USERNAME (Secret tickflow-cassandra-admin) nor the built-in" \
      "cassandra role can log in at $host:$port after $attempts attempts. If Cassandra is up, the" \
      "Secret's password differs from the role's: see deploy/k8s/README.md, Cassandra" \
      "authentication. Last errors:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  # A fresh cluster: the built-in superuser exists (Cassandra creates it about 10 s after start)
  # and creates ours. Both statements in one session: once system_auth is replicated wider, a
  # new session as cassandra could land on a replica that has not got its row yet.
  if cql cassandra cassandra "ALTER KEYSPACE system_auth WITH replication = $AUTH_REPLICATION;
      CREATE ROLE IF NOT EXISTS $(literal "$ADMIN_USERNAME") WITH SUPERUSER = true AND LOGIN = true
      AND PASSWORD = $(literal "$ADMIN_PASSWORD");" >/dev/null 2>>"$log"; then
    echo "cassandra-auth: superuser $ADMIN_USERNAME created"
  else
    sleep "${AUTH_RETRY_S:-10}"
  fi
done

existing=$(cql "$ADMIN_USERNAME" "$ADMIN_PASSWORD" \
  "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = $(literal "$KEYSPACE")")
grant_keyspace=""
if printf '%s\n' "$existing" | grep -qx " *$KEYSPACE *"; then
  grant_keyspace="GRANT ALL PERMISSIONS ON KEYSPACE \"$KEYSPACE\" TO $(literal "$APP_USERNAME");"
fi

app=$(literal "$APP_USERNAME")
app_password=$(literal "$APP_PASSWORD")
cql "$ADMIN_USERNAME" "$ADMIN_PASSWORD" "
  ALTER KEYSPACE system_auth WITH replication = $AUTH_REPLICATION;
  DROP ROLE IF EXISTS cassandra;
  CREATE ROLE IF NOT EXISTS $app WITH LOGIN = true AND PASSWORD = $app_password;
  ALTER ROLE $app WITH LOGIN = true AND PASSWORD = $app_password;
  GRANT CREATE ON ALL KEYSPACES TO $app;
  $grant_keyspace"
echo "cassandra-auth: built-in role dropped, system_auth at $AUTH_REPLICATION, role $APP_USERNAME ready"
