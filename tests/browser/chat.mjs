// Two headless Chromium pages open the chat page, join the same room, and
// talk: what one sends must show up in the other's DOM, and so must the
// room's topic one of them sets, which a third page that joins later shows
// at once; /stats counts the room's messages. Then Ann's socket is cut
// and her page kept offline while Bob talks: once back online her page
// reconnects by itself and shows every line once, in order. Usage:
//
//   API_URL=http://ADDR API_TOKEN=TOKEN node tests/browser/chat.mjs PAGE_URL [SECOND_PAGE_URL]
//
// The second page opens SECOND_PAGE_URL (another host of a cluster), or
// PAGE_URL again. API_URL is the server API of PAGE_URL's host, which cuts
// Ann's socket (close code 1012) and tells when she is back in the room. Chromium is `$CHROMIUM`, else /usr/bin/chromium.
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
const api = process.env.API_URL;
const token = process.env.API_TOKEN;
if (!api || !token) {
  console.error("set API_URL and API_TOKEN: the server API cuts a page's socket");
  process.exit(2);
}

// A server API request for the chat app; its JSON answer.
async function call(method, path, body) {
  const response = await fetch(`${api}/v1/apps/chat${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  return { status: response.status, answer };
}

// The ids of the connections in the room whose name is `name`.
async function connectionsOf(name) {
  const { status, answer } = await call("GET", `/groups/${encodeURIComponent(`room:${room}`)}`);
  if (status !== 200) throw new Error(`listing the room: ${status} ${JSON.stringify(answer)}`);
  return answer.members.filter((member) => member.attachment === name).map((member) => member.id);
}

// What `page` shows of Ann coming and going.
function aboutAnn(page) {
  return page.$$eval("#messages li.event", (items) =>
    items.map((item) => item.textContent).filter((text) => text.startsWith("ann ")));
}

// Wait until `check()` is true, polling; `what` says what did not happen.
async function until(check, what) {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} within ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

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
  // Ann's socket is cut (the host closes it with 1012, as for a restart)
  // and her page is offline, so it cannot come back yet; Bob talks.
  await bob.fill("#text", "before the cut");
  await bob.click("#send");
  await ann.waitForSelector('#messages li:has-text("before the cut")', { timeout });
  // Ann's own line after the newest she received comes back with what she
  // missed: her page shows it once.
  await ann.fill("#text", "just before the cut");
  await ann.click("#send");
  await bob.waitForSelector('#messages li:has-text("just before the cut")', { timeout });
  // In a cluster each host keeps the history of the lines that reach it,
  // and a room's lines reach a host only while it holds members of the
  // room: Dee keeps Ann's host in the room while she is away.
  if (second !== first) await join(first, "dee");
  const aboutAnnBefore = await aboutAnn(bob);
  await ann.context().setOffline(true);
  for (const id of await connectionsOf("ann")) {
    const { status, answer } = await call("POST", `/connections/${id}/close`, { code: 1012, reason: "restarting" });
    if (status !== 200 && status !== 404) throw new Error(`closing Ann's connection: ${status} ${JSON.stringify(answer)}`);
  }
  await ann.waitForSelector('#status:has-text("Reconnecting")', { timeout });
  await until(async () => (await connectionsOf("ann")).length === 0, "Ann's connection did not end");
  const away = [1, 2, 3, 4, 5].map((n) => `while away ${n}`);
  for (const text of away) {
    await bob.fill("#text", text);
    await bob.click("#send");
    await bob.waitForSelector(`#messages li:has-text("${text}")`, { timeout });
  }
  if ((await connectionsOf("ann")).length !== 0) {
    throw new Error("Ann's page came back while offline: it was not away while Bob talked");
  }
  // Online again: her page reconnects by itself with the last position
  // it showed and gets what it missed.
  await ann.context().setOffline(false);
  await ann.waitForSelector('#messages li:has-text("while away 5")', { timeout });
  await ann.waitForSelector(`#status:has-text("In ${room} as ann")`, { timeout });
  const lines = await ann.$$eval("#messages li:not(.event)", (items) => items.map((item) => item.textContent));
  const expected = [
    "annhello from ann", "bobbefore the cut", "annjust before the cut", ...away.map((text) => `bob${text}`),
  ];
  if (JSON.stringify(lines) !== JSON.stringify(expected)) {
    throw new Error(`after reconnecting Ann's page shows ${JSON.stringify(lines)}, not ${JSON.stringify(expected)}`);
  }
  if ((await ann.$$("#messages li.notice")).length !== 0) throw new Error("Ann's page says lines are missing");
  // The room was not told that Ann left or came back.
  const aboutAnnAfter = await aboutAnn(bob);
  if (JSON.stringify(aboutAnnAfter) !== JSON.stringify(aboutAnnBefore)) {
    throw new Error(`Bob's page showed ${JSON.stringify(aboutAnnBefore)} about Ann before the cut, then ${JSON.stringify(aboutAnnAfter)}`);
  }
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
