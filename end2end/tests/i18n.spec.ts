import { expect, Page, test } from "@playwright/test";
import * as path from "path";
import { ChatPage, fixtureImage } from "./chat_page";

// English and Simplified Chinese: the page follows the browser's language and has a switch.

const shots = path.join(__dirname, "..", "screenshots");

/** Words that are not UI strings to translate: names, formats, keys, units, code, and the English prompts
 * and example inputs the models were trained on. */
const ALLOWED = [
  // Example inputs of the tasks, in the models' language.
  /the red cup|Search for CogVLM/g,
  /cogvlm2?_tiny_\d+|cogagent_tiny|cogvlm-chat-hf|cogagent-chat-hf|cogvlm-grounding-generalist-hf/g,
  /\b(CogVLM2|CogVLM|CogAgent|THUDM|Hugging Face|README|Markdown|JSON|PNG|GUI|GPU|CPU|cpu|cuda|English)\b/g,
  /\b(Ctrl\+V|Shift\+Enter|Enter|Esc|Top [kp]|tok\/s|ms|px|KB|MB|s)\b/g,
  /--[a-z-]+|config\.json|\*\.safetensors|chelsea\.png|coffee\.png/g,
  // Prompt templates keep their English (the task templates, the version names' formats).
  /\b(chat_old|chat|base|vqa)\b|Question:?|Short answer:?|Answer:/g,
  // Example inputs of the tasks, in the models' language.
  /the red cup|Search for CogVLM/g,
];

async function englishLeft(page: Page): Promise<string[]> {
  const texts: string[] = await page.evaluate(() => {
    const out: string[] = [];
    const skip = (el: Element | null) =>
      !!el?.closest("code, pre, .bubble, #task-template, #prompt, script, style, .gchip");
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!el || skip(el)) continue;
      const r = el.getBoundingClientRect();
      const hiddenDrawer = !!el.closest("#conversations");
      if ((r.width === 0 || r.height === 0) && !hiddenDrawer) continue;
      if (n.textContent?.trim()) out.push(n.textContent.trim());
    }
    for (const el of Array.from(document.querySelectorAll("[placeholder], [title], [aria-label]"))) {
      // The device plan is the server's report (as printed in its terminal), not a UI string.
      if (skip(el) || el.matches(".device")) continue;
      for (const a of ["placeholder", "title", "aria-label"]) {
        const v = el.getAttribute(a);
        if (v) out.push(v);
      }
    }
    return out;
  });
  const left: string[] = [];
  for (const t of texts) {
    let rest = t;
    for (const re of ALLOWED) rest = rest.replace(re, " ");
    if (/[A-Za-z]{2,}/.test(rest)) left.push(t);
  }
  return [...new Set(left)];
}

test.describe("in Chinese", () => {
  test.use({ locale: "zh-CN" });

  test("a browser in Chinese gets the Chinese page, with no English UI string left", async ({ page }) => {
    const chat = new ChatPage(page);
    await chat.open("/?test-hooks");
    await expect(page.locator("html")).toHaveAttribute("lang", "zh-CN");
    await expect(chat.generate()).toHaveText("生成");
    await chat.uploadImage(fixtureImage("chelsea.png"));
    await page.evaluate(() => (window as any).__cogvlmReplay("猫在哪里？", "The cat[[100,200,600,900]] sleeps."));
    await page.locator("#temperature").fill("0");
    await expect(page.locator("#temperature-value")).toHaveText("0（贪心）");
    await page.locator("details.advanced summary").click();
    await page.locator("#max-new-tokens").fill("2");
    await chat.ask("这是什么？");
    await chat.waitDone();
    await page.locator("#task-agent").click();
    const left = await englishLeft(page);
    expect(left, "English UI strings on the Chinese page").toEqual([]);
    await page.screenshot({ path: path.join(shots, "chinese.png"), fullPage: true });
    // The drawer too.
    await page.locator("#conversations-toggle").click();
    await expect(page.locator("#new-conversation")).toHaveText("新建");
    expect(await englishLeft(page)).toEqual([]);
  });
});

test("the switch changes the language at once and the next visit keeps it", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open();
  await expect(chat.generate()).toHaveText("Generate");
  await page.locator("#lang-switch").click();
  await expect(chat.generate()).toHaveText("生成");
  await expect(page.locator("html")).toHaveAttribute("lang", "zh-CN");
  // Task labels are translated, their prompts are not.
  await page.locator("#task-caption_with_box").click();
  await expect(page.locator("#task-caption_with_box")).toHaveText("带框描述");
  await expect(chat.prompt()).toHaveValue(/[A-Za-z]/);
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await expect(chat.generate()).toHaveText("生成");
  await page.locator("#lang-switch").click();
  await expect(chat.generate()).toHaveText("Generate");
});
