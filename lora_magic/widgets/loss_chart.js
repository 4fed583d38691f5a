// The live loss chart (loss_chart.py): draws the points the kernel sends as SVG, in the colours of
// the matplotlib picture a saved notebook keeps (LossPlot). It computes nothing but positions.

const COLOURS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]; // matplotlib's C0 to C9: C0 this run's train loss, C1 its eval loss, C2 on the other runs'
const WIDTH = 640;
const HEIGHT = 260;
const PLOT = { left: 58, right: WIDTH - 10, top: 10, bottom: HEIGHT - 40 };

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Ticks at round numbers (1, 2 or 5 times a power of ten), about `count` of them across [low, high].
function ticks(low, high, count) {
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = power * [1, 2, 5, 10].find((unit) => unit * power >= raw);
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const values = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) {
    values.push(value);
  }
  return values.map((value) => ({ value, text: value.toFixed(decimals) }));
}

// [low, high] of the finite values, with 5 % to spare on each side, as matplotlib's autoscale.
function span(values) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return [0, 1];
  let low = Math.min(...finite);
  let high = Math.max(...finite);
  if (low === high) [low, high] = [low - 0.5, high + 0.5];
  const margin = (high - low) * 0.05;
  return [low - margin, high + margin];
}

function draw(model, root) {
  const train = model.get("train");
  const smoothed = model.get("smoothed");
  const evals = model.get("evals");
  const references = model.get("references");
  const curves = [
    { label: "train", colour: COLOURS[0], style: 'stroke-opacity="0.3"', points: train },
    {
      label: "train (smoothed)",
      colour: COLOURS[0],
      style: "",
      points: train.map(([step], i) => [step, smoothed[i]]),
    },
    { label: "eval", colour: COLOURS[1], style: "", points: evals, dots: true },
    ...references.map((reference, i) => ({
      label: reference.label,
      colour: COLOURS[2 + (i % 8)],
      style: 'stroke-dasharray="6 3"',
      points: reference.points,
    })),
  ];
  const all = curves.flatMap((curve) => curve.points);
  const [xLow, xHigh] = span(all.map(([step]) => step));
  const [yLow, yHigh] = span(all.map(([, loss]) => loss));
  const x = (step) => PLOT.left + ((step - xLow) / (xHigh - xLow)) * (PLOT.right - PLOT.left);
  const y = (loss) => PLOT.bottom - ((loss - yLow) / (yHigh - yLow)) * (PLOT.bottom - PLOT.top);

  const parts = [];
  for (const tick of ticks(xLow, xHigh, 8)) {
    const at = x(tick.value).toFixed(1);
    parts.push(
      `<line x1="${at}" x2="${at}" y1="${PLOT.top}" y2="${PLOT.bottom}" stroke="currentColor" stroke-opacity="0.15"/>`,
      `<text x="${at}" y="${PLOT.bottom + 15}" text-anchor="middle">${tick.text}</text>`,
    );
  }
  for (const tick of ticks(yLow, yHigh, 6)) {
    const at = y(tick.value).toFixed(1);
    parts.push(
      `<line x1="${PLOT.left}" x2="${PLOT.right}" y1="${at}" y2="${at}" stroke="currentColor" stroke-opacity="0.15"/>`,
      `<text x="${PLOT.left - 5}" y="${at}" dy="0.35em" text-anchor="end">${tick.text}</text>`,
    );
  }
  parts.push(
    `<rect x="${PLOT.left}" y="${PLOT.top}" width="${PLOT.right - PLOT.left}" height="${PLOT.bottom - PLOT.top}" fill="none" stroke="currentColor" stroke-opacity="0.6"/>`,
    `<text x="${(PLOT.left + PLOT.right) / 2}" y="${HEIGHT - 6}" text-anchor="middle">step</text>`,
    `<text transform="translate(14 ${(PLOT.top + PLOT.bottom) / 2}) rotate(-90)" text-anchor="middle">loss</text>`,
  );
  // references first, so this run's curves are drawn over them
  for (const curve of [...curves.slice(3), ...curves.slice(0, 3)]) {
    const stroke = `fill="none" stroke="${curve.colour}" stroke-width="1.5" ${curve.style}`;
    let line = [];
    const lines = [line];
    for (const [step, loss] of curve.points) {
      if (loss === null) lines.push((line = [])); // not finite: a gap
      else line.push(`${x(step).toFixed(1)},${y(loss).toFixed(1)}`);
    }
    for (const points of lines.filter((points) => points.length)) {
      parts.push(`<polyline class="lora-magic-curve" points="${points.join(" ")}" ${stroke}/>`);
    }
    if (curve.dots) {
      for (const [step, loss] of curve.points.filter(([, loss]) => loss !== null)) {
        parts.push(`<circle cx="${x(step).toFixed(1)}" cy="${y(loss).toFixed(1)}" r="3" fill="${curve.colour}"/>`);
      }
    }
  }
  const legend = curves.map((curve, i) => {
    const at = PLOT.top + 12 + i * 15;
    const left = PLOT.right - 150;
    const dot = curve.dots ? `<circle cx="${left + 10}" cy="${at}" r="3" fill="${curve.colour}"/>` : "";
    return (
      `<line x1="${left}" x2="${left + 20}" y1="${at}" y2="${at}" stroke="${curve.colour}" stroke-width="1.5" ${curve.style}/>` +
      `${dot}<text x="${left + 26}" y="${at}" dy="0.35em">${escape(curve.label)}</text>`
    );
  });
  parts.push(
    `<rect x="${PLOT.right - 156}" y="${PLOT.top + 3}" width="152" height="${curves.length * 15 + 3}" style="fill:var(--jp-layout-color0, var(--vscode-editor-background, Canvas))" fill-opacity="0.8" stroke="currentColor" stroke-opacity="0.2"/>`,
    ...legend,
  );
  const last = train.length ? train[train.length - 1][0] : 0;
  root.innerHTML =
    `<svg viewBox="0 0 ${WIDTH} ${HEIGHT}" width="100%" style="max-width:${WIDTH}px" font-size="11" fill="currentColor" ` +
    `data-points="${train.length}" data-last-step="${last}" role="img" aria-label="loss by step">${parts.join("")}</svg>`;
}

export default {
  render({ model, el }) {
    const root = document.createElement("div");
    el.appendChild(root);
    let queued = false;
    // one draw for the curves an update changes together
    const redraw = () => {
      if (queued) return;
      queued = true;
      queueMicrotask(() => {
        queued = false;
        draw(model, root);
      });
    };
    const names = ["train", "smoothed", "evals", "references"];
    for (const name of names) model.on(`change:${name}`, redraw);
    draw(model, root);
    return () => {
      for (const name of names) model.off(`change:${name}`, redraw);
    };
  },
};
