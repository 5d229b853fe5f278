import { expect, test } from "@playwright/test";
import * as fs from "fs";
import { ChatPage, fixtureImage, openId, replay, saved, storedQuestions } from "./chat_page";

// The browser's store under rude conditions: a full disk, a transaction aborted after its requests succeeded,
// data of the previous version (one store, no summaries) with a record that cannot be read.

test("a save that fails is retried, then shown; it counts only once committed; the next good save clears it", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await replay(page, "First?", "One.");
  await saved(page, "First?");
  const id = await openId(page);
  await expect.poll(() => storedQuestions(page, id)).toEqual(["First?"]);

  // The disk is full: every write throws QuotaExceededError. The page tries four times, then says so.
  await page.evaluate(() => {
    const w = window as any;
    w.__put = IDBObjectStore.prototype.put;
    w.__puts = 0;
    IDBObjectStore.prototype.put = function () {
      w.__puts++;
      throw new DOMException("The disk is full.", "QuotaExceededError");
    };
  });
  await replay(page, "Second?", "Two.");
  await expect(page.locator("#store-error")).toContainText("QuotaExceededError: The disk is full.");
  await expect(page.locator("#store-error")).toContainText("even after retrying");
  expect(await page.evaluate(() => (window as any).__puts)).toBe(4);

  // Writes whose requests succeed but whose transaction is then aborted: not saved either, and said so. (The
  // page asks for the commit at once; commit() does nothing here, as in a browser that commits by itself.)
  await page.evaluate(() => {
    const w = window as any;
    w.__commit = IDBTransaction.prototype.commit;
    IDBTransaction.prototype.commit = function () {};
    IDBObjectStore.prototype.put = function (...args: unknown[]) {
      const req = w.__put.apply(this, args);
      req.addEventListener("success", () => this.transaction.abort());
      return req;
    };
  });
  await replay(page, "Third?", "Three.");
  await expect(page.locator("#store-error")).toContainText("aborted");
  expect(await storedQuestions(page, id)).toEqual(["First?"]);

  // Space again: the next save writes everything and the error goes.
  await page.evaluate(() => {
    IDBObjectStore.prototype.put = (window as any).__put;
    IDBTransaction.prototype.commit = (window as any).__commit;
  });
  await replay(page, "Fourth?", "Four.");
  await expect(page.locator("#store-error")).toHaveCount(0);
  const all = ["First?", "Second?", "Third?", "Fourth?"];
  await expect.poll(() => storedQuestions(page, id)).toEqual(all);
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await expect(chat.turns().locator(".msg.user .bubble")).toHaveText(all);
});

test("version 1 data is upgraded: listed from summaries, an unreadable record named, an image read only when opened", async ({ page }) => {
  const image = fs.readFileSync(fixtureImage("coffee.png")).toString("base64");
  const record = (id: string, title: string, updated: number, withImage: boolean) =>
    JSON.stringify({
      format: 1,
      id,
      title,
      created_ms: 1,
      updated_ms: updated,
      image: withImage ? { name: "coffee.png", base64: image } : null,
      turns: [{ query: `${title}?`, answer: `The ${title} answer.`, status: "Stopped" }],
    });
  const v1: [string, string][] = [
    ["c-old-1", record("c-old-1", "Coffee", 3, true)],
    ["c-old-2", record("c-old-2", "Tea", 2, false)],
    ["c-broken", '{"id": "c-broken", "title": "Broken", "turns": [oops'],
  ];
  // The previous version's database, as it left it, with "Coffee" open.
  await page.goto("/favicon.svg");
  await page.evaluate(
    (records) =>
      new Promise<void>((resolve, reject) => {
        const req = indexedDB.open("cogvlm", 1);
        req.onupgradeneeded = () => {
          const store = req.result.createObjectStore("conversations");
          for (const [key, value] of records) store.put(value, key);
        };
        req.onerror = () => reject(req.error);
        req.onsuccess = () => {
          req.result.close();
          localStorage.setItem("cogvlm.open", "c-old-1");
          resolve();
        };
      }),
    v1,
  );
  // What the page reads of IndexedDB, by store and method.
  await page.addInitScript(() => {
    const w = window as any;
    w.__reads = [];
    const proto = IDBObjectStore.prototype as any;
    for (const method of ["get", "getAll", "getAllKeys", "openCursor"]) {
      const original = proto[method];
      proto[method] = function (...args: unknown[]) {
        w.__reads.push(`${this.name}.${method}`);
        return original.apply(this, args);
      };
    }
  });

  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await expect(chat.lastAnswer()).toHaveText("The Coffee answer.");
  await expect(page.locator("#preview")).toBeVisible();
  await expect(page.locator(".note")).toContainText("Could not read the stored conversation “c-broken”");
  const list = page.locator("#conversation-list .conv");
  await expect(list.locator(".conv-title")).toHaveText(["Coffee", "Tea", "⚠ c-broken"]);

  // Once upgraded, opening the page reads the summaries and one record: the open one.
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await expect(chat.lastAnswer()).toHaveText("The Coffee answer.");
  await expect(page.locator(".note")).toContainText("c-broken");
  const reads: string[] = await page.evaluate(() => (window as any).__reads);
  expect(reads.filter((r) => r.startsWith("conversations."))).toEqual(["conversations.get"]);
  expect(reads).toContain("summaries.getAll");

  // The others open as before; the unreadable one says why, and can be deleted.
  await page.locator("#conversations-toggle").click();
  await list.filter({ hasText: "Tea" }).locator(".conv-title").click();
  await expect(chat.lastAnswer()).toHaveText("The Tea answer.");
  await page.locator("#conversations-toggle").click();
  await list.filter({ hasText: "c-broken" }).locator(".conv-title").click();
  await expect(page.locator(".note")).toContainText("c-broken");
  await expect(chat.lastAnswer()).toHaveText("The Tea answer.");
  await page.locator("#conversations-toggle").click();
  await list.filter({ hasText: "c-broken" }).locator("[data-action=delete]").click();
  await expect(list).toHaveCount(2);
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await expect(page.locator(".note")).toHaveCount(0);
});
