import { BrowserContext, CDPSession, expect, Page, test } from "@playwright/test";
import * as path from "path";
import { ChatPage } from "./chat_page";

// What the page costs on the wire, read from Chromium's network log (DevTools protocol): the
// bytes each response took on the wire (headers and the body as sent: compressed when it was),
// summed over everything the page loads until it is hydrated and idle. A reload must take the
// bundle from the cache.

const FIRST_LOAD_LIMIT = 350_000;
const RELOAD_LIMIT = 20_000;

/** A "Fast 3G"-like link: 1.6 Mbit/s down, 750 kbit/s up, 150 ms round trip. */
const FAST_3G = {
  offline: false,
  latency: 150,
  downloadThroughput: 1_600_000 / 8,
  uploadThroughput: 750_000 / 8,
};

interface Transfer {
  url: string;
  bytes: number;
  encoding: string;
  status: number;
  cached: boolean;
}

/** Records every finished request of `page` (bytes on the wire, content-encoding, cache use). */
async function networkLog(context: BrowserContext, page: Page) {
  const cdp: CDPSession = await context.newCDPSession(page);
  const pending = new Map<string, Transfer>();
  const done: Transfer[] = [];
  cdp.on("Network.requestWillBeSent", (e: any) => {
    pending.set(e.requestId, { url: e.request.url, bytes: 0, encoding: "", status: 0, cached: false });
  });
  cdp.on("Network.responseReceived", (e: any) => {
    const t = pending.get(e.requestId);
    if (!t) return;
    const headers = Object.fromEntries(
      Object.entries(e.response.headers ?? {}).map(([k, v]) => [k.toLowerCase(), String(v)]),
    );
    t.encoding = headers["content-encoding"] ?? "";
    t.status = e.response.status;
    t.cached = !!(e.response.fromDiskCache || e.response.fromPrefetchCache || e.response.fromServiceWorker);
  });
  cdp.on("Network.requestServedFromCache", (e: any) => {
    const t = pending.get(e.requestId);
    if (t) t.cached = true;
  });
  cdp.on("Network.loadingFinished", (e: any) => {
    const t = pending.get(e.requestId);
    if (!t) return;
    t.bytes = e.encodedDataLength;
    // Chromium's memory cache reports no flag, only that nothing came over the network.
    if (t.bytes === 0) t.cached = true;
    pending.delete(e.requestId);
    done.push(t);
  });
  await cdp.send("Network.enable");
  return {
    cdp,
    /** The finished requests since the last call, and their total bytes. */
    take(): { transfers: Transfer[]; total: number } {
      const transfers = done.splice(0, done.length);
      return { transfers, total: transfers.reduce((s, t) => s + t.bytes, 0) };
    },
  };
}

function table(transfers: Transfer[]): string {
  return transfers
    .map((t) => {
      const name = new URL(t.url).pathname;
      const how = t.cached ? "cache" : `${t.status} ${t.encoding || "identity"}`;
      return `  ${String(t.bytes).padStart(9)} B  ${how.padEnd(12)} ${name}`;
    })
    .join("\n");
}

/** Opens `url`, waits for hydration and a quiet network; returns when the page was hydrated
 * (ms since navigation start, from the page's own clock). */
async function openAndSettle(page: Page, url: string, reload = false): Promise<number> {
  const chat = new ChatPage(page);
  if (reload) {
    await page.reload();
    await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  } else {
    await chat.open(url);
  }
  await page.waitForLoadState("networkidle");
  return page.evaluate(() => (window as any).__hydratedAt as number);
}

/** Notes (in the page's clock) when `#app` turns hydrated. */
async function markHydration(page: Page) {
  await page.addInitScript(() => {
    const w = window as any;
    const check = () => {
      if (w.__hydratedAt === undefined && document.querySelector('#app[data-hydrated="true"]')) {
        w.__hydratedAt = performance.now();
      }
    };
    new MutationObserver(check).observe(document, { subtree: true, attributes: true, childList: true });
  });
}

test("first load ≤ 350 KB on the wire, a reload ≤ 20 KB (the bundle comes from the cache)", async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const log = await networkLog(context, page);
  await markHydration(page);

  await openAndSettle(page, "/");
  const first = log.take();
  console.log(`first load: ${first.total} B in ${first.transfers.length} requests\n${table(first.transfers)}`);
  const wasm = first.transfers.find((t) => t.url.endsWith(".wasm"));
  expect(wasm, "the page loads its wasm bundle").toBeTruthy();
  expect(wasm!.encoding, "the wasm bundle is sent compressed").toMatch(/^(br|gzip)$/);
  expect(first.total).toBeLessThanOrEqual(FIRST_LOAD_LIMIT);

  await openAndSettle(page, "/", true);
  const again = log.take();
  console.log(`reload: ${again.total} B in ${again.transfers.length} requests\n${table(again.transfers)}`);
  const bundle = again.transfers.filter((t) => /\/pkg\//.test(t.url));
  expect(bundle.length, "the reloaded page still uses its bundle").toBeGreaterThan(0);
  for (const t of bundle) expect(t.cached, `${t.url} from the cache`).toBe(true);
  expect(again.total).toBeLessThanOrEqual(RELOAD_LIMIT);
  await context.close();
});

test("time to interactive on a Fast-3G-like link (logged, not asserted)", async ({ browser }) => {
  test.setTimeout(180_000);
  const context = await browser.newContext();
  const page = await context.newPage();
  const log = await networkLog(context, page);
  await log.cdp.send("Network.emulateNetworkConditions", FAST_3G);
  await markHydration(page);

  const hydratedAt = await openAndSettle(page, "/");
  const fcp = await page.evaluate(
    () => performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? NaN,
  );
  const first = log.take();
  // The button works: a question gets an answer from the bundled checkpoint.
  const chat = new ChatPage(page);
  await chat.setGreedy(4);
  await chat.ask("What is in the image?");
  await chat.waitDone(120_000);

  const result = {
    link: "1.6 Mbit/s down, 750 kbit/s up, 150 ms RTT",
    first_contentful_paint_ms: Math.round(fcp),
    hydrated_ms: Math.round(hydratedAt),
    first_load_bytes: first.total,
    requests: first.transfers.length,
  };
  console.log(`time to interactive: ${JSON.stringify(result)}\n${table(first.transfers)}`);
  await context.close();
});

/** Where the page's landmarks are (the header, the notice, the image panel, the composer). */
async function layout(page: Page) {
  return page.evaluate(() => {
    const boxes: Record<string, number[] | null> = {};
    for (const sel of ["header.topbar", "#model-select", "#bundled-notice", ".left", ".chat-panel", "#prompt", "#generate"]) {
      const r = document.querySelector(sel)?.getBoundingClientRect();
      boxes[sel] = r ? [r.x, r.y, r.width, r.height].map(Math.round) : null;
    }
    return boxes;
  });
}

test("the server-rendered page is useful without its bundle and does not move when it hydrates", async ({ browser }) => {
  const shots = path.join(__dirname, "..", "screenshots");
  const plain = await browser.newContext({ javaScriptEnabled: false });
  const before = await plain.newPage();
  await before.goto("/");
  await expect(before.locator("#app")).toHaveAttribute("data-hydrated", "false");
  // What a phone shows while the bundle is on its way: the checkpoint list and the notice.
  await expect(before.locator("#model-select option")).toHaveCount(4);
  await expect(before.locator("#bundled-notice")).toContainText("not meaningful");
  await expect(before.locator("#generate")).toBeVisible();
  const ssr = await layout(before);
  await before.screenshot({ path: path.join(shots, "before-hydration.png") });
  await plain.close();

  const context = await browser.newContext();
  const page = await context.newPage();
  await new ChatPage(page).open();
  const hydrated = await layout(page);
  await page.screenshot({ path: path.join(shots, "hydrated.png") });
  await context.close();
  expect(hydrated).toEqual(ssr);
});
