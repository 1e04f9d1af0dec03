import { defineConfig } from "@playwright/test";

// Run by tests/test_web.py against real `orch serve` processes it starts (their addresses and
// sign-in links come in ORCH_E2E_* variables). The browser is Debian's chromium: none is downloaded.
export default defineConfig({
  testDir: "e2e",
  timeout: 180_000,
  expect: { timeout: 30_000 },
  workers: 1,
  reporter: [["list"]],
  outputDir: process.env.ORCH_E2E_OUTPUT ?? "test-results",
  use: {
    headless: true,
    launchOptions: { executablePath: process.env.ORCH_E2E_CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] },
    viewport: { width: 1400, height: 900 },
    trace: "off",
  },
});
