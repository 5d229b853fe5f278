import { defineConfig } from "@playwright/test";
import * as path from "path";

// The server under test: `cogvlm serve` as built by ../build.sh (debug unless COGVLM_BIN says
// otherwise), on the bundled tiny checkpoints. Set NO_WEBSERVER=1 to test a server you started.
const port = Number(process.env.COGVLM_TEST_PORT ?? 3789);
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(__dirname, "..", "target");
const bin = process.env.COGVLM_BIN ?? path.join(targetDir, "debug", "cogvlm");

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 20_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    browserName: "chromium",
    headless: true,
    viewport: { width: 1360, height: 900 },
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
    trace: "off",
  },
  webServer: process.env.NO_WEBSERVER
    ? undefined
    : {
        command: `"${bin}" serve --host 127.0.0.1 --port ${port} --models-dir server/fixtures/models`,
        cwd: path.join(__dirname, ".."),
        url: `http://127.0.0.1:${port}`,
        reuseExistingServer: false,
        timeout: 60_000,
        stdout: "pipe",
        stderr: "pipe",
      },
});
