// The status page of a replica lists every replica and marks the controller.
// Usage: node replicas_page.cjs PLAYWRIGHT_CORE_DIR ADMIN_URL CONTROLLER_ID SCREENSHOT.png
// Prints OK (or FAIL reason).
const [pwDir, adminUrl, controller, shot] = process.argv.slice(2);
const { launch } = require("./chromium.cjs");

(async () => {
  const browser = await launch(pwDir);
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    await page.goto(adminUrl + "/");
    await page.waitForFunction(() => document.querySelectorAll("#replicas tr.replica").length === 2, null, { timeout: 30000 });
    if (await page.locator("#replicas").isHidden()) throw new Error("the replicas section is hidden");
    const marked = await page.locator("#replicas tr.replica.controller .id").textContent();
    if (marked !== controller) throw new Error("the controller row is " + marked + ", not " + controller);
    await page.screenshot({ path: shot, fullPage: true });
    console.log("OK controller=" + marked);
  } catch (e) {
    console.log("FAIL " + (e && e.message ? e.message.split("\n")[0] : e));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
