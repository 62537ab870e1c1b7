#!/bin/bash
# A one-node Ceph cluster and its RADOS Gateway, all state on the data volume:
#   first start   creates the cluster (fsid, cephx keys, monitor, one BlueStore OSD on a file);
#                 the objects of a former dbstore deployment found on the volume are moved in
#                 (again at the next start if that was cut short);
#   every start   writes ceph.conf, starts the monitor and the OSD, creates the S3 user once
#                 (refusing other credentials than the user's), creates or re-keys the artifact
#                 clients' user and the read-only user (serving's), then serves S3 on port $S3_PORT
#                 (HTTPS when given a certificate).
# Any daemon that stops takes the container down with it, so Docker restarts the whole set.
# A deployment runs it as ceph, with no capability (the service role hands the data volume to
# ceph beforehand); started as root (by hand, or by the tests' stand-ins), it runs the daemons
# as ceph itself.
set -euo pipefail
# Objects, keys and the monitor's store are for the ceph user alone.
umask 027
# The accounts' keys: files of the mounted config folder (never the container's environment,
# which `docker inspect` shows), else the environment (a container started by hand). The
# read-only user's are optional (a deployment always gives them; a container started by hand
# may not).
for name in S3_ACCESS_KEY S3_SECRET_KEY S3_CLIENT_ACCESS_KEY S3_CLIENT_SECRET_KEY S3_READER_ACCESS_KEY \
            S3_READER_SECRET_KEY; do
    if [ -f "/etc/aie/s3/$name" ]; then
        printf -v "$name" '%s' "$(cat "/etc/aie/s3/$name")"
    fi
    if [ -z "${!name:-}" ] && [ "${name#S3_READER_}" = "$name" ]; then
        echo "aie-rgw: $name is not set (nor /etc/aie/s3/$name)" >&2
        exit 1
    fi
    export "$name=${!name:-}"
done
: "${S3_CAPACITY_GIB:=20}"
# The port S3 is served on inside the network (the role passes aie_services.s3.port).
: "${S3_PORT:?S3_PORT is not set}"
DATA=/var/lib/aie-s3
CEPH=$DATA/ceph
# The former engine (RGW's SQLite dbstore backend) kept these files at the volume's top.
DBSTORE_FILES=(dbstore-config.db dbstore-default_ns.db)

log() { echo "aie-rgw: $*" >&2; }
if [ "$(id -u)" = 0 ]; then
    as_ceph=(--setuser ceph --setgroup ceph)
else
    as_ceph=()
fi
# Hands files to ceph when running as root; as ceph, what it makes is its own already.
to_ceph() {
    if [ "$(id -u)" = 0 ]; then chown ceph:ceph "$@"; fi
}

write_conf() {
    install -d -m 0755 /etc/ceph
    install -m 0644 /dev/null /etc/ceph/ceph.conf
    cat >/etc/ceph/ceph.conf <<EOF
[global]
fsid = $(cat "$CEPH/fsid")
mon initial members = a
mon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
mon data = $CEPH/mon/\$cluster-\$id
osd data = $CEPH/osd/\$cluster-\$id
run dir = /run/ceph
log to file = false
log to stderr = false
err to stderr = true
mon cluster log to file = false
# One OSD holds the only copy: a single replica, failure domain the OSD itself.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# No manager runs to autoscale placement groups: a fixed 8 per pool spreads the OSD's work.
osd pool default pg autoscale mode = off
osd pool default pg num = 8
mon max pg per osd = 1000
# The container's host name changes with each container: keep the OSD under one CRUSH host.
crush location = root=default host=aie-s3
auth allow insecure global id reclaim = false
mon data avail warn = 5
# BlueStore on a (sparse) file on the data volume; its size is the store's capacity.
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $((S3_CAPACITY_GIB * 1024 * 1024 * 1024))
osd memory target = 939524096

[client.admin]
keyring = $CEPH/client.admin.keyring

[client.rgw]
keyring = $CEPH/client.rgw.keyring
rgw data = $CEPH/rgw
EOF
}

create_cluster() {
    log "creating a one-node Ceph cluster on the data volume (${S3_CAPACITY_GIB} GiB)"
    install -d -m 0750 "$CEPH" "$CEPH/mon" "$CEPH/osd" "$CEPH/rgw"
    python3 -c 'import uuid; print(uuid.uuid4())' >"$CEPH/fsid.new"
    mv "$CEPH/fsid.new" "$CEPH/fsid"
    write_conf
    local tmp
    tmp=$(mktemp -d)
    ceph-authtool --create-keyring "$tmp/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$CEPH/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$tmp/mon.keyring" --import-keyring "$CEPH/client.admin.keyring" >/dev/null
    monmaptool --create --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' --fsid "$(cat "$CEPH/fsid")" \
        "$tmp/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$tmp/monmap" --keyring "$tmp/mon.keyring"
    rm -rf "$tmp"
    to_ceph -R "$CEPH"
}

create_osd() {
    local uuid id dir
    uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    id=$(ceph osd new "$uuid")
    dir=$CEPH/osd/ceph-$id
    install -d -m 0750 "$dir"
    to_ceph "$dir"
    ceph auth get-or-create "osd.$id" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' \
        -o "$dir/keyring"
    to_ceph "$dir/keyring"
    ceph-osd -i "$id" --mkfs --osd-uuid "$uuid" "${as_ceph[@]}" 2>&1 | grep -v 'unable to get device name' >&2 || true
    [ -f "$dir/fsid" ] || { log "creating the OSD failed"; exit 1; }
}

create_gateway_key() {
    ceph auth get-or-create client.rgw mon 'allow rw' osd 'allow rwx' -o "$CEPH/client.rgw.keyring"
    to_ceph "$CEPH/client.rgw.keyring"
}

# Waits until `ceph "$@"` prints something that matches the pattern, while the daemon started
# as process $pid runs: one that stopped is reported at once, with its exit code (its own message
# is above, on stderr).
wait_for() {
    local pid=$1 pattern=$2 what=$3 rc
    shift 3
    for _ in $(seq 120); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" || rc=$?
            log "the $what stopped (exit $rc) before it answered; its message is above"
            stop_all
            exit 1
        fi
        if ceph --connect-timeout 5 "$@" 2>/dev/null | grep -q "$pattern"; then return 0; fi
        sleep 1
    done
    log "the $what did not come up within 120 s"
    stop_all
    exit 1
}

# Ceph's monitor refuses to start, and stops, when its filesystem has mon_data_avail_crit (5%) or
# less free: said here in the volume's terms, before anything is written to it.
check_free_space() {
    local size avail
    read -r size avail < <(df -Pk "$DATA" | awk 'NR == 2 {print $2, $4}')
    if [ $((avail * 100 / size)) -le 5 ]; then
        log "the filesystem of the data volume ($DATA) has $((avail * 100 / size))% free" \
            "($((avail / 1024)) MiB of $((size / 1024)) MiB); Ceph's monitor stops at 5% or less." \
            "Free space where Docker keeps its volumes (docker system df), then start it again"
        exit 1
    fi
}

stop_all() {
    trap - TERM INT
    kill $(jobs -p) 2>/dev/null || true
    wait || true
}
trap 'stop_all; exit 0' TERM INT

if [ -d "$DATA/.minio.sys" ]; then
    log "the data volume holds MinIO's data (.minio.sys): run s3_engine=minio on it," \
        "or copy the objects out and purge the volume before switching to rgw"
    exit 1
fi
check_free_space
if [ ! -f "$CEPH/fsid" ]; then
    create_cluster
fi
write_conf
to_ceph "$DATA" "$CEPH"
install -d -m 0770 /run/ceph
to_ceph /run/ceph

ceph-mon -f -i a "${as_ceph[@]}" &
wait_for $! HEALTH "monitor" health
if [ -z "$(ls -A "$CEPH/osd")" ]; then
    create_osd
fi
osd_id=$(basename "$(ls -d "$CEPH"/osd/ceph-*)")
osd_id=${osd_id#ceph-}
ceph-osd -f -i "$osd_id" "${as_ceph[@]}" 2> >(grep --line-buffered -v 'unable to get device name' >&2) &
wait_for $! '"num_up_osds":1' "OSD" osd stat -f json
[ -f "$CEPH/client.rgw.keyring" ] || create_gateway_key

if user=$(timeout 120 radosgw-admin user info --uid=aie 2>/dev/null); then
    # The user is never modified once created: other credentials than the user's are refused.
    if ! grep -q "\"access_key\": \"$S3_ACCESS_KEY\"" <<<"$user"; then
        log "the S3 user exists with other credentials than aie_s3_access_key;" \
            "restore the original credentials (files/keys/secrets or Vault)"
        stop_all
        exit 1
    fi
else
    # Made with a key of its own, which aie-rgw-keys replaces (no secret on a command line).
    timeout 120 radosgw-admin user create --uid=aie --display-name=aie >/dev/null
    aie-rgw-keys aie S3_ACCESS_KEY S3_SECRET_KEY >/dev/null
fi

# The artifact clients' user and the read-only one (the buckets' policy, roles/s3/vars/main.yml,
# names them and what each may do): they may create no bucket (max-buckets -1) and hold exactly
# the keys they are given, so that new keys in files/keys/secrets or Vault replace the old ones.
s3_user() {
    local uid=$1 access=$2 secret=$3
    if ! timeout 120 radosgw-admin user info --uid="$uid" >/dev/null 2>&1; then
        timeout 120 radosgw-admin user create --uid="$uid" --display-name="$uid" --max-buckets=-1 >/dev/null
    fi
    if [ -n "$(aie-rgw-keys "$uid" "$access" "$secret")" ]; then
        log "gave the S3 user $uid its keys"
    fi
}
s3_user aie-client S3_CLIENT_ACCESS_KEY S3_CLIENT_SECRET_KEY
if [ -n "$S3_READER_ACCESS_KEY" ] && [ -n "$S3_READER_SECRET_KEY" ]; then
    s3_user aie-reader S3_READER_ACCESS_KEY S3_READER_SECRET_KEY
fi

# The zonegroup's API name is the region buckets are made in: RGW refuses a bucket whose location
# constraint names another. The role gives aie_s3_region (the tests' stand-ins give none).
if [ -n "${S3_REGION:-}" ]; then
    region=$(timeout 120 radosgw-admin zonegroup get --rgw-zonegroup=default \
        | python3 -c 'import json, sys; print(json.load(sys.stdin).get("api_name", ""))')
    if [ "$region" != "$S3_REGION" ]; then
        timeout 120 radosgw-admin zonegroup modify --rgw-zonegroup=default --api-name="$S3_REGION" >/dev/null
        log "the region of the buckets (the zonegroup's API name) is $S3_REGION"
    fi
fi

# Objects of the former dbstore engine are copied in before S3 answers on its port: at every
# start that finds its files still at the volume's top, since a migration that stopped midway
# (the container killed, the host down) goes on where it stopped.
if [ -f "$DATA/${DBSTORE_FILES[0]}" ]; then
    /usr/local/sbin/aie-rgw-migrate-dbstore "$DATA" || { stop_all; exit 1; }
fi

# HTTPS only, with the host's certificate when the deployment mounts one (a container started
# without it, as the tests' stand-in for an external S3 service, serves plain HTTP), which the
# config volume holds for ceph.
if [ -f /etc/aie/tls/cert.pem ]; then
    frontend="beast ssl_port=$S3_PORT ssl_certificate=/etc/aie/tls/cert.pem ssl_private_key=/etc/aie/tls/key.pem"
else
    frontend="beast port=$S3_PORT"
fi
radosgw -f -n client.rgw "${as_ceph[@]}" --rgw-frontends "$frontend" &
set +e
wait -n
rc=$?
log "a Ceph daemon stopped (exit $rc); stopping the others"
stop_all
exit $((rc == 0 ? 1 : rc))
