import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { expect, type Page } from "@playwright/test";

export function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/test_web.py`);
  return value;
}

const screenshots = () => env("ORCH_E2E_SCREENSHOTS");

export async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(screenshots(), `${name}.png`), fullPage: true });
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** axe-core run in the page (evaluated over the DevTools protocol: the page's CSP stays as it is). */
export async function expectAccessible(page: Page, what: string): Promise<void> {
  await page.evaluate(`${axeSource}\n;0`);
  const violations = await page.evaluate(async () => {
    const axe = (window as unknown as { axe: { run: (c: Document, o: object) => Promise<{ violations: { id: string; impact: string; nodes: { target: string[] }[] }[] }> } }).axe;
    const result = await axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, targets: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  const serious = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(serious, `${what}: axe-core serious/critical violations`).toEqual([]);
}

/** Fails the test on any CSP violation or JavaScript error in the page, and on any dialog (alert). */
export function watchPage(page: Page): string[] {
  const problems: string[] = [];
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused to/.test(message.text())) problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("dialog", (dialog) => {
    problems.push(`unexpected dialog: ${dialog.message()}`);
    void dialog.dismiss();
  });
  return problems;
}

/** An agent's backlog of reports for the instance over the last minutes, the newest with this CPU figure,
 * posted with an agent token minted for it (tests/web_report.py). */
export function postAgentReport(serviceUrl: string, instance: string, cpu: number): void {
  execFileSync(env("ORCH_E2E_PYTHON"), ["-m", "tests.web_report", serviceUrl, "admin", instance, String(cpu)], {
    cwd: env("ORCH_E2E_REPO"),
    stdio: "inherit",
    timeout: 60_000,
  });
}

export async function signInWithLink(page: Page, link: string): Promise<void> {
  await page.goto(link);
  await expect(page.getByRole("heading", { name: "Instances" })).toBeVisible();
  expect(page.url()).not.toContain("code=");
}
