import { expect, test } from "@playwright/test";
import * as fs from "fs";
import * as path from "path";
import { ChatPage, RefCase } from "./chat_page";

// CogVLM2 on the page: the tiny CogVLM2 fixture checkpoint (random weights, the real Llama-3 tokenizer,
// 224 px tower with the 2×2 convolution, grouped-query attention). The answers to expect are what THUDM's
// CogVLM2 code produced for the same questions (server/fixtures/cogvlm2/cases.json, 12 greedy tokens).

const fixtures = path.join(__dirname, "..", "..", "server", "fixtures");
const cases: RefCase[] = JSON.parse(fs.readFileSync(path.join(fixtures, "cogvlm2", "cases.json"), "utf8")).cases;

function ref(id: string): RefCase {
  const c = cases.find((c) => c.id === id);
  if (!c) throw new Error(`no case ${id} in cogvlm2/cases.json`);
  return c;
}

async function askAndCheck(chat: ChatPage, c: RefCase) {
  await chat.uploadImage(path.join(fixtures, "images", `${(c as any).image}.png`));
  await chat.setGreedy(c.generated_ids.length);
  const tokens = chat.recordTokenFrames();
  await chat.ask(c.query);
  await expect(chat.turns().last().locator(".msg.user")).toContainText(c.query);
  const stats = await chat.waitDone();
  expect(stats).toContain(`${c.generated_ids.length} new`);
  // Streamed a piece at a time, and the pieces make the reference's text.
  expect(tokens.length).toBeGreaterThanOrEqual(4);
  expect(tokens.join("")).toBe(c.generated_text);
  await expect(chat.lastAnswer()).not.toBeEmpty();
}

test("a CogVLM2 checkpoint is listed with its family and answers in English and Chinese", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open();
  const options = await chat.modelSelect().locator("option").allTextContents();
  expect(options).toContainEqual(expect.stringContaining("cogvlm2_tiny_224 — CogVLM2 · 224 px"));
  await chat.useModel("cogvlm2_tiny_224");
  // THUDM's CogVLM2 demo asks with the `chat` template ("Question: … Answer:").
  await expect(page.locator("#version-select")).toHaveValue("chat");

  await askAndCheck(chat, ref("c2_224_chat_chelsea"));
  await chat.clear().click();
  await expect(chat.turns()).toHaveCount(0);
  await askAndCheck(chat, ref("c2_224_chat_chinese_astronaut"));
});
