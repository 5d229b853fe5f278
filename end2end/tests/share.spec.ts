import { expect, test } from "@playwright/test";
import { spawn } from "child_process";
import * as path from "path";
import jsQR from "jsqr";
import { PNG } from "pngjs";

// `--share` prints the LAN link (and its QR code); the host's page, on loopback, has a Share button whose QR code
// decodes to the same link.

const port = Number(process.env.COGVLM_TEST_PORT ?? 3789) + 1;
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(__dirname, "..", "..", "target");
const bin = process.env.COGVLM_BIN ?? path.join(targetDir, "debug", "cogvlm");

test("the share QR code decodes to the printed link", async ({ page }) => {
  const server = spawn(bin, ["serve", "--share", "--port", String(port), "--models-dir", "server/fixtures/models"], {
    cwd: path.join(__dirname, "..", ".."),
  });
  try {
    let output = "";
    const link = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no share link in:\n${output}`)), 60_000);
      server.stderr.on("data", (d) => {
        output += d.toString();
        const m = /share:\s+(\S+)/.exec(output);
        if (m && output.includes("API clients")) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      server.on("exit", (code) => reject(new Error(`server exited ${code}:\n${output}`)));
    });
    // The terminal got the code too (half blocks).
    expect(output).toMatch(/[▀▄█]{10,}/);
    const token = new URL(link).searchParams.get("token")!;
    await page.goto(`http://127.0.0.1:${port}/?token=${token}`);
    await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
    await page.locator("#share").click();
    await expect(page.locator("#share-link")).toHaveText(link);
    const shot = await page.locator("#share-qr svg").screenshot();
    const png = PNG.sync.read(shot);
    const code = jsQR(new Uint8ClampedArray(png.data), png.width, png.height);
    expect(code?.data).toBe(link);

    // Seen from the LAN address (not loopback) the page has no Share button.
    const lan = new URL(link);
    await page.goto(`http://${lan.host}/?token=${token}`);
    await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
    await expect(page.locator("#share")).toHaveCount(0);
  } finally {
    server.kill("SIGINT");
  }
});
