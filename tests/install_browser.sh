#!/usr/bin/env bash
# The browser of tests/test_app_in_browser.py: Debian's chromium and chromium-driver, installed with apt-get when
# missing and this user may (root, or passwordless sudo). Otherwise it says loudly that the browser test will be
# skipped (it fails when CI is set). Exits 0 either way, so the README's test command goes on to the tests.
set -u

have_browser() {
    { command -v chromium || command -v chromium-browser; } >/dev/null && command -v chromedriver >/dev/null
}

have_browser && exit 0
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    as_root=(false)
fi
if command -v apt-get >/dev/null && "${as_root[@]}" true 2>/dev/null; then
    echo "tests/install_browser.sh: installing chromium and chromium-driver with apt-get"
    "${as_root[@]}" apt-get update -qq &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
have_browser && exit 0
cat >&2 <<'EOF'
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!! tests/install_browser.sh: chromium and chromedriver are missing and could not be installed
!!! (apt-get as root or with passwordless sudo). tests/test_app_in_browser.py, the Streamlit app in a
!!! real browser, will be SKIPPED (and FAIL where CI is set). Install Debian's chromium and
!!! chromium-driver (or your system's Chromium and its chromedriver) to run it.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
EOF
