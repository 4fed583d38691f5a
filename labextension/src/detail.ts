import { Widget } from '@lumino/widgets';

import { lossChartSvg } from './chart';
import { eta, formatDuration, formatLoss, formatValue, latestProbes, progress, RunsModel } from './model';

function section(parent: HTMLElement, title: string): HTMLElement {
  const node = document.createElement('section');
  node.className = 'lm-RunDetail-section';
  const heading = document.createElement('h3');
  heading.textContent = title;
  node.appendChild(heading);
  const body = document.createElement('div');
  node.appendChild(body);
  parent.appendChild(node);
  return body;
}

function table(rows: [string, string][], className: string): HTMLTableElement {
  const node = document.createElement('table');
  node.className = className;
  for (const [key, value] of rows) {
    const row = node.insertRow();
    const head = document.createElement('th');
    head.textContent = key;
    row.appendChild(head);
    row.insertCell().textContent = value;
  }
  return node;
}

/** One run in the main area: progress, the full loss chart, probe samples and the config. */
export class RunDetail extends Widget {
  constructor(model: RunsModel, name: string) {
    super();
    this._model = model;
    this._name = name;
    this.addClass('lm-RunDetail');
    this.id = `lora-magic-run-${name}`;
    this.title.label = `LoRA: ${name}`;
    this.title.closable = true;
    const header = document.createElement('h2');
    header.textContent = name;
    this.node.appendChild(header);
    this._summary = document.createElement('p');
    this._summary.className = 'lm-RunDetail-summary';
    this.node.appendChild(this._summary);
    this._chart = section(this.node, 'Loss (line: training, dots: evaluation)');
    this._probes = section(this.node, 'Probe samples (base vs adapter)');
    this._config = section(this.node, 'Configuration');
    model.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const view = this._model.get(this._name);
    if (!view) {
      this._summary.textContent = 'This run is no longer in the run store.';
      return;
    }
    const { summary } = view;
    const p = progress(view);
    const seconds = eta(view);
    const parts = [
      summary.status,
      `step ${p.step}${p.total ? `/${p.total}` : ''}`,
      `loss ${formatLoss(view.loss[view.loss.length - 1]?.[1])}`
    ];
    if (seconds !== null) {
      parts.push(`ETA ${formatDuration(seconds)}`);
    }
    if (summary.error) {
      parts.push(summary.error);
    }
    if (summary.warning) {
      parts.push(`⚠ ${summary.warning}`);
    }
    this._summary.textContent = parts.join(' · ');
    this.node.dataset.status = summary.status;

    if (view.loss.length !== this._drawn[0] || view.evalLoss.length !== this._drawn[1]) {
      this._drawn = [view.loss.length, view.evalLoss.length];
      this._chart.replaceChildren(lossChartSvg(view.loss, view.evalLoss));
    }
    if (view.probes.length !== this._probeCount) {
      this._probeCount = view.probes.length;
      this._renderProbes(latestProbes(view));
    }
    // The record (config, final metrics) changes rarely: fetch it when the run's file changed.
    if (summary.updated !== this._recordVersion) {
      this._recordVersion = summary.updated;
      void this._model.record(this._name).then(
        record => this._renderRecord(record),
        () => undefined
      );
    }
  }

  private _renderProbes(probes: ReturnType<typeof latestProbes>): void {
    if (probes.length === 0) {
      this._probes.textContent = 'No probes in this run (set probes=[...] to watch answers change).';
      return;
    }
    const node = document.createElement('table');
    node.className = 'lm-RunDetail-probes';
    const head = node.createTHead().insertRow();
    for (const title of ['Prompt', 'Base model', 'Adapter']) {
      const cell = document.createElement('th');
      cell.textContent = title;
      head.appendChild(cell);
    }
    const body = node.createTBody();
    for (const probe of probes) {
      const row = body.insertRow();
      row.insertCell().textContent = `${probe.prompt}\n(step ${probe.step})`;
      for (const answer of [probe.base, probe.adapter]) {
        const cell = row.insertCell();
        cell.textContent = answer.trim() ? answer : '(empty answer)';
        cell.classList.toggle('lm-mod-empty', !answer.trim());
      }
    }
    this._probes.replaceChildren(node);
  }

  private _renderRecord(record: Record<string, any>): void {
    const config = Object.entries(record.config ?? {}).map(
      ([key, value]) => [key, formatValue(value)] as [string, string]
    );
    const metrics = Object.entries(record.metrics ?? {}).map(
      ([key, value]) => [key, formatValue(value)] as [string, string]
    );
    const facts: [string, string][] = [
      ['model', formatValue(record.model)],
      ['adapter', formatValue(record.adapter_path)],
      ['trainable parameters', formatValue(record.trainable_params)],
      ...metrics
    ];
    this._config.replaceChildren(table(facts, 'lm-RunDetail-facts'), table(config, 'lm-RunDetail-config'));
  }

  private _model: RunsModel;
  private _name: string;
  private _summary: HTMLParagraphElement;
  private _chart: HTMLElement;
  private _probes: HTMLElement;
  private _config: HTMLElement;
  private _drawn: [number, number] = [-1, -1];
  private _probeCount = -1;
  private _recordVersion: number | null | undefined = -1;
}
