import { expect, Page, test } from "@playwright/test";
import * as fs from "fs";
import * as path from "path";
import { canvasPixel, canvasRun, ChatPage, fixtureImage, isColour, PALETTE } from "./chat_page";

// Grounding and agent workflows. The bundled checkpoints answer random text, so answers with
// boxes come from recorded strings, fed by the page's test hook (`/?test-hooks`,
// `window.__cogvlmReplay`) through the same streaming and rendering code as live answers.

const templates = JSON.parse(
  fs.readFileSync(path.join(__dirname, "..", "..", "app", "src", "templates.json"), "utf8"),
) as Record<"agent" | "caption2box" | "box2caption" | "caption_with_box", string[]>;

const shots = path.join(__dirname, "..", "screenshots");

async function replay(page: Page, query: string, answer: string) {
  await page.evaluate(([q, a]) => (window as any).__cogvlmReplay(q, a), [query, answer]);
}

/** The model's thousandths for a displayed offset (spec §4.5): round, clamp to 0–999. */
const thousandths = (px: number, side: number) => Math.min(999, Math.max(0, Math.round((px / side) * 1000)));
const pad = (n: number) => String(n).padStart(3, "0");

test("each task fills the prompt from its templates and suggests a checkpoint", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open();
  await chat.useModel("cogvlm_tiny_490");

  // Describe with boxes: a random caption_with_box template, then a chosen one.
  await page.locator("#task-caption_with_box").click();
  expect(templates.caption_with_box).toContain(await chat.prompt().inputValue());
  await page.locator("#task-template").selectOption("1");
  await expect(chat.prompt()).toHaveValue(templates.caption_with_box[1]);
  // Grounding tasks name the grounding checkpoint, which the bundled models folder lacks.
  await expect(page.locator("#task-suggest")).toContainText("cogvlm-grounding-generalist-hf");
  await expect(page.locator("#task-suggest")).toContainText("not in the models folder");

  // Find an object: <expr> from the user's words.
  await page.locator("#task-caption2box").click();
  await page.locator("#task-text").fill("the red cup");
  const found = await chat.prompt().inputValue();
  expect(templates.caption2box.map((t) => t.replace("<expr>", "the red cup"))).toContain(found);
  await page.locator("#task-template").selectOption("2");
  await expect(chat.prompt()).toHaveValue(templates.caption2box[2].replace("<expr>", "the red cup"));
  await page.locator("#task-another").click();
  await expect(page.locator("#task-template")).toHaveValue("random");
  expect(templates.caption2box.map((t) => t.replace("<expr>", "the red cup"))).toContain(
    await chat.prompt().inputValue(),
  );

  // Describe a region: the placeholder stays until a region is drawn (see the next test).
  await page.locator("#task-box2caption").click();
  await page.locator("#task-template").selectOption("0");
  await expect(chat.prompt()).toHaveValue(templates.box2caption[0]);
  expect(templates.box2caption[0]).toContain("<objs>");

  // GUI agent: the task in double quotes, "(with grounding)" on request.
  await page.locator("#task-agent").click();
  await page.locator("#task-text").fill("Search for CogVLM");
  const agentPrompt = await chat.prompt().inputValue();
  expect(templates.agent.map((t) => t.replace("<TASK>", '"Search for CogVLM"') + "(with grounding)")).toContain(
    agentPrompt,
  );
  await page.locator("#task-template").selectOption("2");
  await expect(chat.prompt()).toHaveValue(
    templates.agent[2].replace("<TASK>", '"Search for CogVLM"') + "(with grounding)",
  );
  await page.locator("#task-grounding").uncheck();
  await expect(chat.prompt()).toHaveValue(templates.agent[2].replace("<TASK>", '"Search for CogVLM"'));
  // The agent suits CogAgent: offered, never switched to behind the user's back.
  await expect(page.locator("#task-suggest")).toContainText("cogagent-chat-hf");
  await expect(page.locator("#task-switch")).toHaveText("Switch to cogagent_tiny");
  await expect(chat.modelSelect()).toHaveValue("cogvlm_tiny_490");

  // Chat keeps the text as it is.
  await page.locator("#task-chat").click();
  await expect(chat.prompt()).toHaveValue(templates.agent[2].replace("<TASK>", '"Search for CogVLM"'));
  await expect(page.locator("#task-template")).toHaveCount(0);
});

test("drawing regions on a non-square image writes their thousandths into the prompt", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open();
  await chat.uploadImage(fixtureImage("coffee.png")); // 600 × 400
  const r = await page.locator("#overlay").evaluate((c) => {
    const b = c.getBoundingClientRect();
    return { x: b.left, y: b.top, w: b.width, h: b.height };
  });
  expect(Math.abs(r.w / r.h - 1.5)).toBeLessThan(0.01);

  const drag = async (x0: number, y0: number, x1: number, y1: number) => {
    await page.mouse.move(x0, y0);
    await page.mouse.down();
    await page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, { steps: 3 });
    await page.mouse.move(x1, y1, { steps: 3 });
    await page.mouse.up();
  };
  const expectBox = (x0: number, y0: number, x1: number, y1: number) =>
    `[[${pad(thousandths(Math.max(0, x0 - r.x), r.w))},${pad(thousandths(Math.max(0, y0 - r.y), r.h))},` +
    `${pad(thousandths(Math.min(r.w, x1 - r.x), r.w))},${pad(thousandths(Math.min(r.h, y1 - r.y), r.h))}]]`;

  // A region dragged from bottom-right to top-left inside the image.
  const a = [Math.round(r.x + 0.55 * r.w), Math.round(r.y + 0.8 * r.h), Math.round(r.x + 0.1 * r.w), Math.round(r.y + 0.25 * r.h)];
  await chat.prompt().fill("What is in");
  await drag(a[0], a[1], a[2], a[3]);
  const boxA = expectBox(a[2], a[3], a[0], a[1]);
  await expect(chat.prompt()).toHaveValue(`What is in ${boxA}`);
  expect(boxA).toMatch(/^\[\[\d{3},\d{3},\d{3},\d{3}\]\]$/);

  // From the top-left corner to past the bottom-right one: 000 and 999 at the edges.
  const x0 = Math.ceil(r.x);
  const y0 = Math.ceil(r.y);
  await drag(x0, y0, r.x + r.w + 40, r.y + r.h + 40);
  const boxB = `[[${pad(thousandths(x0 - r.x, r.w))},${pad(thousandths(y0 - r.y, r.h))},999,999]]`;
  expect(boxB.startsWith("[[00")).toBeTruthy();
  await expect(chat.prompt()).toHaveValue(`What is in ${boxA} ${boxB}`);

  // Both listed under the image; the draft's boxes are drawn dashed in their colours.
  const regions = page.locator("#regions li");
  await expect(regions).toHaveCount(2);
  await expect(regions.nth(0)).toContainText(boxA);
  // The bottom edge of region 1 (no label tag there), from its written thousandths.
  const bottomA = Number(boxA.slice(2, -2).split(",")[3]) / 1000;
  const bottom = await canvasRun(page, 0.15, bottomA, "x", 30);
  expect(bottom.some((p) => isColour(p, PALETTE[0])), `region 1 drawn ${JSON.stringify(bottom)}`).toBeTruthy();
  expect(bottom.some((p) => p[3] === 0), "region 1 dashed").toBeTruthy();
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(shots, "regions.png") });

  // A click without a drag adds nothing; a region can be removed.
  await page.mouse.click(r.x + 0.7 * r.w, r.y + 0.5 * r.h);
  await expect(regions).toHaveCount(2);
  await regions.nth(0).locator("button").click();
  await expect(chat.prompt()).toHaveValue(`What is in ${boxB}`);
  await expect(regions).toHaveCount(1);

  // "Describe a region" puts every region into <objs>.
  await page.locator("#task-box2caption").click();
  await page.locator("#task-template").selectOption("0");
  await expect(chat.prompt()).toHaveValue(templates.box2caption[0].replace("<objs>", boxB));
  await drag(a[0], a[1], a[2], a[3]);
  await expect(chat.prompt()).toHaveValue(templates.box2caption[0].replace("<objs>", `${boxB} and ${boxA}`));
  await regions.nth(0).locator("button").click();
  await expect(chat.prompt()).toHaveValue(templates.box2caption[0].replace("<objs>", boxA));
});

test("an answer with two boxes: labelled boxes, chips, hover both ways, PNG download", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await chat.uploadImage(fixtureImage("chelsea.png")); // 451 × 300
  await replay(
    page,
    "Where are the cat and the remote?",
    "The cat[[100,200,450,900]] lies next to a remote[[600,650,900,950]].",
  );
  const chips = chat.lastAnswer().locator(".gchip");
  await expect(chips).toHaveCount(2);
  await expect(chips.nth(0)).toHaveAttribute("title", "cat");
  await expect(chips.nth(1)).toHaveAttribute("title", "remote");
  await expect(chat.lastStats()).toContainText("recorded answer");

  // Solid edges in the palette's first two colours, each with its label tag above the corner.
  expect(isColour(await canvasPixel(page, 0.1, 0.5), PALETTE[0])).toBeTruthy();
  expect(isColour(await canvasPixel(page, 0.275, 0.9), PALETTE[0])).toBeTruthy();
  expect(isColour(await canvasPixel(page, 0.6, 0.8), PALETTE[1])).toBeTruthy();
  // Label tags: 2 px right of the box's left edge (tag padding, no glyph), 8 px above its top.
  const size = await page.locator("#overlay").evaluate((c) => [c.clientWidth, c.clientHeight]);
  const tag = (fx: number, fy: number) => canvasPixel(page, fx + 2 / size[0], fy - 8 / size[1]);
  expect(isColour(await tag(0.1, 0.2), PALETTE[0]), "tag 1").toBeTruthy();
  expect(isColour(await tag(0.6, 0.65), PALETTE[1]), "tag 2").toBeTruthy();
  expect((await canvasPixel(page, 0.3, 0.5))[3], "inside box 1 is clear").toBe(0);

  // Hovering chip 1 fills box 1 and dims box 2.
  await chips.nth(0).hover();
  await expect.poll(async () => (await canvasPixel(page, 0.3, 0.5))[3]).toBeGreaterThan(0);
  const fill = await canvasPixel(page, 0.3, 0.5);
  expect(fill[0] - fill[2], `box 1 filled orange ${fill}`).toBeGreaterThan(100);
  const dimmed = await canvasPixel(page, 0.6, 0.8);
  expect(dimmed[3]).toBeGreaterThan(40);
  expect(dimmed[3]).toBeLessThan(140);
  expect((await canvasPixel(page, 0.75, 0.8))[3], "box 2 not filled").toBe(0);

  // Hovering box 2 on the image lights up chip 2 only.
  const r = await page.locator("#overlay").boundingBox();
  await page.mouse.move(r!.x + 0.75 * r!.width, r!.y + 0.8 * r!.height);
  await expect(chips.nth(1)).toHaveCSS("outline-style", "solid");
  await expect(chips.nth(0)).toHaveCSS("outline-style", "none");
  await expect.poll(async () => (await canvasPixel(page, 0.75, 0.8))[3]).toBeGreaterThan(0);
  await page.mouse.move(r!.x + r!.width + 100, r!.y);
  await expect(chips.nth(1)).toHaveCSS("outline-style", "none");
  await page.screenshot({ path: path.join(shots, "grounding.png") });

  // The annotated PNG: the image at full size with the boxes painted on it.
  const [download] = await Promise.all([page.waitForEvent("download"), page.locator("#download-annotated").click()]);
  expect(download.suggestedFilename()).toBe("chelsea-annotated.png");
  const png = fs.readFileSync(await download.path());
  expect(png.subarray(1, 4).toString()).toBe("PNG");
  expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([451, 300]);
  const pixels = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width;
    c.height = img.height;
    const ctx = c.getContext("2d")!;
    ctx.drawImage(img, 0, 0);
    const at = (x: number, y: number) => Array.from(ctx.getImageData(x, y, 1, 1).data);
    return { edge1: at(45, 150), edge2: at(270, 240) };
  }, png.toString("base64"));
  expect(isColour(pixels.edge1, PALETTE[0]), `box 1 in the PNG ${pixels.edge1}`).toBeTruthy();
  expect(isColour(pixels.edge2, PALETTE[1]), `box 2 in the PNG ${pixels.edge2}`).toBeTruthy();
});

// THUDM's README example of a CogAgent answer "(with grounding)".
const AGENT_ANSWER =
  "Plan: 1. Type 'CogVLM' into the Google search bar. 2. Review the search results that appear. " +
  "3. Click on a relevant result to read more about CogVLM or access further resources.\n" +
  "Next Action: Move the cursor to the Google search bar, and type 'CogVLM' into it.\n" +
  "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]";

test("a recorded CogAgent answer renders as an agent card with its box on the screenshot", async ({ page }) => {
  const chat = new ChatPage(page);
  await chat.open("/?test-hooks");
  await chat.uploadImage(fixtureImage("coffee.png"));
  await page.locator("#task-agent").click();
  await page.locator("#task-text").fill("Search for CogVLM");
  const query = await chat.prompt().inputValue();
  await replay(page, query, AGENT_ANSWER);

  const card = chat.lastAnswer().locator(".agent-card");
  await expect(card.locator(".agent-plan li")).toHaveText([
    "Type 'CogVLM' into the Google search bar.",
    "Review the search results that appear.",
    "Click on a relevant result to read more about CogVLM or access further resources.",
  ]);
  await expect(card.locator(".agent-next")).toHaveText(
    "Move the cursor to the Google search bar, and type 'CogVLM' into it.",
  );
  await expect(card.locator(".agent-action")).toHaveText("TYPE");
  await expect(card.locator(".agent-target")).toHaveText("combobox Search");
  await expect(card.locator(".agent-text")).toHaveText("CogVLM");
  const chip = card.locator(".agent-where .gchip");
  await expect(chip).toHaveAttribute("title", "TYPE Search");
  await expect(chip).toContainText("[[212,498,787,564]]");

  // The operation's box on the screenshot: solid, colour 1.
  for (const [fx, fy] of [[0.212, 0.53], [0.787, 0.53], [0.5, 0.498], [0.5, 0.564]]) {
    expect(isColour(await canvasPixel(page, fx, fy), PALETTE[0]), `edge at ${fx},${fy}`).toBeTruthy();
  }
  expect((await canvasPixel(page, 0.5, 0.53))[3]).toBe(0);
  await chip.hover();
  await expect.poll(async () => (await canvasPixel(page, 0.5, 0.53))[3]).toBeGreaterThan(0);
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(shots, "agent.png") });
});
