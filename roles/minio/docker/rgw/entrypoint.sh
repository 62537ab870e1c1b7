#!/bin/sh
# Creates (once) the S3 user with the credentials from the environment, then runs radosgw.
set -eu
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set}"
# Data and configuration (zone, placement) both live on the data volume: a re-created
# container must find the objects it stored before.
set -- --no-mon-config --rgw-backend-store dbstore --rgw-config-store dbstore \
       --dbstore-db-dir /var/lib/aie-s3 --dbstore-config-uri file:/var/lib/aie-s3/dbstore-config.db

# radosgw-admin (Ceph 18) now and then hangs while it first sets up its SQLite config
# store; a bounded wait and another try get past it. Prints the command's output.
admin() {
    for attempt in 1 2 3 4 5; do
        rc=0
        timeout 30 radosgw-admin "$@" 2>/dev/null || rc=$?
        [ "$rc" = 124 ] || return "$rc"
        echo "aie: radosgw-admin timed out (try $attempt), trying again" >&2
    done
    return 124
}

if user=$(admin "$@" user info --uid=aie); then
    # The user is never modified once created: with the dbstore backend, changing its keys
    # loses its buckets. Other credentials than the user's are refused, loudly.
    if ! printf '%s' "$user" | grep -q "\"access_key\": \"$S3_ACCESS_KEY\""; then
        echo "aie: the S3 user exists with other credentials than aie_s3_access_key;" \
             "restore the original credentials (files/keys/secrets or Vault)" >&2
        exit 1
    fi
else
    admin "$@" user create --uid=aie --display-name=aie \
        --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY" >/dev/null
fi
exec radosgw -f "$@" --rgw-frontends "beast port=9000" --log-to-stderr=true --err-to-stderr=true --log-file=
