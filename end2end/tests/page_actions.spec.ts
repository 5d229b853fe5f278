import { expect, Page, test } from "@playwright/test";
import * as path from "path";
import { ChatPage, fixtureImage } from "./chat_page";

// Per-answer actions (copy, copy boxes, regenerate), edit-and-resend, and the phone layout.

const shots = path.join(__dirname, "..", "screenshots");

async function replay(page: Page, query: string, answer: string) {
  await page.evaluate(([q, a]) => (window as any).__cogvlmReplay(q, a), [query, answer]);
}

test("copy puts the answer (and its boxes as JSON) on the clipboard", async ({ page, context }) => {
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  const answer = "A cup[[100,200,300,400]] and a spoon[[500,600]].";
  await replay(page, "What is on the table?", answer);
  const actions = chat.turns().last().locator(".answer-actions");
  await actions.locator("[data-action=copy]").click();
  await expect(actions.locator(".copied")).toHaveText("Copied");
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(answer);
  await actions.locator("[data-action=copy-boxes]").click();
  const boxes = JSON.parse(await page.evaluate(() => navigator.clipboard.readText()));
  expect(boxes).toEqual([
    { label: "cup", boxes: [[100, 200, 300, 400]], points: [] },
    { label: "spoon", boxes: [], points: [[500, 600]] },
  ]);
});

test("edit-and-resend replaces the later turns; regenerate answers again", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await chat.useModel("cogvlm_tiny_224");
  await chat.setGreedy(3);
  await replay(page, "First question?", "First answer.");
  await replay(page, "Second question?", "Second answer.");
  await replay(page, "Third question?", "Third answer.");
  await expect(chat.turns()).toHaveCount(3);
  const second = chat.turns().nth(1);
  await second.locator("[data-action=edit]").click();
  await second.locator(".edit-question").fill("The second question, edited?");
  await second.locator("[data-action=send-edit]").click();
  const stats = await chat.waitDone();
  // The edited turn is the last: the third is gone, the first kept (and sent as history).
  await expect(chat.turns()).toHaveCount(2);
  await expect(chat.turns().first().locator(".answer")).toHaveText("First answer.");
  await expect(chat.turns().last().locator(".msg.user .bubble")).toHaveText("The second question, edited?");
  expect(stats).toContain("3 new");

  // Regenerate the first answer: it is asked again, alone.
  await chat.turns().first().locator("[data-action=regenerate]").click();
  await chat.waitDone();
  await expect(chat.turns()).toHaveCount(1);
  await expect(chat.turns().first().locator(".msg.user .bubble")).toHaveText("First question?");
  await expect(chat.lastStats()).toContainText("prompt tokens");
});

test("at 390×844 nothing is wider than the screen and every button is visible", async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await chat.useModel("cogvlm_tiny_490");
  await chat.uploadImage(fixtureImage("chelsea.png"));
  await replay(page, "Where is the cat?", "The cat[[100,200,600,900]] lies on a sofa.");
  await page.locator("#task-caption2box").click();
  for (const width of [360, 390, 430]) {
    await page.setViewportSize({ width, height: 844 });
    const report = await page.evaluate(() => {
      const vw = document.documentElement.clientWidth;
      const wide: string[] = [];
      for (const el of Array.from(document.querySelectorAll<HTMLElement>("body *"))) {
        const r = el.getBoundingClientRect();
        if (r.width === 0 || el.closest("#conversations")) continue;
        if (r.right > vw + 0.5 || r.left < -0.5) wide.push(`${el.tagName}#${el.id}.${el.className} ${r.left}-${r.right}`);
      }
      return { vw, scroll: document.documentElement.scrollWidth, wide };
    });
    expect(report.wide, `wider than ${width} px`).toEqual([]);
    expect(report.scroll).toBeLessThanOrEqual(report.vw);
    for (const button of await page.locator("button:visible").all()) {
      // The closed conversations drawer waits off-screen, by design.
      if (await button.evaluate((b) => !!b.closest("#conversations"))) continue;
      const box = await button.boundingBox();
      expect(box, await button.textContent() ?? "").not.toBeNull();
      expect(box!.x).toBeGreaterThanOrEqual(0);
      expect(box!.x + box!.width).toBeLessThanOrEqual(width + 0.5);
      expect(box!.width).toBeGreaterThan(10);
    }
  }
  // Image above the chat, not beside it.
  const image = await page.locator("section.image-panel").boundingBox();
  const chatBox = await page.locator("section.chat-panel").boundingBox();
  expect(image!.y + image!.height).toBeLessThanOrEqual(chatBox!.y);
  // The action row wraps onto the screen: all four visible.
  for (const id of ["#generate", "#stop", "#retry", "#clear"]) await expect(page.locator(id)).toBeVisible();
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: path.join(shots, "phone.png"), fullPage: true });
});

test("a region can be drawn by touch on a phone", async ({ browser }) => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true });
  const page = await context.newPage();
  const chat = new ChatPage(page);
  await chat.open();
  await chat.uploadImage(fixtureImage("coffee.png"));
  const canvas = page.locator("#overlay");
  await canvas.scrollIntoViewIfNeeded();
  const box = (await canvas.boundingBox())!;
  // A touch drag from 20 %/20 % to 60 %/70 % of the image, as touch pointer events.
  const cdp = await context.newCDPSession(page);
  const at = (fx: number, fy: number) => [{ x: box.x + fx * box.width, y: box.y + fy * box.height }];
  await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: at(0.2, 0.2) });
  for (let i = 1; i <= 5; i++) {
    await cdp.send("Input.dispatchTouchEvent", { type: "touchMove", touchPoints: at(0.2 + 0.08 * i, 0.2 + 0.1 * i) });
  }
  await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
  await expect(page.locator("#regions li")).toHaveCount(1);
  await expect(chat.prompt()).toHaveValue(/\[\[(19\d|20\d),(19\d|20\d),(59\d|60\d),(69\d|70\d)\]\]/);
  await context.close();
});
