import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { signIn } from "./auth";
import { FeaturesContext } from "./features";
import { emptyForm, fieldErrors, fromYaml, localErrors, toYaml, type FormState } from "./form";
import { NewInstance } from "./pages/NewInstance";
import { FEATURES, mockFetch } from "./test-util";

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENbx5+Yq7JCLBGH7ZeEZZ905DkMzP6fIPg/LOPWe1gK a@b";

function renderForm() {
  return render(
    <FeaturesContext.Provider value={FEATURES()}>
      <NewInstance search="" />
    </FeaturesContext.Provider>,
  );
}

beforeEach(() => signIn("token-1", "alice"));

describe("the new-instance form", () => {
  it("marks what it can check itself before asking the service", async () => {
    const calls = mockFetch([]);
    renderForm();
    await userEvent.setup().click(screen.getByRole("button", { name: "Preview" }));
    expect(screen.getByTestId("error-f-name").textContent).toContain("lowercase letters");
    expect(screen.getByTestId("error-f-spec-region").textContent).toBe("required");
    expect(screen.getByLabelText("Name").getAttribute("aria-invalid")).toBe("true");
    expect(calls.filter((c) => c.method === "POST")).toEqual([]);
  });

  it("shows the service's 422 on the fields it names, and previews with dry_run", async () => {
    const refusal = "spec.machine_type: unknown type smal for docker; spec.disk_gb: must be at least 30";
    const calls = mockFetch([
      { match: /POST \/api\/v1\/instances\?dry_run=true/, status: 422, body: { status_code: 422, detail: refusal, extra: { field: "spec.machine_type" } } },
    ]);
    renderForm();
    const user = userEvent.setup();
    await user.type(screen.getByLabelText("Name"), "box-1");
    await user.type(screen.getByLabelText("Region"), "local");
    await user.type(screen.getByLabelText("Machine type"), "smal");
    await user.type(screen.getByLabelText("User 1 name"), "alice");
    await user.type(screen.getByLabelText("User 1 public key"), KEY);
    await user.click(screen.getByRole("button", { name: "Preview" }));
    expect((await screen.findByTestId("error-f-spec-machine_type")).textContent).toBe("unknown type smal for docker");
    expect(screen.getByTestId("error-f-spec-disk_gb").textContent).toBe("must be at least 30");
    const post = calls.find((c) => c.method === "POST")!;
    expect(post.url).toBe("/api/v1/instances?dry_run=true");
    expect(post.body).toMatchObject({ kind: "Instance", name: "box-1", spec: { cloud: "docker", region: "local", machine_type: "smal" } });
  });
});

describe("the unlisted machine type checkbox", () => {
  it("is offered for a cloud with a catalogue, not for docker, and goes into the document", async () => {
    const refusal = "spec.allow_unlisted_machine_type: m9.large is not a machine type of aws";
    const calls = mockFetch([
      { match: /POST \/api\/v1\/instances\?dry_run=true/, status: 422, body: { status_code: 422, detail: refusal, extra: { field: "spec.allow_unlisted_machine_type" } } },
    ]);
    renderForm();
    const user = userEvent.setup();
    await user.selectOptions(screen.getByLabelText("Cloud"), "docker");
    expect(screen.queryByLabelText("Allow a type the catalogue does not list")).toBeNull();
    await user.selectOptions(screen.getByLabelText("Cloud"), "aws");
    await user.click(screen.getByLabelText("Allow a type the catalogue does not list"));
    await user.type(screen.getByLabelText("Name"), "box-1");
    await user.type(screen.getByLabelText("Region"), "us-east-1");
    await user.type(screen.getByLabelText("Machine type"), "m9.large");
    await user.type(screen.getByLabelText("User 1 name"), "alice");
    await user.type(screen.getByLabelText("User 1 public key"), KEY);
    await user.click(screen.getByRole("button", { name: "Preview" }));
    expect((await screen.findByTestId("error-f-spec-allow_unlisted_machine_type")).textContent).toBe("m9.large is not a machine type of aws");
    expect(calls.find((c) => c.method === "POST")!.body).toMatchObject({ spec: { machine_type: "m9.large", allow_unlisted_machine_type: true } });
  });
});

describe("the zones field", () => {
  it("sends the zones to try as a list, not for docker, and shows the service's 422 on an item there", async () => {
    const refusal = "spec.zones[1]: zone 'us-east-1bb' is not in region 'us-east-1'; did you mean us-east-1b?";
    const calls = mockFetch([
      { match: /POST \/api\/v1\/instances\?dry_run=true/, status: 422, body: { status_code: 422, detail: refusal, extra: { field: "spec.zones[1]" } } },
    ]);
    renderForm();
    const user = userEvent.setup();
    await user.selectOptions(screen.getByLabelText("Cloud"), "docker");
    expect(screen.queryByLabelText("Zones to try (optional)")).toBeNull();
    await user.selectOptions(screen.getByLabelText("Cloud"), "aws");
    await user.type(screen.getByLabelText("Name"), "box-1");
    await user.type(screen.getByLabelText("Region"), "us-east-1");
    await user.type(screen.getByLabelText("Zones to try (optional)"), "us-east-1a, us-east-1bb");
    await user.type(screen.getByLabelText("User 1 name"), "alice");
    await user.type(screen.getByLabelText("User 1 public key"), KEY);
    await user.click(screen.getByRole("button", { name: "Preview" }));
    expect((await screen.findByTestId("error-f-spec-zones")).textContent).toBe(
      "zones[1]: zone 'us-east-1bb' is not in region 'us-east-1'; did you mean us-east-1b?",
    );
    const post = calls.find((c) => c.method === "POST")!;
    expect(post.body).toMatchObject({ spec: { cloud: "aws", zones: ["us-east-1a", "us-east-1bb"] } });
    expect((post.body as { spec: Record<string, unknown> }).spec).not.toHaveProperty("zone");
  }, 20_000);  // typing a whole key, character by character, is slow on a busy machine
});

describe("the YAML tab", () => {
  it("round-trips every field with the form", () => {
    const form: FormState = {
      ...emptyForm("aws"), name: "gpu-box", labels: [{ key: "team", value: "ml" }], region: "us-east-1", zone: "us-east-1a",
      machine_type: "g5.xlarge", gpu_type: "nvidia-a10g", gpu_count: "1", image: "ubuntu-22.04", disk_gb: "100",
      ssh_users: [{ name: "alice", public_key: KEY, sudo: true }], allowed_ssh_cidrs: "203.0.113.0/24\n198.51.100.0/24",
      mounts: [{ bucket: "data-bucket", path: "/data" }], bootstrap_script: "#!/bin/sh\necho hi\n", configure: false,
      allow_unlisted_machine_type: true, state: "stopped", zones: "us-east-1b, us-east-1c", any_zone: true, regions: "us-east-1, us-west-2",
    };
    expect(fromYaml(toYaml(form))).toEqual(form);
  });

  it("leaves region out when regions are listed and it is empty (region failover)", () => {
    const form: FormState = { ...emptyForm("aws"), name: "box-1", regions: "us-east-1, us-west-2" };
    const spec = (parse(toYaml(form)) as { spec: Record<string, unknown> }).spec;
    expect(spec).not.toHaveProperty("region");
    expect(spec.regions).toEqual(["us-east-1", "us-west-2"]);
    expect(localErrors(form, ["aws"])).not.toHaveProperty("spec.region");
    expect(localErrors({ ...form, regions: "" }, ["aws"])["spec.region"]).toBe("required");
  });

  it("leaves the defaults of allow_unlisted_machine_type and state out of the document", () => {
    const spec = (parse(toYaml(emptyForm("aws"))) as { spec: Record<string, unknown> }).spec;
    expect(spec).not.toHaveProperty("allow_unlisted_machine_type");
    expect(spec).not.toHaveProperty("state");
    expect(spec).not.toHaveProperty("zones");
    expect(spec).not.toHaveProperty("any_zone");
    expect(spec).not.toHaveProperty("regions");
  });

  it("names what is wrong with a YAML text", () => {
    expect(() => fromYaml("spec: [")).toThrow(/not valid YAML/);
    expect(() => fromYaml("spec:\n  ssh_users: 3\n")).toThrow("spec.ssh_users: must be a list");
  });

  it("reads a 422 detail into errors per field", () => {
    expect(fieldErrors("labels.note: value '<b>': lowercase; name: too long", "labels.note")).toEqual({
      "labels.note": "value '<b>': lowercase",
      name: "too long",
    });
    expect(fieldErrors("spec.zone: zone 'x' is not in region 'y'; did you mean z?; spec.disk_gb: too small", null)).toEqual({
      "spec.zone": "zone 'x' is not in region 'y'; did you mean z?",
      "spec.disk_gb": "too small",
    });
  });
});
