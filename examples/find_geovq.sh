# Sourced by the examples: sets GEOVQ to the geovq command. In order: $GEOVQ if already set;
# the repository's .venv/bin/geovq (what `make install`, `make run` and `make test` create);
# `geovq` on PATH (after `source .venv/bin/activate`, or a pip install); else a clear message.
GEOVQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${GEOVQ:-}" ]; then
  if [ -x "$GEOVQ_ROOT/.venv/bin/geovq" ]; then
    GEOVQ="$GEOVQ_ROOT/.venv/bin/geovq"
  elif command -v geovq >/dev/null 2>&1; then
    GEOVQ=geovq
  else
    echo "geovq: command not found; run 'make install' in $GEOVQ_ROOT (it creates .venv)," \
      "or 'source .venv/bin/activate' first" >&2
    exit 1
  fi
fi
