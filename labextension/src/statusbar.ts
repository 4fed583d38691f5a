import { Widget } from '@lumino/widgets';

import { activeRun, eta, formatDuration, progress, RunsModel } from './model';

/** "LoRA <run> 120/2000 · ETA 1m 05s" for the run that trains now; hidden when none does. */
export class RunStatusItem extends Widget {
  constructor(model: RunsModel, onClick: () => void) {
    super();
    this._model = model;
    this.addClass('lm-RunStatus');
    this.node.title = 'LoRA fine-tuning in progress: click to show the runs';
    this.node.onclick = onClick;
    model.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const view = activeRun(this._model.runs);
    if (!view) {
      this.node.textContent = '';
      return;
    }
    const p = progress(view);
    const seconds = eta(view);
    const text = [`LoRA ${view.summary.name} ${p.step}/${p.total || '?'}`];
    if (view.summary.status === 'paused') {
      text.push('paused');
    } else if (seconds !== null) {
      text.push(`ETA ${formatDuration(seconds)}`);
    }
    this.node.textContent = text.join(' · ');
  }

  private _model: RunsModel;
}
