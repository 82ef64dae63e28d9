// Launches Debian's headless Chromium through playwright-core (no browser download), with the
// flags this closed network needs.
module.exports.launch = (pwDir) => require(pwDir).chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
