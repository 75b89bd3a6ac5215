#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and .rpm (cargo-generate-rpm) of the agent into
# target/packages/. Installs the two tools first when they are missing.
#
#   packaging/build.sh            `dist` build (release, stripped), both packages
#   packaging/build.sh --dev      package the debug build (fast; for tests)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dist
if [ "${1:-}" = "--dev" ]; then
  profile=dev
fi
tools=()
command -v cargo-deb >/dev/null || tools+=(cargo-deb)
command -v cargo-generate-rpm >/dev/null || tools+=(cargo-generate-rpm)
if [ ${#tools[@]} -gt 0 ]; then
  if [ "$profile" = dev ]; then
    # The test packages (a fresh CI machine installs the tools on every
    # run): the tools compiled unoptimized, 2.4 min instead of 4.2 on 2
    # cores. The test packages are stripped (deb) or uncompressed (rpm), so
    # the tools' own speed does not matter there.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_LTO=false \
      CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 CARGO_PROFILE_RELEASE_DEBUG=false \
      CARGO_TARGET_DIR=target/packaging-tools \
      cargo install --locked --quiet "${tools[@]}"
  else
    CARGO_TARGET_DIR=target/packaging-tools cargo install --locked --quiet "${tools[@]}"
  fi
  rm -rf target/packaging-tools
fi

out=target/packages
mkdir -p "$out"
# Both tools map the `target/release/` asset paths to the profile's
# directory, so `--dev` packages target/debug/corrosion without touching a
# release binary.
if [ "$profile" = dev ]; then
  # The test packages take the binary the test suite built
  # (scripts/test.sh: every target at once, one feature resolution for the
  # binary and the tests); `-p corrosion` alone resolves fewer dependency
  # features and would compile most dependencies again (~5 min on 2 cores).
  cargo build --locked --workspace --all-targets
else
  cargo build --locked --profile "$profile" -p corrosion
fi
cargo deb --no-build --profile "$profile" -p corrosion -o "$out/"
# The dev binary is unstripped (~500 MB): compressing it would take minutes,
# so the test package is left uncompressed.
compress=()
if [ "$profile" = dev ]; then
  compress=(--payload-compress none)
fi
cargo generate-rpm --profile "$profile" -p agent ${compress[@]+"${compress[@]}"} -o "$out/"
ls -1 "$out"
