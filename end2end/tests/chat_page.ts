import { expect, Page } from "@playwright/test";
import * as fs from "fs";
import * as path from "path";

/** A case of the reference fixtures (server/fixtures/cases.json): the answers to expect. */
export interface RefCase {
  id: string;
  model: string;
  query: string;
  template_version: string;
  image_file: string | null;
  generated_text: string;
  generated_ids: number[];
  history: [string, string][];
  /** Index of the first text token: BOS and the image come before it. */
  first_text_index: number;
}

const cases: RefCase[] = JSON.parse(
  fs.readFileSync(path.join(__dirname, "..", "..", "server", "fixtures", "cases.json"), "utf8"),
).cases;

export function refCase(id: string): RefCase {
  const c = cases.find((c) => c.id === id);
  if (!c) throw new Error(`no case ${id} in cases.json`);
  return c;
}

/** Test copies of the fixture images. */
export function fixtureImage(name: string): string {
  return path.join(__dirname, "..", "fixtures", name);
}

/** The chat page, as a user sees it. */
export class ChatPage {
  constructor(readonly page: Page) {}

  readonly generate = () => this.page.locator("#generate");
  readonly stop = () => this.page.locator("#stop");
  readonly clear = () => this.page.locator("#clear");
  readonly retry = () => this.page.locator("#retry");
  readonly prompt = () => this.page.locator("#prompt");
  readonly modelSelect = () => this.page.locator("#model-select");
  readonly turns = () => this.page.locator(".turn");
  readonly lastAnswer = () => this.page.locator(".turn").last().locator(".answer");
  readonly lastStats = () => this.page.locator(".turn").last().locator(".stats");

  /** Opens the page (`/?test-hooks` adds `window.__cogvlmReplay`) and waits for hydration and
   * the model list. */
  async open(url = "/") {
    const errors: string[] = [];
    this.page.on("pageerror", (e) => errors.push(String(e)));
    await this.page.goto(url);
    await expect(this.page.locator("#app")).toHaveAttribute("data-hydrated", "true");
    await expect(this.modelSelect()).toBeEnabled();
    expect(errors, "page errors").toEqual([]);
  }

  /** Makes `name` the loaded checkpoint (the server keeps its model between tests). */
  async useModel(name: string) {
    if ((await this.modelSelect().inputValue()) !== name) {
      await this.modelSelect().selectOption(name);
    }
    await expect(this.page.locator("#load-progress")).toHaveCount(0, { timeout: 60_000 });
    await expect(this.modelSelect()).toHaveValue(name);
    await expect(this.modelSelect()).toBeEnabled();
  }

  async uploadImage(file: string) {
    await this.page.setInputFiles("#image-input", file);
    await expect(this.page.locator("#preview")).toBeVisible();
    // The image is decoded and laid out (the canvas follows its size).
    await this.page.waitForFunction(() => {
      const img = document.querySelector<HTMLImageElement>("#preview");
      return !!img && img.complete && img.naturalWidth > 0 && img.clientWidth > 0;
    });
  }

  /** Greedy decoding (temperature 0) and a cap on new tokens (empty: none). */
  async setGreedy(maxNewTokens: number | null) {
    await this.page.locator("#temperature").fill("0");
    await expect(this.page.locator("#temperature-value")).toHaveText("0 (greedy)");
    // Open the "More" section only if it is closed (a second call must not toggle it shut).
    if (!(await this.page.locator("details.advanced").evaluate((d) => (d as HTMLDetailsElement).open))) {
      await this.page.locator("details.advanced summary").click();
    }
    await this.page.locator("#max-new-tokens").fill(maxNewTokens === null ? "" : String(maxNewTokens));
  }

  /** Records every distinct text of the newest answer bubble (MutationObserver). */
  async recordAnswerTexts() {
    await this.page.evaluate(() => {
      const w = window as any;
      w.__answerTexts = [];
      const seen = (t: string) => {
        const list: string[] = w.__answerTexts;
        if (list[list.length - 1] !== t) list.push(t);
      };
      const root = document.querySelector("#transcript")!;
      w.__observer?.disconnect();
      w.__observer = new MutationObserver(() => {
        const answers = root.querySelectorAll(".answer");
        const last = answers[answers.length - 1];
        if (last) seen(last.textContent ?? "");
      });
      w.__observer.observe(root, { subtree: true, childList: true, characterData: true });
    });
  }

  async answerTexts(): Promise<string[]> {
    return this.page.evaluate(() => (window as any).__answerTexts as string[]);
  }

  /** Collects the text of every `Token` event the page receives on a websocket, in order. */
  recordTokenFrames(): string[] {
    const tokens: string[] = [];
    this.page.on("websocket", (ws) =>
      ws.on("framereceived", ({ payload }) => {
        // A server-function frame: a marker byte, then the event as JSON.
        const frame = payload.toString();
        const json = frame.indexOf("{");
        if (json < 0) return;
        const event = JSON.parse(frame.slice(json));
        if (event?.Token) tokens.push(event.Token.text);
      }),
    );
    return tokens;
  }

  /** Types a question and sends it with Enter. */
  async ask(question: string) {
    await this.prompt().fill(question);
    await expect(this.generate()).toBeEnabled();
    await this.prompt().press("Enter");
  }

  /** Waits for the newest answer to finish; returns its stats line. */
  async waitDone(timeout = 60_000): Promise<string> {
    await expect(this.lastStats()).toHaveClass(/done|stopped|error/, { timeout });
    return (await this.lastStats().textContent()) ?? "";
  }
}

/** Shows a recorded answer as a new turn, streamed like a live one (the page's test hook: open it with
 * `/?test-hooks`). */
export async function replay(page: Page, query: string, answer: string) {
  await page.evaluate(([q, a]) => (window as any).__cogvlmReplay(q, a), [query, answer]);
}

/** Waits until the open conversation is listed under `title` (the page lists it as it saves it). */
export async function saved(page: Page, title: string | RegExp) {
  await expect(page.locator("#conversation-list .conv.open .conv-title")).toHaveText(title);
}

/** The id of the conversation open in the page. */
export async function openId(page: Page): Promise<string> {
  const id = await page.locator("#conversation-list .conv.open").getAttribute("data-id");
  if (!id) throw new Error("no open conversation in the list");
  return id;
}

/** The questions of stored conversation `id` as the browser's IndexedDB holds them (`null`: not stored). Call it
 * once the page has opened the database. */
export async function storedQuestions(page: Page, id: string): Promise<string[] | null> {
  return page.evaluate(
    (id) =>
      new Promise<string[] | null>((resolve, reject) => {
        const open = indexedDB.open("cogvlm");
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          const get = db.transaction("conversations").objectStore("conversations").get(id);
          get.onerror = () => reject(get.error);
          get.onsuccess = () => {
            db.close();
            const rec = get.result === undefined ? null : JSON.parse(get.result);
            resolve(rec ? rec.turns.map((t: { query: string }) => t.query) : null);
          };
        };
      }),
    id,
  );
}

/** RGBA of the overlay canvas at a fraction of its width and height. */
export async function canvasPixel(page: Page, fx: number, fy: number): Promise<number[]> {
  return page.evaluate(
    ([fx, fy]) => {
      const canvas = document.querySelector<HTMLCanvasElement>("#overlay")!;
      const x = Math.min(canvas.width - 1, Math.round(fx * canvas.width));
      const y = Math.min(canvas.height - 1, Math.round(fy * canvas.height));
      return Array.from(canvas.getContext("2d")!.getImageData(x, y, 1, 1).data);
    },
    [fx, fy],
  );
}

/** RGBA of `n` canvas pixels along a horizontal (`dir` "x") or vertical line from a fraction point. */
export async function canvasRun(page: Page, fx: number, fy: number, dir: "x" | "y", n: number): Promise<number[][]> {
  return page.evaluate(
    ([fx, fy, dir, n]) => {
      const canvas = document.querySelector<HTMLCanvasElement>("#overlay")!;
      const x = Math.round((fx as number) * canvas.width);
      const y = Math.round((fy as number) * canvas.height);
      const [w, h] = dir === "x" ? [n as number, 1] : [1, n as number];
      const data = canvas.getContext("2d")!.getImageData(x, y, w, h).data;
      const out: number[][] = [];
      for (let i = 0; i < data.length; i += 4) out.push(Array.from(data.slice(i, i + 4)));
      return out;
    },
    [fx, fy, dir, n] as const,
  );
}

/** Whether an RGBA pixel is (close to) a `#rrggbb` colour and mostly covered (a 2.5 px line
 * covers at least 3/4 of the pixel at its centre). */
export function isColour(p: number[], hex: string, tolerance = 30): boolean {
  const c = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return c.every((v, i) => Math.abs(p[i] - v) < tolerance) && p[3] > 150;
}

/** The first colours of the overlay's palette (Okabe–Ito), by group number. */
export const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"];
