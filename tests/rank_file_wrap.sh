#!/bin/bash
# rank_file_wrap.sh CMD...: run CMD, but on ranks > 0 replace the argument
# equal to $WF_FILE by $WF_OTHER (default: a path that does not exist), so
# the cluster tests can give ranks no model file or a different one.
if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec "$@"; fi
args=()
for a in "$@"; do [ "$a" = "$WF_FILE" ] && a=${WF_OTHER:-/nonexistent/model.gguf}; args+=("$a"); done
exec "${args[@]}"
