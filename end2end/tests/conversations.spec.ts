import { expect, test } from "@playwright/test";
import * as fs from "fs";
import { ChatPage, fixtureImage, refCase, replay, saved } from "./chat_page";

// Conversations are kept in the browser's IndexedDB: a reload restores the open one, the side list
// switches, renames, deletes and exports them, and nothing of them is sent anywhere.

test("a reload restores the open conversation (text, image, boxes) and a follow-up continues", async ({ page }) => {
  const ref = refCase("vlm490_chat_history_chelsea");
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await chat.useModel(ref.model);
  await chat.uploadImage(fixtureImage("chelsea.png"));
  await chat.setGreedy(4);
  await chat.ask(ref.history[0][0]);
  await chat.waitDone();
  const firstAnswer = await chat.lastAnswer().textContent();
  // A recorded answer with a box: it must come back drawn.
  await replay(page, "Where is the cat?", "The cat[[100,200,600,900]] sleeps.");
  await saved(page, ref.history[0][0].slice(0, 40));
  const imageBefore = await page.locator("#preview").evaluate((img: HTMLImageElement) => img.naturalWidth);

  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await expect(chat.turns()).toHaveCount(2);
  await expect(chat.turns().first().locator(".msg.user .bubble")).toHaveText(ref.history[0][0]);
  await expect(chat.turns().first().locator(".answer")).toHaveText(firstAnswer ?? "");
  await expect(chat.turns().first().locator(".stats")).toContainText("prompt tokens");
  await expect(chat.turns().last().locator(".answer .gchip")).toHaveCount(1);
  await expect(page.locator("#preview")).toBeVisible();
  await page.waitForFunction(() => {
    const img = document.querySelector<HTMLImageElement>("#preview");
    return !!img && img.complete && img.naturalWidth > 0;
  });
  expect(await page.locator("#preview").evaluate((img: HTMLImageElement) => img.naturalWidth)).toBe(imageBefore);
  // The settings came back too.
  await expect(page.locator("#temperature-value")).toHaveText("0 (greedy)");

  // The follow-up goes out with the restored history and continues the server's cache.
  await chat.ask(ref.history[1][0]);
  const stats = await chat.waitDone();
  await expect(chat.turns()).toHaveCount(3);
  expect(stats).toMatch(/\((\d+) cached\)/);
  const cached = Number(/\((\d+) cached\)/.exec(stats)?.[1] ?? "0");
  expect(cached).toBeGreaterThan(ref.first_text_index);
});

test("three conversations: switch, rename, delete, export (the export parses back)", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  const list = page.locator("#conversation-list .conv");
  for (const [i, name] of ["first", "second", "third"].entries()) {
    if (i > 0) {
      // The drawer closes itself after New.
      await page.locator("#conversations-toggle").click();
      await page.locator("#new-conversation").click();
    }
    await expect(chat.turns()).toHaveCount(0);
    if (i === 0) await chat.uploadImage(fixtureImage("coffee.png"));
    await replay(page, `The ${name} question`, `The ${name} answer [[010,020,300,400]].`);
    await saved(page, `The ${name} question`);
  }
  await page.locator("#conversations-toggle").click();
  await expect(list).toHaveCount(3);
  // Newest first.
  await expect(list.locator(".conv-title")).toHaveText(["The third question", "The second question", "The first question"]);

  // Switch to the first: its turns and image come back.
  await list.filter({ hasText: "The first question" }).locator(".conv-title").click();
  await expect(chat.turns()).toHaveCount(1);
  await expect(chat.lastAnswer()).toContainText("The first answer");
  await expect(page.locator("#preview")).toBeVisible();
  // And to the second, which has no image.
  await page.locator("#conversations-toggle").click();
  await list.filter({ hasText: "The second question" }).locator(".conv-title").click();
  await expect(chat.lastAnswer()).toContainText("The second answer");
  await expect(page.locator("#preview")).toBeHidden();

  // Rename the first (not the open one) and the open one.
  await page.locator("#conversations-toggle").click();
  // By id: while it is renamed its title is an input, no longer text to filter on.
  const firstId = await list.filter({ hasText: "The first question" }).getAttribute("data-id");
  const first = page.locator(`#conversation-list .conv[data-id="${firstId}"]`);
  await first.locator("[data-action=rename]").click();
  await first.locator(".conv-rename").fill("Coffee table");
  await first.locator(".conv-rename").press("Enter");
  await expect(list.locator(".conv-title")).toContainText(["Coffee table"]);
  const open = page.locator("#conversation-list .conv.open");
  await open.locator("[data-action=rename]").click();
  await open.locator(".conv-rename").fill("Renamed second");
  await open.locator(".conv-rename").press("Enter");
  await expect(open.locator(".conv-title")).toHaveText("Renamed second");

  // Export the renamed first as JSON and Markdown: the JSON reads back with its image and turns.
  const coffee = list.filter({ hasText: "Coffee table" });
  const [json] = await Promise.all([page.waitForEvent("download"), coffee.locator("[data-action=export-json]").click()]);
  expect(json.suggestedFilename()).toBe("Coffee-table.json");
  const saved1 = JSON.parse(fs.readFileSync(await json.path(), "utf8"));
  expect(saved1.title).toBe("Coffee table");
  expect(saved1.turns).toHaveLength(1);
  expect(saved1.turns[0].query).toBe("The first question");
  expect(saved1.turns[0].answer).toBe("The first answer [[010,020,300,400]].");
  expect(saved1.image.name).toBe("coffee.png");
  expect(Buffer.from(saved1.image.base64, "base64").equals(fs.readFileSync(fixtureImage("coffee.png")))).toBeTruthy();
  const [md] = await Promise.all([page.waitForEvent("download"), coffee.locator("[data-action=export-md]").click()]);
  const text = fs.readFileSync(await md.path(), "utf8");
  expect(text).toContain("# Coffee table");
  expect(text).toContain("![coffee.png](data:image/png;base64,");
  expect(text).toContain("**You:** The first question");
  expect(text).toContain('"boxes":[[10,20,300,400]]');

  // Delete the third; the list keeps two, and a reload agrees.
  await list.filter({ hasText: "The third question" }).locator("[data-action=delete]").click();
  await expect(list).toHaveCount(2);
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await expect(chat.lastAnswer()).toContainText("The second answer");
  await page.locator("#conversations-toggle").click();
  await expect(list.locator(".conv-title")).toHaveText(["Renamed second", "Coffee table"]);
});

test("nothing persisted leaves the browser", async ({ page }) => {
  const marker = "Zebra-7d1f-marker";
  const sent: string[] = [];
  page.on("request", (r) => sent.push(`${r.method()} ${r.url()} ${r.postData() ?? ""}`));
  page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => sent.push(`ws ${ws.url()} ${payload.toString()}`)));
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await replay(page, "What is here?", "Nothing much.");
  await page.locator("#conversations-toggle").click();
  const open = page.locator("#conversation-list .conv.open");
  await open.locator("[data-action=rename]").click();
  await open.locator(".conv-rename").fill(marker);
  await open.locator(".conv-rename").press("Enter");
  await expect(open.locator(".conv-title")).toHaveText(marker);
  await Promise.all([page.waitForEvent("download"), open.locator("[data-action=export-json]").click()]);
  await page.locator("#new-conversation").click();
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await page.locator("#conversations-toggle").click();
  await page.locator("#conversation-list .conv-title", { hasText: marker }).click();
  await expect(chat.lastAnswer()).toHaveText("Nothing much.");
  // Every request went to this server, and none carried the stored conversation.
  const origin = new URL(page.url()).origin.replace("http", "");
  expect(sent.length).toBeGreaterThan(0);
  for (const s of sent) {
    expect(s, s.slice(0, 200)).not.toContain(marker);
    expect(s.includes(origin) || s.startsWith("GET data:") || s.startsWith("GET blob:"), s.slice(0, 200)).toBeTruthy();
  }
});

test("a conversation longer than the context answers with the 'earlier turns left out' note", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await chat.useModel("cogvlm_tiny_490");
  await chat.uploadImage(fixtureImage("chelsea.png"));
  await chat.setGreedy(4);
  // Five recorded turns of ~150 words: with the 1227 image positions far more than 2048.
  const long = Array.from({ length: 150 }, (_, i) => `word${i}`).join(" ");
  for (let i = 0; i < 5; i++) await replay(page, `Question ${i}?`, long);
  await chat.ask("And now?");
  const stats = await chat.waitDone();
  expect(stats).toContain("prompt tokens");
  const note = chat.turns().last().locator(".context-note");
  await expect(note).toContainText("earlier turns left out of the prompt to fit the context");
  const dropped = Number(/^(\d+)/.exec((await note.textContent()) ?? "")?.[1] ?? "0");
  expect(dropped).toBeGreaterThan(0);
  expect(dropped).toBeLessThan(5);
  const prompt = Number(/(\d+) prompt tokens/.exec(stats)?.[1] ?? "0");
  expect(prompt).toBeGreaterThan(1227);
  expect(prompt + 4).toBeLessThanOrEqual(2048);
  // The meter shows the last answer's share of the context.
  const meter = page.locator("#context-meter");
  await expect(meter).toBeVisible();
  await expect(meter.locator(".meter-figures")).toHaveText(new RegExp(`^\\d+ / 2048$`));
  expect(Number(await meter.locator("meter").getAttribute("value"))).toBeGreaterThan(prompt);
});
