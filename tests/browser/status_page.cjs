// Drives the status page in headless Chromium (Debian's, through playwright-core).
// Usage: node status_page.cjs PLAYWRIGHT_CORE_DIR ADMIN_URL SCREENSHOT.png
// Talks to the Rust test over stdio: prints READY once the page shows the first active,
// waits for a KILLED line on stdin, then checks the page shows the new active and a failover
// entry without having been reloaded, then nr-a's card reporting its restart (recovery),
// saves a screenshot and prints OK (or FAIL reason).
const [pwDir, adminUrl, shot] = process.argv.slice(2);
const { launch } = require("./chromium.cjs");
const readline = require("readline");

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

(async () => {
  const browser = await launch(pwDir);
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    await page.goto(adminUrl + "/");
    await page.waitForFunction(() => document.querySelector("#summary").textContent === "active: nr-a", null, { timeout: 30000 });
    const loadedAt = await page.evaluate(() => window.flowgateLoadedAt);
    const activeCard = await page.locator(".card.active .id").textContent();
    if (activeCard !== "nr-a") throw new Error("the highlighted card is " + activeCard);
    console.log("READY");
    await nextLine(); // KILLED
    await page.waitForFunction(() => document.querySelector("#summary").textContent === "active: nr-b", null, { timeout: 15000 });
    await page.waitForFunction(() => [...document.querySelectorAll("#timeline tr.failover")]
      .some((r) => r.textContent.includes("crash") && r.textContent.includes("nr-a")), null, { timeout: 15000 });
    const sameLoad = await page.evaluate((t) => window.flowgateLoadedAt === t, loadedAt);
    if (!sameLoad) throw new Error("the page was reloaded");
    const highlighted = await page.locator(".card.active .id").textContent();
    if (highlighted !== "nr-b") throw new Error("after the failover the highlighted card is " + highlighted);
    const downRole = await page.locator('.card[data-id="nr-a"] .role').textContent();
    await page.waitForFunction(() => {
      const card = document.querySelector('.card[data-id="nr-a"]');
      return card.querySelector(".role").textContent === "standby"
        && card.querySelector(".recovery").textContent === "1 restart, last: crash ok";
    }, null, { timeout: 30000 });
    // The test flows' "tick" inject fires once at start: a hot-spare finding, shown live.
    await page.waitForFunction(() => [...document.querySelectorAll("#readiness tr.finding")]
      .some((r) => r.textContent.includes("inject_once") && r.textContent.includes("fg_tick")), null, { timeout: 15000 });
    const other = await page.locator('.card[data-id="nr-b"] .recovery').textContent();
    if (other !== "no restart command") throw new Error("nr-b's recovery reads " + other);
    await page.screenshot({ path: shot, fullPage: true });
    console.log("OK highlighted=" + highlighted + " nr-a=" + downRole);
  } catch (e) {
    console.log("FAIL " + (e && e.message ? e.message.split("\n")[0] : e));
    process.exitCode = 1;
  } finally {
    await browser.close();
    lines.close();
  }
})();
