#!/bin/sh
# Runs as the service's user, with no capability: the service role prepared its config (the
# config volume at /etc/aie, the user's, files 0400) and its data folders beforehand, as root, in
# a one-off container (roles/service/files/prepare.sh). This fills the user's home ($HOME, a tmpfs
# of the user's) and the environment from the config, then runs the command:
# - the ssh material from /etc/aie/ssh, and what /etc/aie/home holds (clients' credentials files:
#   .aws/credentials for boto3, .mlflow/credentials for MLflow's client), go to the home;
# - each file /etc/aie/env/NAME becomes the variable NAME of the service's environment: the
#   secrets of programs that read them only from their environment (MLflow's Flask key and
#   passphrase), which so stay out of the container's configuration (`docker inspect`).
set -eu
HOME=${HOME:-/home/aie}
export HOME
if [ -d /etc/aie/ssh ]; then
    install -d -m 0700 "$HOME/.ssh"
    for file in /etc/aie/ssh/*; do
        install -m 0400 "$file" "$HOME/.ssh/"
    done
fi
if [ -d /etc/aie/home ]; then
    cp -R /etc/aie/home/. "$HOME/"
fi
if [ -d /etc/aie/env ]; then
    for file in /etc/aie/env/*; do
        [ -f "$file" ] || continue
        name=${file##*/}
        value=$(cat "$file")
        export "$name=$value"
    done
fi
exec "$@"
