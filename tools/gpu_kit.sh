#!/bin/sh
# gpu_kit.sh: what a device call on a bare CUDA machine needs to run this
# build's GPU binaries, packed here into one folder to carry (the machine
# has the CUDA runtime but none of the Debian libraries tutti links, and
# sees nothing outside the working tree):
#   KIT/bin/NAME.xz   the stripped binaries named (default: build/tutti and
#                     the CUDA test binaries), xz-compressed;
#   KIT/lib.tar.xz    the shared libraries they load from /lib or /usr/lib, and the CUDA runtime
#                     (glibc, libstdc++ and libgcc_s excepted: the machine
#                     has newer ones), for LD_LIBRARY_PATH;
#   KIT/shared/       with SHARED=1, the part of ../shared that
#                     tests/gpu_test.sh reads (stories260K and seven synthetic
#                     models with their goldens: about 28 MB; all of ../shared
#                     is over the 64 MiB a call may carry);
#   KIT/env.sh        sourced on the device: unpacks the binaries into
#                     /tmp/kit and the libraries, sets LD_LIBRARY_PATH, and
#                     defines `gen_models` (the issue's 8B and MoE-12L shapes
#                     into /tmp/l8.gguf and /tmp/q3.gguf) and `bench LABEL
#                     MODEL [VAR=VALUE...]` (one decode/prefill line).
# KIT must be ignored by git (.git/info/exclude) and named in the call's
# carry. Example:
#   echo /.kit/ >> .git/info/exclude; make CUDA=1 all build/tests/test_kcuda
#   SHARED=1 sh tools/gpu_kit.sh .kit
#   device call: ". .kit/env.sh; gen_models; bench q3 /tmp/q3.gguf TT_GPU_PROFILE=0"
set -eu
KIT=${1:?usage: gpu_kit.sh KIT [BINARY...]}
shift
[ $# -gt 0 ] || set -- build/tutti build/tests/test_kcuda build/tests/test_kcuda_moe build/tests/test_kcuda_top
rm -rf "$KIT/bin" "$KIT/lib.tar.xz" "$KIT/shared"
mkdir -p "$KIT/bin" "$KIT/lib"
for b in "$@"; do
    [ -x "$b" ] || { echo "gpu_kit: $b is not built" >&2; exit 1; }
    strip -o "$KIT/bin/$(basename "$b")" "$b"
    xz -f -T2 "$KIT/bin/$(basename "$b")"
done
ldd "$@" | awk '$3 ~ /^\/(usr\/)?lib/ || $3 ~ /libcudart/ {print $3}' | sort -u | while read -r l; do
    case "$(basename "$l")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    *) cp -L "$l" "$KIT/lib/" ;;
    esac
done
tar -C "$KIT" -cJf "$KIT/lib.tar.xz" lib && rm -rf "$KIT/lib"
if [ "${SHARED:-0}" = 1 ]; then
    S=${TT_SHARED:-../shared}
    mkdir -p "$KIT/shared/models" "$KIT/shared/golden"
    cp "$S/golden/README.md" "$S/golden/logits_prompt.txt" "$KIT/shared/golden/"
    for m in stories260K synth-llama.q4_k_m synth-llama.f16 synth-qwen3moe.q4_k_m synth-mixtral.q4_k_m \
        synth-qwen3.q4_k_m synth-qwen2moe.q4_k_m synth-qwen2.q8_0; do
        cp "$S/models/$m.gguf" "$KIT/shared/models/"
        cp "$S/golden/$m."* "$KIT/shared/golden/"
    done
    chmod -R u+w "$KIT/shared"
fi
cat > "$KIT/env.sh" <<'EOF'
# env.sh (tools/gpu_kit.sh): source from the repository root on the device.
K=${KIT:-$(dirname "${BASH_SOURCE:-$0}")}
mkdir -p /tmp/kit/tests /tmp/kitlib
for f in "$K"/bin/*.xz; do b=$(basename "$f" .xz); xz -dc "$f" > /tmp/kit/$b; chmod +x /tmp/kit/$b; done
for t in /tmp/kit/test_*; do [ -e "$t" ] && ln -sf "$t" /tmp/kit/tests/; done
tar -C /tmp/kitlib -xJf "$K/lib.tar.xz"
export LD_LIBRARY_PATH=/tmp/kitlib/lib:${LD_LIBRARY_PATH:-} TT_PROGRESS=0 NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TUTTI=/tmp/kit/tutti
[ -d "$K/shared" ] && export TT_SHARED=$K/shared
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
gen_models() {
    [ -f /tmp/q3.gguf ] || $TUTTI gen --arch qwen3moe --n-embd 2048 --n-layer 12 --n-head 32 --n-head-kv 4 \
        --head-dim 128 --n-ff 6144 --n-expert 128 --n-expert-used 8 --n-ff-exp 768 --vocab 151936 --type q4_k_m \
        -t "$(nproc)" -o /tmp/q3.gguf > /dev/null
    [ -f /tmp/l8.gguf ] || $TUTTI gen --arch llama --n-embd 4096 --n-layer 32 --n-head 32 --n-head-kv 8 \
        --n-ff 14336 --vocab 128256 --type q4_k_m -t "$(nproc)" -o /tmp/l8.gguf > /dev/null
    sync
}
bench() {
    lab=$1 m=$2; shift 2
    r=$(env "$@" $TUTTI bench -m "$m" -p 512 -n 128 -r 2 --json 2>>"$OUT/bench.err" | tail -1)
    echo "$lab $(echo "$r" | python3 -c 'import json, sys; d = json.load(sys.stdin); print("decode %.1f prefill %.0f bw %s J %s" % (d["decode_tok_s"], d["prefill_tok_s"], d.get("bw_fraction"), d.get("decode_j_per_token")))' 2>&1)" | tee -a "$OUT/bench.txt"
}
EOF
du -sh "$KIT"
