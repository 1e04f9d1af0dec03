import { render } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { LineChart, Sparkline } from "./Charts";

const from = 0;
const to = 3600_000;

describe("the charts", () => {
  it("draw a lone sample as a marker, not as a line of zero length", () => {
    const { container } = render(<Sparkline label="CPU" from={from} to={to} points={[{ t: 1800_000, v: 50 }]} />);
    const dot = container.querySelector("circle.sparkline-dot");
    expect(dot?.getAttribute("cx")).toBe("40");
    expect(dot?.getAttribute("cy")).toBe("10");
    expect(container.querySelector("path")).toBeNull();
  });

  it("draw joined samples as a line, and a sample cut off by gaps as a marker", () => {
    const points = [
      { t: 600_000, v: 10 }, { t: 1200_000, v: 20 }, { t: 1800_000, v: null }, { t: 2400_000, v: 30 }, { t: 3000_000, v: null },
    ];
    const { container } = render(
      <LineChart title="CPU" from={from} to={to} series={[{ name: "CPU %", points, className: "s-cpu" }]} />,
    );
    expect(container.querySelector(".s-cpu path")?.getAttribute("d")).toMatch(/^M[\d.]+,[\d.]+L[\d.]+,[\d.]+$/);
    expect(container.querySelectorAll(".s-cpu circle.chart-dot")).toHaveLength(1);
    expect(container.textContent).not.toContain("no reports in this window");
  });
});
