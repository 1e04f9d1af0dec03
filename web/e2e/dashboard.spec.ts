import { expect, test, type Locator, type Page } from "@playwright/test";
import { env, expectAccessible, postAgentReport, screenshot, signInWithLink, watchPage } from "./helpers";

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENbx5+Yq7JCLBGH7ZeEZZ905DkMzP6fIPg/LOPWe1gK test@example";
const XSS = "<img src=x onerror=alert(1)>";

/** A select when the catalogue lists the choices, a text input otherwise. */
async function choose(field: Locator, value: string) {
  if ((await field.evaluate((e) => e.tagName)) === "SELECT") await field.selectOption(value);
  else await field.fill(value);
}

async function fillDockerInstance(page: Page, name: string, { fromSnapshot = false } = {}) {
  await page.getByLabel("Name", { exact: true }).fill(name);
  if (!fromSnapshot) {
    await page.getByLabel("Cloud").selectOption("docker");
    await choose(page.getByLabel("Region"), "local");
  }
  await choose(page.getByLabel("Machine type"), "small");
  await page.getByLabel("User 1 name").fill("alice");
  await page.getByLabel("User 1 public key").fill(KEY);
  await page.getByLabel("Allowed SSH source CIDRs").fill("203.0.113.0/24");
  await page.getByLabel(/Configure the instance/).uncheck();
}

async function createThroughPreview(page: Page) {
  await page.getByRole("button", { name: "Preview" }).click();
  await expect(page.getByRole("heading", { name: "What apply will do" })).toBeVisible();
  await page.getByRole("button", { name: "Create instance" }).click();
  await expect(page.getByRole("heading", { name: "Instances" })).toBeVisible();
}

async function deleteInstance(page: Page, name: string) {
  await page.getByRole("link", { name, exact: true }).click();
  await page.getByRole("button", { name: "Delete instance" }).click();
  const confirm = page.getByRole("button", { name: "Delete instance", exact: true }).last();
  await expect(confirm).toBeDisabled();
  await page.getByLabel(`Type ${name} to confirm`).fill(name);
  await confirm.click();
  await expect(page.getByRole("heading", { name: "Instances" })).toBeVisible();
  await expect(page.getByTestId(`row-${name}`)).toHaveCount(0, { timeout: 90_000 });
}

test("sign in, create, report, snapshot, instance from the snapshot, delete both: the list is empty", async ({ page }) => {
  const problems = watchPage(page);
  const url = env("ORCH_E2E_URL");
  await page.goto(`${url}/signin`);
  await expect(page.getByRole("heading", { name: "Sign in to orch" })).toBeVisible();
  await expectAccessible(page, "sign-in page");
  await screenshot(page, "0-signin");
  await signInWithLink(page, env("ORCH_E2E_SIGNIN"));
  // Sidebar flag off here: the top navigation.
  await expect(page.locator("header.topnav")).toBeVisible();
  await expect(page.getByTestId("sidebar")).toHaveCount(0);
  await expect(page.getByTestId("empty")).toBeVisible();

  await page.getByRole("link", { name: "New instance" }).first().click();
  // The disabled clouds (ORCH_CLOUDS=docker,aws) are absent from the form.
  await expect(page.getByLabel("Cloud").locator("option")).toHaveText(["docker", "aws"]);
  await fillDockerInstance(page, "web-one");
  // A label value the service refuses: the 422 shows on its field, the value as text.
  await page.getByRole("button", { name: "Add a label" }).click();
  await page.getByLabel("Label 1 key").fill("note");
  await page.getByLabel("Label 1 value").fill(XSS);
  await page.getByRole("button", { name: "Preview" }).click();
  await expect(page.getByTestId("error-f-labels-note")).toContainText(XSS);
  await expect(page.locator("main img")).toHaveCount(0);
  await expectAccessible(page, "new-instance page with errors");
  await page.getByLabel("Label 1 value").fill("web-e2e");
  await page.getByRole("button", { name: "Preview" }).click();
  await expect(page.getByRole("heading", { name: "What apply will do" })).toBeVisible();
  await screenshot(page, "3-new-instance");
  await page.getByRole("button", { name: "Create instance" }).click();
  await expect(page.getByRole("heading", { name: "Instances" })).toBeVisible();

  const row = page.getByTestId("row-web-one");
  await expect(row.getByTestId("public-ip")).toHaveText(/\d+\.\d+\.\d+\.\d+/, { timeout: 90_000 });
  await expect(row.getByTestId("status")).toHaveText("running", { timeout: 90_000 });
  postAgentReport(url, "web-one", 37);
  await expect(row.getByTestId("health")).toContainText("healthy");
  await expect(row.getByTestId("health")).toContainText(/last report \d+ s ago/);
  // Several reports over the last minutes: a line, not a lone sample's marker.
  const drawn = /^M[\d.]+,[\d.]+L[\d.]+,[\d.]+/; // a line between numbers, not NaN
  await expect(row.getByTestId("sparkline-path").first()).toHaveAttribute("d", drawn);
  await expect(row).toContainText("37%");
  await expectAccessible(page, "instances page");
  await screenshot(page, "1-instances");

  await row.getByRole("link", { name: "web-one" }).click();
  await expect(page.getByRole("heading", { name: "web-one" })).toBeVisible();
  await expect(page.getByTestId("stack-command")).toContainText("pulumi");
  await expect(page.getByTestId("spec-yaml")).toContainText("machine_type: small");
  await expect(page.locator(".s-cpu .chart-line")).toHaveAttribute("d", drawn);
  await page.getByLabel("New snapshot name").fill("web-one-snap");
  await page.getByRole("button", { name: "Create snapshot" }).click();
  const snapshotRow = page.getByTestId("snapshot-web-one-snap");
  await expect(snapshotRow).toContainText("available", { timeout: 90_000 });
  await expectAccessible(page, "instance page");
  await screenshot(page, "2-instance-detail");

  // Stop and start through the stand-in cloud: the page follows stopping, stopped (health too), running.
  const power = page.getByRole("group", { name: "Power" });
  await power.getByRole("button", { name: "Stop", exact: true }).click();
  await expect(page.getByTestId("status").first()).toHaveText(/^stopped$/, { timeout: 90_000 });
  await expect(page.getByTestId("health").first()).toContainText("stopped");
  await expect(power.getByRole("button", { name: "Stop", exact: true })).toBeDisabled();
  await power.getByRole("button", { name: "Start", exact: true }).click();
  await expect(page.getByTestId("status").first()).toHaveText(/^running$/, { timeout: 90_000 });
  await expect(power.getByRole("alert")).toHaveCount(0);

  await snapshotRow.getByRole("link", { name: "New instance from this snapshot" }).click();
  await expect(page.getByLabel("Base snapshot (optional)")).toHaveValue("web-one-snap");
  await fillDockerInstance(page, "web-two", { fromSnapshot: true });
  await createThroughPreview(page);
  await expect(page.getByTestId("row-web-two").getByTestId("public-ip")).toHaveText(/\d+\.\d+\.\d+\.\d+/, { timeout: 90_000 });
  await expect(page.getByTestId("row-web-two").getByTestId("status")).toHaveText("running", { timeout: 90_000 });

  await page.getByRole("link", { name: "Snapshots" }).click();
  await expect(page.getByTestId("snapshot-web-one-snap")).toContainText("web-one");
  await expectAccessible(page, "snapshots page");
  await screenshot(page, "4-snapshots");

  await page.getByRole("link", { name: "Instances" }).click();
  await deleteInstance(page, "web-two");
  await page.getByRole("link", { name: "web-one", exact: true }).click();
  await page.getByRole("button", { name: "Delete instance" }).click();
  await expectAccessible(page, "delete dialog");
  await screenshot(page, "5-delete");
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.getByRole("link", { name: "Instances" }).click();
  await deleteInstance(page, "web-one");
  await expect(page.getByTestId("empty")).toBeVisible();
  expect(problems).toEqual([]);
});

test("sidebar on: collapsible, remembered across reloads; 10,000 instances: first page time; labels as text", async ({ page }) => {
  const problems = watchPage(page);
  const url = env("ORCH_E2E_SIDEBAR_URL");
  await page.goto(env("ORCH_E2E_SIDEBAR_SIGNIN"));
  await expect(page.getByTestId("sidebar")).toBeVisible();
  await expect(page.locator("header.topnav")).toHaveCount(0);

  const started = Date.now();
  await page.goto(`${url}/`);
  await expect(page.locator("tbody tr").first()).toBeVisible({ timeout: 60_000 });
  const elapsed = Date.now() - started;
  await expect(page.getByTestId("total")).toHaveText(/^10,?000 instances$|^10000 instances$/);
  await expect(page.locator("tbody tr")).toHaveCount(50);
  console.log(`ORCH_E2E_FIRST_PAGE_MS=${elapsed} (first page of 10,000 instances rendered, from navigation)`);

  // The seeded label that looks like markup is shown literally, and nothing ran.
  await page.getByLabel("Cloud").selectOption("docker");
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page).toHaveURL(/cloud=docker/);
  await expect(page.getByText(`note=${XSS}`).first()).toBeVisible();
  await expect(page.locator("main img")).toHaveCount(0);
  await expectAccessible(page, "instances page with the sidebar");
  await screenshot(page, "6-sidebar");

  await page.getByRole("button", { name: "Collapse the sidebar" }).click();
  await expect(page.getByTestId("sidebar")).toHaveClass(/collapsed/);
  await page.reload();
  await expect(page.getByTestId("sidebar")).toHaveClass(/collapsed/);
  await page.getByRole("button", { name: "Expand the sidebar" }).click();
  await expect(page.getByTestId("sidebar")).not.toHaveClass(/collapsed/);
  expect(problems).toEqual([]);
});
