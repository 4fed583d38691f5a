/**
 * Loss charts as plain SVG: a sparkline for the sidebar and a chart with axes for a run's view.
 */
import { Point } from './model';

const SVG_NS = 'http://www.w3.org/2000/svg';

export interface IBounds {
  minX: number;
  maxX: number;
  minY: number;
  maxY: number;
}

export interface IBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** At most `max` points: the means of equal runs of consecutive points (the last point kept). */
export function downsample(points: Point[], max: number): Point[] {
  if (points.length <= max) {
    return points;
  }
  const out: Point[] = [];
  const size = points.length / max;
  for (let i = 0; i < max; i++) {
    const chunk = points.slice(Math.floor(i * size), Math.floor((i + 1) * size));
    const x = chunk.reduce((sum, p) => sum + p[0], 0) / chunk.length;
    const y = chunk.reduce((sum, p) => sum + p[1], 0) / chunk.length;
    out.push([x, y]);
  }
  out[out.length - 1] = points[points.length - 1];
  return out;
}

export function bounds(series: Point[][]): IBounds | null {
  const all = series.flat();
  if (all.length === 0) {
    return null;
  }
  const xs = all.map(p => p[0]);
  const ys = all.map(p => p[1]);
  const b = {
    minX: Math.min(...xs),
    maxX: Math.max(...xs),
    minY: Math.min(...ys),
    maxY: Math.max(...ys)
  };
  // A flat series still needs a range to draw in.
  if (b.maxX === b.minX) {
    b.maxX = b.minX + 1;
  }
  if (b.maxY === b.minY) {
    b.minY -= 0.5;
    b.maxY += 0.5;
  }
  return b;
}

export function toBox(point: Point, b: IBounds, box: IBox): [number, number] {
  const x = box.x + ((point[0] - b.minX) / (b.maxX - b.minX)) * box.width;
  const y = box.y + box.height - ((point[1] - b.minY) / (b.maxY - b.minY)) * box.height;
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

/** The `d` attribute of a polyline through the points, or '' for none. */
export function linePath(points: Point[], b: IBounds, box: IBox): string {
  return points
    .map((point, i) => {
      const [x, y] = toBox(point, b, box);
      return `${i === 0 ? 'M' : 'L'}${x} ${y}`;
    })
    .join(' ');
}

/** About `count` round numbers spanning [min, max] (steps of 1, 2 or 5 times a power of ten). */
export function ticks(min: number, max: number, count = 5): number[] {
  if (!(max > min)) {
    return [min];
  }
  const raw = (max - min) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const error = raw / power;
  const factor = error >= Math.sqrt(50) ? 10 : error >= Math.sqrt(10) ? 5 : error >= Math.sqrt(2) ? 2 : 1;
  const step = factor * power;
  const out: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number>
): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  return element;
}

export function sparklineSvg(points: Point[], width = 120, height = 28): SVGSVGElement {
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'lm-Spark' });
  const b = bounds([points]);
  if (b && points.length > 1) {
    const box = { x: 1, y: 2, width: width - 2, height: height - 4 };
    root.appendChild(svg('path', { d: linePath(downsample(points, width), b, box), class: 'lm-Spark-line' }));
  }
  return root;
}

/** Training loss as a line, evaluation loss as dots, with step and loss axes. */
export function lossChartSvg(loss: Point[], evalLoss: Point[], width = 640, height = 260): SVGSVGElement {
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'lm-Chart' });
  const b = bounds([loss, evalLoss]);
  if (!b) {
    const empty = svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'lm-Chart-label' });
    empty.textContent = 'No loss logged yet';
    root.appendChild(empty);
    return root;
  }
  const box = { x: 52, y: 12, width: width - 70, height: height - 44 };
  for (const value of ticks(b.minY, b.maxY, 4)) {
    const [, y] = toBox([b.minX, value], b, box);
    root.appendChild(svg('line', { x1: box.x, x2: box.x + box.width, y1: y, y2: y, class: 'lm-Chart-grid' }));
    const label = svg('text', { x: box.x - 6, y: y + 4, 'text-anchor': 'end', class: 'lm-Chart-label' });
    label.textContent = String(value);
    root.appendChild(label);
  }
  for (const value of ticks(b.minX, b.maxX, 6)) {
    const [x] = toBox([value, b.minY], b, box);
    const label = svg('text', { x, y: box.y + box.height + 16, 'text-anchor': 'middle', class: 'lm-Chart-label' });
    label.textContent = String(value);
    root.appendChild(label);
  }
  const axisTitle = svg('text', { x: box.x + box.width / 2, y: height - 4, 'text-anchor': 'middle', class: 'lm-Chart-label' });
  axisTitle.textContent = 'step';
  root.appendChild(axisTitle);
  root.appendChild(
    svg('path', { d: linePath(downsample(loss, box.width), b, box), class: 'lm-Chart-loss' })
  );
  for (const point of evalLoss) {
    const [cx, cy] = toBox(point, b, box);
    root.appendChild(svg('circle', { cx, cy, r: 3.5, class: 'lm-Chart-eval' }));
  }
  return root;
}
