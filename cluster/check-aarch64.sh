#!/usr/bin/env bash
# The int8 kernels (Sources/CKernels/kernels.c) at every level, x86-64 and aarch64, held bit for bit
# to one scalar reference (Tests/CKernelsCheck/int8_check.c), so the aarch64 level (NEON + sdot)
# is tied to the x86 ones without aarch64 hardware:
#   1. -Wall -Wextra -Werror compiles of kernels.c (and fp32kernels.c, clang only: it uses clang's
#      vector builtins) for x86-64 and baseline armv8-a, with gcc and clang;
#   2. the check natively on x86-64 (gcc -O2, no -march: the levels picked at run time; with clang
#      too, adding the fp32 products' levels against double-precision sums);
#   3. the check built for baseline armv8-a (so the dot-product level is picked at run time) with
#      aarch64-linux-gnu-gcc (and clang --target=aarch64-linux-gnu, the package's own compiler,
#      where it can), statically linked, under qemu-aarch64-static -cpu max (has the dot product:
#      the neon-dotprod level must run and match) and -cpu cortex-a57 (has not: the level must not
#      run and NONE must be picked), plus $INTERVENE_INT8_KERNELS=none / neon-dotprod.
# Exits 1 on any failure. Without qemu or the cross compiler (cluster/setup.sh installs
# qemu-user-static, gcc-aarch64-linux-gnu and libc6-dev-arm64-cross) it runs the x86 part, then
# prints "skipped: <why>" and exits 0. About 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
fail() { printf 'check-aarch64: FAILED: %s\n' "$*" >&2; exit 1; }

INC=Sources/CKernels/include
K=Sources/CKernels/kernels.c
F=Sources/CKernels/fp32kernels.c
CHECK=Tests/CKernelsCheck/int8_check.c
# -ffp-contract=off for the check only: its reference must not fuse what the kernels round twice
CFLAGS=(-O2 -Wall -Wextra -Werror -I"$INC")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

HOSTCC=""
for c in gcc cc; do command -v "$c" >/dev/null && { HOSTCC=$c; break; }; done
[ -n "$HOSTCC" ] || { echo "skipped: no host C compiler (gcc or cc)"; exit 0; }
CLANG=""
command -v clang >/dev/null && CLANG=clang

# run NAME CMD...: runs the check, prints its summary lines, returns its output in $out
run() {
  local name=$1; shift
  say "$name: $*"
  set +e
  out=$("$@" 2>&1)
  local rc=$?
  set -e
  printf '%s\n' "$out" | grep -E '^(cpu level|level |levels compared|fp32 level|MISMATCH|FP32 MISMATCH|FAILED|ok$)' \
    | sed 's/^/    /'
  [ $rc -eq 0 ] || fail "$name exited $rc"
}
expect() { printf '%s\n' "$out" | grep -qE "$1" || fail "$2"; }

# ---- x86-64 ---------------------------------------------------------------------------------------
if [ "$(uname -m)" = x86_64 ]; then
  say "compile checks (-Wall -Wextra -Werror), x86-64"
  "$HOSTCC" "${CFLAGS[@]}" -c "$K" -o "$tmp/k.o"
  "$HOSTCC" "${CFLAGS[@]}" -ffp-contract=off -c "$CHECK" -o "$tmp/c.o"
  if [ -n "$CLANG" ]; then
    "$CLANG" "${CFLAGS[@]}" -c "$K" -o "$tmp/k.o"
    "$CLANG" "${CFLAGS[@]}" -c "$F" -o "$tmp/f.o"
    "$CLANG" "${CFLAGS[@]}" -ffp-contract=off -DIK_CHECK_FP32 -c "$CHECK" -o "$tmp/c.o"
  fi
  "$HOSTCC" "${CFLAGS[@]}" -ffp-contract=off "$CHECK" "$K" -lm -o "$tmp/x86-gcc"
  run "x86-64, $HOSTCC" "$tmp/x86-gcc"
  expect '^level neon-dotprod: does not run' "x86-64 claims to run the neon-dotprod level"
  printf '%s\n' "$out" | grep -qE '^levels compared: [1-9]' || say "note: this CPU runs no x86 int8 level"
  if [ -n "$CLANG" ]; then
    "$CLANG" "${CFLAGS[@]}" -ffp-contract=off -DIK_CHECK_FP32 "$CHECK" "$K" "$F" -lm -o "$tmp/x86-clang"
    run "x86-64, clang (+ fp32 levels)" "$tmp/x86-clang"
  fi
else
  say "not an x86-64 host ($(uname -m)): the x86 levels are not checked"
fi

# ---- aarch64 under qemu ---------------------------------------------------------------------------
QEMU=""
for q in qemu-aarch64-static qemu-aarch64; do command -v "$q" >/dev/null && { QEMU=$q; break; }; done
XCC=aarch64-linux-gnu-gcc
[ -n "$QEMU" ] || { echo "skipped: no qemu-aarch64-static (apt-get install qemu-user-static)"; exit 0; }
command -v "$XCC" >/dev/null || { echo "skipped: no $XCC (apt-get install gcc-aarch64-linux-gnu)"; exit 0; }
printf 'int main(void) { return 0; }\n' > "$tmp/t.c"
"$XCC" -static "$tmp/t.c" -o "$tmp/t" 2>/dev/null \
  || { echo "skipped: $XCC cannot link a static program (apt-get install libc6-dev-arm64-cross)"; exit 0; }

A64=(-march=armv8-a -static)
say "compile checks (-Wall -Wextra -Werror), aarch64 (armv8-a)"
"$XCC" "${CFLAGS[@]}" "${A64[@]}" -c "$K" -o "$tmp/k.o"
"$XCC" "${CFLAGS[@]}" "${A64[@]}" -ffp-contract=off -c "$CHECK" -o "$tmp/c.o"
"$XCC" "${CFLAGS[@]}" "${A64[@]}" -ffp-contract=off "$CHECK" "$K" -lm -o "$tmp/a64-gcc"
bins=("$tmp/a64-gcc")
# clang builds the package: its aarch64 code too, where it has the target and links with the
# cross toolchain's libc
if [ -n "$CLANG" ] && "$CLANG" --target=aarch64-linux-gnu -static "$tmp/t.c" -o "$tmp/t" 2>/dev/null; then
  CL=("$CLANG" --target=aarch64-linux-gnu)
  "${CL[@]}" "${CFLAGS[@]}" "${A64[@]}" -c "$K" -o "$tmp/k.o"
  "${CL[@]}" "${CFLAGS[@]}" "${A64[@]}" -c "$F" -o "$tmp/f.o"
  "${CL[@]}" "${CFLAGS[@]}" "${A64[@]}" -ffp-contract=off -DIK_CHECK_FP32 "$CHECK" "$K" "$F" -lm -o "$tmp/a64-clang"
  bins+=("$tmp/a64-clang")
else
  say "note: no clang that targets aarch64-linux-gnu: the aarch64 check is built with gcc only"
fi

for b in "${bins[@]}"; do
  what=$(basename "$b")
  run "$what, $QEMU -cpu max" "$QEMU" -cpu max "$b"
  expect '^cpu level: neon-dotprod; default level: neon-dotprod' "$what: -cpu max did not pick neon-dotprod"
  expect '^level neon-dotprod: [1-9][0-9]* products, .* 0 mismatches' "$what: neon-dotprod did not run clean"
  run "$what, $QEMU -cpu cortex-a57" "$QEMU" -cpu cortex-a57 "$b"
  expect '^cpu level: none; default level: none' "$what: cortex-a57 (no dot product) did not pick none"
  expect '^level neon-dotprod: does not run' "$what: cortex-a57 claims to run neon-dotprod"
  expect '^levels compared: 0' "$what: cortex-a57 compared a level"
done
b=${bins[0]}
run "INTERVENE_INT8_KERNELS=none, -cpu max" env INTERVENE_INT8_KERNELS=none "$QEMU" -cpu max "$b" --levels
expect '^cpu level: neon-dotprod; default level: none' "INTERVENE_INT8_KERNELS=none was not applied"
run "INTERVENE_INT8_KERNELS=neon-dotprod, -cpu max" env INTERVENE_INT8_KERNELS=neon-dotprod "$QEMU" -cpu max "$b" --levels
expect '^cpu level: neon-dotprod; default level: neon-dotprod' "INTERVENE_INT8_KERNELS=neon-dotprod was not applied"
say "check-aarch64: ok"
