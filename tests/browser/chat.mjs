// Two headless Chromium pages open the chat page, join the same room, and
// talk: what one sends must show up in the other's DOM, and so must the
// room's topic one of them sets, which a third page that joins later shows
// at once; /stats counts the room's messages. Usage:
//
//   node tests/browser/chat.mjs PAGE_URL [SECOND_PAGE_URL]
//
// The second page opens SECOND_PAGE_URL (another host of a cluster), or
// PAGE_URL again. Chromium is `$CHROMIUM`, else /usr/bin/chromium.
// Screenshots of both pages go to `$SCREENSHOT_DIR` (default
// target/browser). Exits non-zero, saying why, if the chat does not work.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [first, second = first] = process.argv.slice(2);
if (!first) {
  console.error("usage: node chat.mjs PAGE_URL [SECOND_PAGE_URL]");
  process.exit(2);
}
const shots = process.env.SCREENSHOT_DIR ?? "target/browser";
mkdirSync(shots, { recursive: true });
const room = `room-${process.pid}-${Date.now() % 100000}`;
const timeout = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // CI runs as root, where Chromium's own sandbox cannot start.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const pages = [];
let failed = null;
try {
  const join = async (url, name) => {
    const page = await (await browser.newContext()).newPage();
    page.on("console", (message) => console.log(`[${name}] ${message.text()}`));
    pages.push([name, page]);
    await page.goto(url, { timeout });
    await page.fill("#name", name);
    await page.fill("#room", room);
    await page.click("#join");
    await page.waitForSelector("#text:enabled", { timeout });
    return page;
  };
  const ann = await join(first, "ann");
  const bob = await join(second, "bob");
  // Ann hears Bob come in: on_connect announced him.
  await ann.waitForSelector('#messages li:has-text("bob joined")', { timeout });
  await ann.fill("#text", "hello from ann");
  await ann.click("#send");
  // Bob's page shows it, with Ann's name.
  const line = await bob.waitForSelector('#messages li:has-text("hello from ann")', { timeout });
  const from = await line.$eval(".from", (span) => span.textContent);
  if (from !== "ann") throw new Error(`the message shows sender ${from}, not ann`);
  await bob.fill("#text", "/who");
  await bob.click("#send");
  await bob.waitForSelector('#messages li:has-text("here: ann, bob")', { timeout });
  // The room's topic, kept in the key-value store: none yet in a new
  // room; Bob sets it and Ann's page shows it.
  await ann.waitForSelector('#topic:has-text("No topic yet")', { timeout });
  await bob.fill("#text", "/topic browsers welcome");
  await bob.click("#send");
  await ann.waitForSelector('#topic:has-text("Topic: browsers welcome")', { timeout });
  await bob.waitForSelector('#topic:has-text("Topic: browsers welcome")', { timeout });
  // A newcomer's page shows the topic at once: it is the first message
  // the server sends it.
  const cid = await join(second, "cid");
  await cid.waitForSelector('#topic:has-text("Topic: browsers welcome")', { timeout });
  await cid.click("#join");
  // The room's count: Ann's one message.
  await bob.fill("#text", "/stats");
  await bob.click("#send");
  await bob.waitForSelector('#messages li:has-text("1 message in this room")', { timeout });
  // Bob leaves; on_close tells Ann.
  await bob.click("#join");
  await ann.waitForSelector('#messages li:has-text("bob left")', { timeout });
  console.log(`chat works: ann and bob talked in ${room}`);
} catch (error) {
  failed = error;
} finally {
  for (const [name, page] of pages) {
    const file = join(shots, `chat-${name}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => {});
    console.log(`screenshot: ${file}`);
  }
  await browser.close();
}
if (failed) {
  console.error(`the chat did not work in the browser: ${failed.message}`);
  process.exit(1);
}
