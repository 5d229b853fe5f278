import { BrowserContext, expect, Page, test } from "@playwright/test";
import { ChatPage, fixtureImage, openId, replay, saved, storedQuestions } from "./chat_page";

// Two tabs of the page in one browser share its IndexedDB, and neither loses the other's turns. A save is
// announced to the other tabs (BroadcastChannel), and every save first checks that the stored revision is the
// one the tab read, so a tab that missed the announcement still cannot overwrite the other's save. An upgrade of
// the database by another tab never leaves a tab waiting in silence.

const MODEL = "cogvlm_tiny_224";

async function openTab(context: BrowserContext): Promise<ChatPage> {
  const chat = new ChatPage(await context.newPage());
  await chat.open("/?test-hooks");
  return chat;
}

async function askAndWait(chat: ChatPage, question: string) {
  await chat.ask(question);
  await chat.waitDone();
}

function questions(chat: ChatPage): Promise<string[]> {
  return chat.turns().locator(".msg.user .bubble").allTextContents();
}

/** Opens the database at `version` from a page of the same origin that is not the app (as a newer or older copy
 * of the page would); resolves with the version it got. */
function openDatabase(page: Page, version: number, keepOpen: boolean): Promise<number> {
  return page.evaluate(
    ([version, keepOpen]) =>
      new Promise<number>((resolve, reject) => {
        const req = indexedDB.open("cogvlm", version as number);
        req.onupgradeneeded = () => {
          if (!req.result.objectStoreNames.contains("conversations")) req.result.createObjectStore("conversations");
        };
        req.onblocked = () => reject(new Error("blocked by another tab"));
        req.onerror = () => reject(req.error);
        req.onsuccess = () => {
          const db = req.result;
          if (keepOpen) (window as any).__db = db;
          else db.close();
          resolve(db.version);
        };
      }),
    [version, keepOpen] as const,
  );
}

test("a save in one tab reloads the other tab's copy at once, and both tabs' turns are kept", async ({ page, context }) => {
  const a = new ChatPage(page);
  await a.open("/?test-hooks");
  await a.useModel(MODEL);
  await a.uploadImage(fixtureImage("coffee.png"));
  await a.setGreedy(4);
  await askAndWait(a, "What is on the table?");
  await saved(page, "What is on the table?");
  const id = await openId(page);
  await expect.poll(() => storedQuestions(page, id)).toEqual(["What is on the table?"]);

  // B opens the same conversation.
  const b = await openTab(context);
  await expect(b.turns()).toHaveCount(1);

  // A asks; B, with nothing unsaved, hears of it and shows A's new turn.
  await askAndWait(a, "Is there a cup?");
  await expect(b.page.locator(".note")).toContainText("This conversation changed in another tab");
  expect(await questions(b)).toEqual(["What is on the table?", "Is there a cup?"]);

  // B goes on from there; A hears of that in turn.
  await askAndWait(b, "What colour is it?");
  const all = ["What is on the table?", "Is there a cup?", "What colour is it?"];
  await expect(a.turns()).toHaveCount(3);
  await expect(page.locator(".note")).toContainText("This conversation changed in another tab");
  await expect.poll(() => storedQuestions(page, id)).toEqual(all);

  // A third tab finds one conversation with every turn.
  const c = await openTab(context);
  expect(await questions(c)).toEqual(all);
  await c.page.locator("#conversations-toggle").click();
  await expect(c.page.locator("#conversation-list .conv")).toHaveCount(1);
});

test("a tab that missed another tab's save cannot overwrite it: its own turns are saved as a copy", async ({ page, context }) => {
  await new ChatPage(page).open("/?test-hooks");
  await replay(page, "What is on the table?", "A cup[[100,200,300,400]].");
  await saved(page, "What is on the table?");
  const id = await openId(page);
  await expect.poll(() => storedQuestions(page, id)).toEqual(["What is on the table?"]);

  // B hears nothing from A (as in a browser without BroadcastChannel): only the revision check is left.
  const bPage = await context.newPage();
  await bPage.addInitScript(() => delete (window as any).BroadcastChannel);
  const b = new ChatPage(bPage);
  await b.open("/?test-hooks");
  await expect(b.turns()).toHaveCount(1);

  await replay(page, "Where is the spoon?", "Left of the cup.");
  await expect.poll(() => storedQuestions(page, id)).toEqual(["What is on the table?", "Where is the spoon?"]);
  // B, stale, answers another question: its save is refused, and B keeps its turns as a new conversation.
  await replay(bPage, "What colour is the cup?", "Blue.");
  await expect(bPage.locator(".note")).toContainText("This tab's turns were saved as a new conversation");
  await bPage.locator("#conversations-toggle").click();
  await saved(bPage, "What is on the table? (copy)");
  const copy = await openId(bPage);
  expect(copy).not.toBe(id);
  expect(await questions(b)).toEqual(["What is on the table?", "What colour is the cup?"]);

  // Nothing of either tab is lost.
  await expect.poll(() => storedQuestions(page, id)).toEqual(["What is on the table?", "Where is the spoon?"]);
  await expect.poll(() => storedQuestions(page, copy)).toEqual(["What is on the table?", "What colour is the cup?"]);
  await page.reload();
  await expect(page.locator("#app")).toHaveAttribute("data-hydrated", "true");
  await page.locator("#conversations-toggle").click();
  await expect(page.locator("#conversation-list .conv .conv-title")).toHaveText([
    "What is on the table? (copy)",
    "What is on the table?",
  ]);
});

test("another tab's upgrade of the database closes it here at once, and this tab asks for a reload", async ({ page, context }) => {
  await new ChatPage(page).open("/?test-hooks");
  await replay(page, "What is here?", "Nothing much.");
  await saved(page, "What is here?");
  await expect.poll(async () => (await storedQuestions(page, await openId(page)))?.length).toBe(1);

  // A newer copy of the page, in another tab, upgrades the database: it does not wait on this tab.
  const newer = await context.newPage();
  await newer.goto("/favicon.svg");
  expect(await openDatabase(newer, 3, false)).toBe(3);
  await expect(page.locator("#store-error")).toContainText("reload this page");
  // This tab's next save says the same, and nothing hangs.
  await replay(page, "And now?", "Still nothing.");
  await expect(page.locator("#store-error")).toContainText("reload this page");
});

test("a tab that holds the old version open is named, instead of the upgrade waiting in silence", async ({ page, context }) => {
  // An old tab: version 1 of the database, open, and deaf to upgrades (as the page before version 2 was).
  await page.goto("/favicon.svg");
  expect(await openDatabase(page, 1, true)).toBe(1);

  const b = await openTab(context);
  await expect(b.page.locator("#store-error")).toContainText("Close this page's other tabs");
  // Once the old tab lets go, the upgrade goes on and the page saves.
  await page.evaluate(() => (window as any).__db.close());
  await expect(b.page.locator("#store-error")).toHaveCount(0);
  await replay(b.page, "What is here?", "Nothing much.");
  await saved(b.page, "What is here?");
  await expect.poll(async () => storedQuestions(b.page, await openId(b.page))).toEqual(["What is here?"]);
});
