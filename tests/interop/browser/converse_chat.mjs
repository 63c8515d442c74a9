// Headless Chromium (the system's, driven by playwright-core) opens the Converse.js page
// the server serves, logs in through its login form, opens the chat with PEER (a contact
// in the roster, PEER being its shown name: the bare JID unless it has one), sends
// "hello from converse", waits for REPLY to be shown in the page and takes a
// screenshot. Prints JSON lines: {"event": "sent"} once the message is sent, then the
// result {"reply_visible", "csp_violations", "failed_requests", "errors" (the page's
// other console errors, for diagnosis), "screenshot"}.
//
//   node converse_chat.mjs PAGE_URL JID PASSWORD PEER REPLY SCREENSHOT [CHROMIUM]
import { chromium } from "playwright-core";

const [pageUrl, jid, password, peer, reply, screenshot, executable] = process.argv.slice(2);
const STEP = 20000;

const browser = await chromium.launch({
  executablePath: executable || "/usr/bin/chromium",
  headless: true,
  // Containers have no user namespaces for Chromium's sandbox; /dev/shm may be tiny.
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const result = { reply_visible: false, csp_violations: [], failed_requests: [], errors: [] };
let failure = null;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(STEP);
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    if (/Content.Security.Policy/i.test(msg.text())) {
      result.csp_violations.push(msg.text().slice(0, 300));
    } else if (result.errors.length < 20) {
      result.errors.push(msg.text().slice(0, 300));
    }
  });
  page.on("pageerror", (err) => {
    if (result.errors.length < 20) result.errors.push(String(err).slice(0, 300));
  });
  page.on("requestfailed", (req) => {
    result.failed_requests.push(`${req.url()} ${req.failure()?.errorText ?? ""}`);
  });
  page.on("response", (res) => {
    if (res.status() >= 400) result.failed_requests.push(`${res.url()} ${res.status()}`);
  });

  const response = await page.goto(pageUrl, { waitUntil: "load" });
  if (!response || response.status() !== 200) {
    throw new Error(`page answered ${response?.status()}`);
  }
  // Converse's own login form.
  const form = page.locator("form#converse-login");
  await form.locator('input[name="jid"]').fill(jid);
  await form.locator('input[name="password"]').fill(password);
  await form.locator('button[type="submit"]').click();
  // Logged in: the control box shows the roster instead of the form.
  await page.locator("converse-roster").first().waitFor({ state: "attached" });

  // Open a chat with the peer (a contact in the roster), then type and send.
  await page
    .locator("a.open-chat", { has: page.locator(".contact-name", { hasText: peer }) })
    .first()
    .click();
  const textarea = page.locator("textarea.chat-textarea").first();
  await textarea.waitFor({ state: "visible" });
  await textarea.fill("hello from converse");
  await textarea.press("Enter");
  // The sent message is shown in the chat once Converse has sent it.
  await page.locator(".chat-msg__text", { hasText: "hello from converse" }).first().waitFor();
  console.log(JSON.stringify({ event: "sent" }));

  const answer = page.locator(".chat-msg__text", { hasText: reply }).first();
  await answer.waitFor({ state: "visible", timeout: STEP });
  result.reply_visible = await answer.isVisible();
  await page.screenshot({ path: screenshot, fullPage: true });
  result.screenshot = screenshot;
} catch (err) {
  failure = err;
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) await pages[0].screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;
  } catch {
    // the failure matters more than its screenshot
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
if (failure) {
  console.error(failure.stack || String(failure));
  process.exit(1);
}
