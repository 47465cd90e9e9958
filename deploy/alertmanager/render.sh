#!/bin/sh
# Render alertmanager.yml.tmpl with the environment, then exec the given command (in
# docker-compose.yml: alertmanager itself). Alertmanager does not expand variables in its
# config; busybox sh and sed are all the prom/alertmanager image has, so nothing more.
#   ALERTMANAGER_WEBHOOK_URL  where every alert is posted (required)
#   ALERTMANAGER_TEMPLATE     the template (default: beside this script)
#   ALERTMANAGER_CONFIG       the rendered file (default /tmp/alertmanager.yml)
set -eu
: "${ALERTMANAGER_WEBHOOK_URL:?set ALERTMANAGER_WEBHOOK_URL to the webhook that receives alerts}"
case "$ALERTMANAGER_WEBHOOK_URL" in
    http://*|https://*) ;;
    *) echo "ALERTMANAGER_WEBHOOK_URL must be an http:// or https:// URL" >&2; exit 2 ;;
esac
case "$ALERTMANAGER_WEBHOOK_URL" in
    *'"'*|*'\'*|*' '*) echo "ALERTMANAGER_WEBHOOK_URL must not contain quotes, backslashes or spaces" >&2; exit 2 ;;
esac
template=${ALERTMANAGER_TEMPLATE:-$(dirname "$0")/alertmanager.yml.tmpl}
out=${ALERTMANAGER_CONFIG:-/tmp/alertmanager.yml}
# In sed's replacement only & and the delimiter are special.
url=$(printf '%s' "$ALERTMANAGER_WEBHOOK_URL" | sed 's/[&|]/\\&/g')
sed "s|\${ALERTMANAGER_WEBHOOK_URL}|$url|g" "$template" > "$out.tmp"
mv "$out.tmp" "$out"
[ "$#" -eq 0 ] || exec "$@"
