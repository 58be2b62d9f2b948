#!/usr/bin/env bash
# One call, every GPU figure geovq needs, as JSON under $OUT (default ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh                    # on a GPU machine: about 5-6 minutes
#   bash benchmarks/gpu_check.sh --device cpu --tiny  # the same steps at CPU sizes, seconds
#
# Parts, each in its own process under its own timeout; a failing or timed-out part is
# recorded (status.tsv, <part>.log) and the next one runs:
#   quick     geovq run --preset quick --device cuda end to end, wall time, manifest
#   train     VAE training images/s, bf16 autocast vs fp32, batch 128/512/1024; geovq's loop
#   kmeans    k-means on 4.8 M latent-like points (K = 256): GPU torch vs faiss-cpu, numpy, sklearn
#   geodesic  kNN graph of 480k points on the GPU vs a KD-tree; geodesic k-medoids with it
#   ddp       2 DDP processes on one GPU (nccl if it allows two ranks per GPU, else gloo) vs 1
#   geovq-ddp torchrun -m geovq train-vae on 1 and 2 processes (geovq's own DDP, mnist5k)
# Then summary.json and a compact table on stdout.
set -u
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2> /dev/null
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=cuda
TINY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=--tiny; shift ;;
        *) echo "gpu_check: unknown argument $1 (use --device D, --tiny)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
: > "$OUT/status.tsv"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
# Timeouts in seconds per part, and one deadline for the whole check (GPU time is scarce).
if [ -n "$TINY" ]; then T_QUICK=120; T_TRAIN=60; T_KMEANS=60; T_GEO=60; T_DDP=60; BUDGET=900
else T_QUICK=150; T_TRAIN=60; T_KMEANS=150; T_GEO=120; T_DDP=60; BUDGET=${GPU_CHECK_BUDGET:-450}; fi
DEADLINE=$(($(date +%s) + BUDGET))

# part NAME SECONDS COMMAND...: run it under a timeout (cut to what is left of the budget),
# log to OUT/NAME.log, record name, rc and wall seconds in OUT/status.tsv.
part() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if [ $left -lt 20 ]; then
        echo "== $name skipped: the check's budget is spent" >&2
        printf '%s\t%s\t0.000\n' "$name" 125 >> "$OUT/status.tsv"
        return 0
    fi
    [ $left -lt "$limit" ] && limit=$left
    echo "== $name (timeout ${limit}s)" >&2
    local started rc ms
    started=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - started) / 1000000))
    printf '%s\t%s\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$OUT/status.tsv"
    [ $rc -eq 0 ] || { echo "   $name failed (rc $rc), last lines:" >&2; tail -3 "$OUT/$name.log" >&2; }
    return 0
}

# (a) the quick preset end to end (smaller at --tiny: the stages a GPU changes most)
if [ -z "$TINY" ]; then
    part quick $T_QUICK $PY -m geovq run --preset quick --device "$DEVICE" \
        --run-dir "$SCRATCH/quick" --json
else
    part quick $T_QUICK bash -c "set -e
        $PY -m geovq train-vae --device $DEVICE --run-dir $SCRATCH/quick --limit 40 --epochs 1 --quiet
        $PY -m geovq extract --device $DEVICE --run-dir $SCRATCH/quick --quiet
        $PY -m geovq quantize --device $DEVICE --run-dir $SCRATCH/quick --metric w2 --k 16 --quiet
        $PY -m geovq quantize --device $DEVICE --run-dir $SCRATCH/quick --metric geodesic --k 16 --quiet"
fi
cp "$SCRATCH/quick/manifest.json" "$OUT/quick_manifest.json" 2> /dev/null
$PY -m geovq info --run-dir "$SCRATCH/quick" --json > "$OUT/quick_info.json" 2> /dev/null

# (b)-(d) single-process parts
part train $T_TRAIN $PY benchmarks/gpu_check.py train --device "$DEVICE" $TINY --out "$OUT"
part kmeans $T_KMEANS $PY benchmarks/gpu_check.py kmeans --device "$DEVICE" $TINY --out "$OUT"
part geodesic $T_GEO $PY benchmarks/gpu_check.py geodesic --device "$DEVICE" $TINY --out "$OUT"

# (e) DDP: 1 process, then 2 on the same device; nccl first on a GPU, gloo if nccl refuses
ddp() {
    local procs=$1 backend=$2
    part "ddp-$backend-$procs" $T_DDP $PY -m torch.distributed.run --standalone \
        --nproc-per-node "$procs" benchmarks/gpu_check.py ddp --device "$DEVICE" \
        --backend "$backend" $TINY --out "$OUT"
}
if [ "${DEVICE%%:*}" = cuda ]; then
    ddp 1 nccl
    ddp 2 nccl
    grep -q "^ddp-nccl-2	0	" "$OUT/status.tsv" || { ddp 1 gloo; ddp 2 gloo; }
else
    ddp 1 gloo
    ddp 2 gloo
fi
# geovq's own torchrun support: train-vae on 1 and on 2 processes (ranks sharing one GPU
# fall back to gloo), images/s from each result's JSON
for procs in 1 2; do
    part "geovq-ddp-$procs" $T_DDP bash -c "$PY -m torch.distributed.run --standalone \
        --nproc-per-node $procs -m geovq train-vae --device $DEVICE --run-dir $SCRATCH/ddp$procs \
        --epochs 3 --batch-size 256 ${TINY:+--limit 64} --json > $OUT/geovq_ddp_$procs.json"
done

$PY benchmarks/gpu_check.py summary --out "$OUT"
