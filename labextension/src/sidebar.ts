import { Widget } from '@lumino/widgets';

import { sparklineSvg } from './chart';
import { Selection } from './compare';
import {
  eta,
  formatDuration,
  formatLoss,
  isActive,
  IRunView,
  progress,
  RunsModel,
  RUNS_PAGE,
  shortPath
} from './model';

export interface ISidebarActions {
  open(name: string): void;
  stop(name: string): void;
  compare(names: readonly string[]): void;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  parent?: HTMLElement
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  parent?.appendChild(node);
  return node;
}

/** One run in the list. Its elements are kept and updated in place, so clicks survive refreshes. */
class RunItem {
  readonly node: HTMLLIElement;

  constructor(name: string, actions: ISidebarActions, select: (selected: boolean) => void) {
    this.node = element('li', 'lm-RunItem');
    this.node.dataset.run = name;
    const head = element('div', 'lm-RunItem-head', this.node);
    this._select = element('input', 'lm-RunItem-select', head);
    this._select.type = 'checkbox';
    this._select.title = 'Select to compare with other runs';
    this._select.onchange = () => select(this._select.checked);
    this._name = element('button', 'lm-RunItem-name', head);
    this._name.textContent = name;
    this._name.title = `Open run ${name}: loss chart, config and probe samples`;
    this._name.onclick = () => actions.open(name);
    this._status = element('span', 'lm-Status', head);
    this._stop = element('button', 'jp-mod-styled jp-mod-warn lm-RunItem-stop', head);
    this._stop.textContent = 'Stop';
    this._stop.title = 'Stop this run at its next step (its adapter is saved)';
    this._stop.onclick = () => actions.stop(name);
    const bar = element('div', 'lm-Progress', this.node);
    this._fill = element('div', 'lm-Progress-fill', bar);
    const line = element('div', 'lm-RunItem-line', this.node);
    this._spark = element('span', 'lm-RunItem-spark', line);
    this._text = element('span', 'lm-RunItem-text', line);
    this._detail = element('div', 'lm-RunItem-detail', this.node);
    this._warning = element('div', 'lm-RunItem-warning', this.node);
  }

  update(view: IRunView, selected: boolean): void {
    const { summary } = view;
    const status = view.stopping && isActive(summary.status) ? 'stopping' : summary.status;
    this._status.textContent = status;
    this._status.className = `lm-Status lm-Status-${status}`;
    this.node.dataset.status = summary.status;
    this._stop.hidden = !isActive(summary.status);
    this._stop.disabled = view.stopping;
    this._select.hidden = summary.status === 'unreadable';
    this._select.checked = selected;

    const p = progress(view);
    this._fill.style.width = `${Math.round((p.fraction ?? 0) * 100)}%`;
    this.node.dataset.step = String(p.step);
    const steps = p.total ? `${p.step}/${p.total}` : `${p.step}`;
    const last = view.loss[view.loss.length - 1];
    this._text.textContent = `step ${steps} · loss ${formatLoss(last?.[1])}`;
    this._spark.replaceChildren(sparklineSvg(view.loss, 96, 24));

    const seconds = eta(view);
    const parts = [summary.model ?? ''];
    if (seconds !== null) {
      parts.push(`ETA ${formatDuration(seconds)}`);
    }
    if (summary.error) {
      parts.push(summary.error);
    }
    this._detail.textContent = parts.filter(Boolean).join(' · ');
    this._detail.title = this._detail.textContent;
    this._warning.hidden = !summary.warning;
    this._warning.textContent = summary.warning ? `⚠ ${summary.warning}` : '';
  }

  private _select: HTMLInputElement;
  private _name: HTMLButtonElement;
  private _status: HTMLSpanElement;
  private _stop: HTMLButtonElement;
  private _fill: HTMLDivElement;
  private _spark: HTMLSpanElement;
  private _text: HTMLSpanElement;
  private _detail: HTMLDivElement;
  private _warning: HTMLDivElement;
}

/** The left sidebar "LoRA runs": every run in the store, whichever kernel started it. */
export class RunsSidebar extends Widget {
  constructor(model: RunsModel, actions: ISidebarActions) {
    super();
    this._model = model;
    this._actions = actions;
    this.addClass('lm-RunsSidebar');
    const header = element('header', 'lm-RunsSidebar-header', this.node);
    element('h2', 'lm-RunsSidebar-title', header).textContent = 'LoRA runs';
    this._root = element('div', 'lm-RunsSidebar-root', header);
    this._compare = element('button', 'jp-mod-styled jp-mod-accept lm-RunsSidebar-compare', header);
    this._compare.title = 'Add a cell to the notebook that shows the selected runs side by side (lm.diff)';
    this._compare.onclick = () => actions.compare(this._selection.names);
    this._error = element('div', 'lm-RunsSidebar-error', this.node);
    this._empty = element('p', 'lm-RunsSidebar-empty', this.node);
    this._empty.textContent =
      'No runs yet. Start one from a notebook (lm.train(...) or %finetune), or open the ' +
      'launcher’s “New LoRA fine-tuning notebook”.';
    this._list = element('ul', 'lm-RunsSidebar-list', this.node);
    this._older = element('button', 'jp-mod-styled lm-RunsSidebar-older', this.node);
    this._older.textContent = `Show ${RUNS_PAGE} older runs`;
    this._older.onclick = () => void model.showMore();
    model.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const runs = this._model.runs;
    this._root.textContent = shortPath(this._model.root);
    this._root.title = `Run store: ${this._model.root}`;
    this._error.textContent = this._model.error ?? '';
    this._error.hidden = !this._model.error;
    this._empty.hidden = runs.length > 0 || !!this._model.error;
    this._older.hidden = !this._model.more;

    const wanted = new Set(runs.map(view => view.summary.name));
    const comparable = runs.filter(view => view.summary.status !== 'unreadable');
    this._selection.keep(new Set(comparable.map(view => view.summary.name)));
    for (const [name, item] of this._items) {
      if (!wanted.has(name)) {
        item.node.remove();
        this._items.delete(name);
      }
    }
    runs.forEach((view, index) => {
      const name = view.summary.name;
      let item = this._items.get(name);
      if (!item) {
        item = new RunItem(name, this._actions, selected => {
          this._selection.toggle(name, selected);
          this._renderCompare();
        });
        this._items.set(name, item);
      }
      item.update(view, this._selection.names.includes(name));
      if (this._list.children[index] !== item.node) {
        this._list.insertBefore(item.node, this._list.children[index] ?? null);
      }
    });
    this._renderCompare();
  }

  private _renderCompare(): void {
    const count = this._selection.names.length;
    this._compare.hidden = this._model.runs.length < 2;
    this._compare.disabled = count < 2;
    this._compare.textContent = count < 2 ? 'Select runs to compare' : `Compare ${count} runs`;
  }

  private _model: RunsModel;
  private _actions: ISidebarActions;
  private _items = new Map<string, RunItem>();
  private _selection = new Selection();
  private _compare: HTMLButtonElement;
  private _root: HTMLDivElement;
  private _error: HTMLDivElement;
  private _empty: HTMLParagraphElement;
  private _list: HTMLUListElement;
  private _older: HTMLButtonElement;
}
