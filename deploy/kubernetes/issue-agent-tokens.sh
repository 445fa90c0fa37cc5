#!/usr/bin/env bash
# Give every GPU node an agent token: for each node labelled nvidia.com/gpu.present=true that has no key in the
# Secret switchyard-agent/switchyard-agent-tokens, register it in Switchyard (`createnode NAME --pool POOL`, run in
# a web pod) and store {"token": "..."} under the node's name. The agent DaemonSet reads the key named after its
# node; a node added later gets its token on the next run (run this after the cluster autoscaler adds GPU nodes, or
# from a CronJob with the same rights). The pool is the node's label switchyard.io/pool, else $DEFAULT_POOL.
#
#   deploy/kubernetes/issue-agent-tokens.sh            # needs kubectl rights: list nodes, exec into switchyard-web,
#                                                      # get/create/patch that Secret
# Tokens never appear on a command line: they go from the web pod's output into a patch file readable by you alone.
set -euo pipefail

POOL_LABEL="${POOL_LABEL:-switchyard.io/pool}"
DEFAULT_POOL="${DEFAULT_POOL:-gpu}"
AGENT_NS=switchyard-agent
SECRET=switchyard-agent-tokens

kubectl -n "$AGENT_NS" get secret "$SECRET" >/dev/null 2>&1 \
    || kubectl -n "$AGENT_NS" create secret generic "$SECRET" >/dev/null
have="$(kubectl -n "$AGENT_NS" get secret "$SECRET" -o go-template='{{range $k, $v := .data}}{{$k}}{{"\n"}}{{end}}')"
label_path="{.metadata.labels.${POOL_LABEL//./\\.}}"
patch="$(mktemp)"
chmod 600 "$patch"
trap 'rm -f "$patch"' EXIT

for node in $(kubectl get nodes -l nvidia.com/gpu.present=true -o jsonpath='{.items[*].metadata.name}'); do
    if grep -qxF "$node" <<<"$have"; then
        continue
    fi
    pool="$(kubectl get node "$node" -o jsonpath="$label_path")"
    pool="${pool:-$DEFAULT_POOL}"
    # --rotate: a node Switchyard already knows (its key was lost) gets a new token and its old one stops working.
    token="$(kubectl -n switchyard exec deploy/switchyard-web -c web -- \
        python -m django createnode "$node" --pool "$pool" --rotate --reason "deploy/kubernetes/issue-agent-tokens.sh" \
        | tail -n 1)"
    case "$token" in
        sy_node_*) ;;
        *) echo "createnode $node did not print a token; nothing stored for it" >&2; exit 1 ;;
    esac
    printf '{"data": {"%s": "%s"}}' "$node" "$(printf '{"token": "%s"}' "$token" | base64 | tr -d '\n')" >"$patch"
    kubectl -n "$AGENT_NS" patch secret "$SECRET" --type merge --patch-file "$patch" >/dev/null
    echo "node $node (pool $pool): token stored in $AGENT_NS/$SECRET"
done
