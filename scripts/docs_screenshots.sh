#!/usr/bin/env bash
# Builds the docs site and takes screenshots of a few pages in headless Chromium, for a reviewer to
# see what a reader sees: navigation, search (a query typed into the search box), code blocks,
# the report's figures, the configuration reference. Not part of CI.
#   bash scripts/docs_screenshots.sh [OUT_DIR]      (default: site-screenshots/, git-ignored)
# Needs Debian's chromium (installed here when missing, as root) and Node.js; Playwright's
# playwright-core (npm, no browser download: it drives /usr/bin/chromium) goes to a cache folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-site-screenshots}")
mkdir -p "$out"
bash scripts/install.sh
if ! command -v chromium >/dev/null; then
  [[ $(id -u) == 0 ]] || { echo "error: chromium is not installed (apt-get install chromium, as root)" >&2; exit 2; }
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
tools=${XDG_CACHE_HOME:-$HOME/.cache}/mmpt-docs-screenshots
[[ -d $tools/node_modules/playwright-core ]] || npm install --silent --prefix "$tools" playwright-core@1 >/dev/null
site=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -q -d "$site"
port=${PORT:-8765}  # served over http: the search index is fetched, which file:// forbids
.venv/bin/python -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.2; done
NODE_PATH=$tools/node_modules node - "http://127.0.0.1:$port" "$out" <<'JS'
const { chromium } = require("playwright-core");
const [base, out] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const shot = async (name, path, fullPage = false) => {
    await page.goto(base + "/" + path, { waitUntil: "networkidle" });
    await page.screenshot({ path: `${out}/${name}.png`, fullPage });
    console.log(`${out}/${name}.png`);
  };
  await shot("home", "");
  await shot("get-started", "get-started/");
  await shot("sweeps", "sweeps/");
  await shot("reports", "reports/", true);
  await shot("configuration", "reference/configuration/#group-method");
  // search: type a query, wait for the results list
  await page.goto(base + "/get-started/", { waitUntil: "networkidle" });
  await page.click("input.md-search__input");
  await page.keyboard.type("resume a study");
  await page.waitForSelector(".md-search-result__item", { timeout: 15000 });
  await page.screenshot({ path: `${out}/search.png` });
  console.log(`${out}/search.png`);
  await browser.close();
})().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
JS
