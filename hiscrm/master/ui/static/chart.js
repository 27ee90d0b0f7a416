// A small live chart: one bar per second over the last minute, drawn in SVG.

import { h, svg } from "./dom.js";

const WIDTH = 300;
const HEIGHT = 60;

export function chart(label, unit) {
  const graph = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: "none",
    class: "chart",
    role: "img",
    "aria-label": label,
  });
  const now = h("strong", { class: "chart-now" }, "–");
  const peak = h("span", { class: "muted" }, "");
  const el = h("figure", { class: "chart-box" }, graph, h("figcaption", {}, now, " ", unit, " now · ", peak));

  function draw(values) {
    const known = values.filter((v) => v !== null);
    const top = Math.max(1, ...known);
    const step = WIDTH / values.length;
    const bars = values.map((value, i) => {
      if (value === null) return null;
      const height = Math.max(value > 0 ? 1.5 : 0, (value / top) * (HEIGHT - 4));
      return svg("rect", {
        x: (i * step + 0.5).toFixed(1),
        y: (HEIGHT - height).toFixed(1),
        width: Math.max(1, step - 1).toFixed(1),
        height: height.toFixed(1),
      });
    });
    graph.replaceChildren(...bars.filter(Boolean));
    const last = [...values].reverse().find((v) => v !== null);
    now.textContent = last === undefined ? "–" : format(last);
    peak.textContent = known.length ? `peak ${format(top)} ${unit} in the last minute` : "no data yet";
  }

  return { el, draw };
}

function format(value) {
  if (value >= 100) return Math.round(value).toLocaleString();
  return String(Math.round(value * 10) / 10);
}
