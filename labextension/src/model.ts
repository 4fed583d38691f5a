/**
 * The runs as the sidebar sees them: summaries from `GET runs`, folded with each run's events
 * (read incrementally by byte offset from `GET runs/<name>/events`, a page at a time). No
 * JupyterLab imports here, so the data handling is unit-tested without a browser.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ACTIVE_STATUSES, REDONE_AT_RESUME } from './vocabulary';

export { ACTIVE_STATUSES };

/** Pages of events read per run and refresh; a long history is caught up over a few refreshes. */
export const PAGES_PER_REFRESH = 20;
/** Runs listed at first, and added by each "show older runs". */
export const RUNS_PAGE = 200;

export interface IRunSummary {
  name: string;
  status: string;
  created?: number | null;
  updated?: number | null;
  started?: number | null;
  finished?: number | null;
  model?: string | null;
  quantization?: string | null;
  step?: number | null;
  total_steps?: number | null;
  metrics?: Record<string, unknown> | null;
  error?: string | null;
  /** Set when the run diverges or its loss or gradient norm is NaN/inf: what is wrong and what to do. */
  warning?: string | null;
  adapter_path?: string | null;
}

export interface IRunEvent {
  type: string;
  time?: number;
  step?: number;
  [key: string]: unknown;
}

export interface ILogEvent extends IRunEvent {
  type: 'log';
  step: number;
  total_steps?: number;
  loss?: number;
  eta?: number | null;
  tokens_per_second?: number;
}

export interface IProbeEvent extends IRunEvent {
  type: 'probe';
  step: number;
  prompt: string;
  base: string;
  adapter: string;
}

/** [step, value] */
export type Point = [number, number];

export interface IRunView {
  summary: IRunSummary;
  /** Bytes of events.jsonl already read. */
  offset: number;
  loss: Point[];
  evalLoss: Point[];
  probes: IProbeEvent[];
  lastLog: ILogEvent | null;
  /** A stop was requested from this page and the run has not ended yet. */
  stopping: boolean;
}

/** Does an HTTP request to `<base_url>/lora-magic/<path>` and returns the parsed JSON body. */
export type Transport = (path: string, init?: RequestInit) => Promise<any>;

export function isActive(status: string | undefined | null): boolean {
  return ACTIVE_STATUSES.includes(status ?? '');
}

export function emptyView(summary: IRunSummary): IRunView {
  return { summary, offset: 0, loss: [], evalLoss: [], probes: [], lastLog: null, stopping: false };
}

/**
 * Whether an event was logged before a resume from the checkpoint of step `step` and is trained,
 * evaluated or probed again after it (lora_magic.core.events.superseded, the same rule in Python).
 */
function superseded(event: { step?: number }, kind: string, step: number): boolean {
  const at = event.step ?? 0;
  return at > step || (at === step && REDONE_AT_RESUME.includes(kind));
}

/** Adds newly read events to a run's series; a resumed run keeps one history. */
export function foldEvents(view: IRunView, events: IRunEvent[]): void {
  for (const event of events) {
    const resumedFrom = event.type === 'status' ? event.resumed_from : undefined;
    if (typeof resumedFrom === 'number') {
      view.loss = view.loss.filter(([step]) => !superseded({ step }, 'log', resumedFrom));
      view.evalLoss = view.evalLoss.filter(([step]) => !superseded({ step }, 'eval', resumedFrom));
      view.probes = view.probes.filter(probe => !superseded(probe, 'probe', resumedFrom));
      if (view.lastLog && view.lastLog.step > resumedFrom) {
        view.lastLog = null;
      }
    } else if (event.type === 'log') {
      const log = event as ILogEvent;
      if (typeof log.loss === 'number' && Number.isFinite(log.loss)) {
        view.loss.push([log.step, log.loss]);
      }
      view.lastLog = log;
    } else if (event.type === 'eval' && typeof event.eval_loss === 'number') {
      view.evalLoss.push([event.step ?? 0, event.eval_loss]);
    } else if (event.type === 'probe') {
      view.probes.push(event as IProbeEvent);
    }
  }
}

export interface IProgress {
  step: number;
  total: number;
  /** 0..1, or null when the total is not known. */
  fraction: number | null;
}

export function progress(view: IRunView): IProgress {
  const step = Math.max(view.summary.step ?? 0, view.lastLog?.step ?? 0);
  const total = view.summary.total_steps || view.lastLog?.total_steps || 0;
  return { step, total, fraction: total > 0 ? Math.min(1, step / total) : null };
}

/** Seconds left, from the engine's last estimate; null when not running or unknown. */
export function eta(view: IRunView): number | null {
  const value = view.lastLog?.eta;
  return isActive(view.summary.status) && typeof value === 'number' && value >= 0 ? value : null;
}

/** The newest probe answer of each prompt, in the order the prompts first appeared. */
export function latestProbes(view: IRunView): IProbeEvent[] {
  const byPrompt = new Map<string, IProbeEvent>();
  for (const probe of view.probes) {
    byPrompt.set(probe.prompt, probe);
  }
  return [...byPrompt.values()];
}

export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (h > 0) {
    return `${h}h ${pad(m)}m`;
  }
  if (m > 0) {
    return `${m}m ${pad(s % 60)}s`;
  }
  return `${s}s`;
}

/** A value of a run's record as text: whole numbers with thousands separators (2,442,240). */
export function formatValue(value: unknown): string {
  if (value === null || value === undefined) {
    return '–';
  }
  if (typeof value === 'number') {
    return Number.isInteger(value) ? value.toLocaleString('en-US') : String(Number(value.toPrecision(4)));
  }
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

export function formatLoss(value: number | undefined | null): string {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    return '–';
  }
  return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
}

/** The run the status bar follows: the most recently updated one that is running or paused. */
export function activeRun(views: IRunView[]): IRunView | null {
  const active = views.filter(view => isActive(view.summary.status));
  active.sort((a, b) => (b.summary.updated ?? 0) - (a.summary.updated ?? 0));
  return active[0] ?? null;
}

/** A long folder path shortened to its last two parts, e.g. "…/project/lora_runs". */
export function shortPath(path: string, max = 36): string {
  if (path.length <= max) {
    return path;
  }
  const parts = path.split('/').filter(Boolean);
  return `…/${parts.slice(-2).join('/')}`;
}

export function runPath(name: string, ...rest: string[]): string {
  return ['runs', encodeURIComponent(name), ...rest].join('/');
}

/** Milliseconds until the next refresh: quick while something trains, slow when all is still. */
export function pollDelay(views: IRunView[]): number {
  return views.some(view => isActive(view.summary.status)) ? 1000 : 5000;
}

export class RunsModel {
  constructor(transport: Transport) {
    this._transport = transport;
  }

  /** Runs, newest first, as the server lists them. */
  get runs(): IRunView[] {
    return this._names.map(name => this._views.get(name)!);
  }

  get root(): string {
    return this._root;
  }

  /** Whether the store holds older runs than those listed. */
  get more(): boolean {
    return this._more;
  }

  /** Lists the next page of older runs too, from now on. */
  async showMore(): Promise<void> {
    this._wanted += RUNS_PAGE;
    await this.refresh();
  }

  /** The message of the last failed refresh, or null. */
  get error(): string | null {
    return this._error;
  }

  get changed(): ISignal<RunsModel, void> {
    return this._changed;
  }

  get(name: string): IRunView | undefined {
    return this._views.get(name);
  }

  /** Lists the runs, then reads new events of those that are new, active or changed. */
  async refresh(): Promise<void> {
    try {
      const listing = await this._list();
      const seen = new Set<string>();
      for (const summary of listing.runs) {
        seen.add(summary.name);
        let known = this._views.get(summary.name);
        if (known && known.summary.created !== summary.created) {
          known = undefined; // removed and made anew under the same name
        }
        const view = known ?? emptyView(summary);
        const stale =
          !known ||
          isActive(summary.status) ||
          known.summary.updated !== summary.updated ||
          this._behind.has(summary.name);
        view.summary = summary;
        if (!isActive(summary.status)) {
          view.stopping = false;
        }
        this._views.set(summary.name, view);
        if (stale) {
          await this._readEvents(view);
        }
      }
      for (const name of [...this._views.keys()]) {
        if (!seen.has(name)) {
          this._views.delete(name);
        }
      }
      this._names = listing.runs.map(summary => summary.name);
      this._root = listing.root;
      this._more = listing.more;
      this._error = null;
    } catch (error) {
      this._error = error instanceof Error ? error.message : String(error);
    }
    this._changed.emit();
  }

  /** Asks the run to stop at its next step (the server writes a stop request into its folder). */
  async stop(name: string): Promise<void> {
    const view = this._views.get(name);
    if (view) {
      view.stopping = true;
      this._changed.emit();
    }
    try {
      await this._transport(runPath(name, 'stop'), { method: 'POST' });
    } catch (error) {
      if (view) {
        view.stopping = false;
      }
      this._error = error instanceof Error ? error.message : String(error);
      this._changed.emit();
      throw error;
    }
  }

  /** One run's full record (config included), for the run's detail view. */
  async record(name: string): Promise<Record<string, any>> {
    return this._transport(runPath(name));
  }

  /** Refreshes now and then on its own until disposed. */
  start(): void {
    const tick = async () => {
      await this.refresh();
      if (!this._disposed) {
        this._timer = setTimeout(tick, pollDelay(this.runs));
      }
    };
    void tick();
  }

  dispose(): void {
    this._disposed = true;
    clearTimeout(this._timer);
    Signal.clearData(this);
  }

  /** The newest runs, as many as are wanted, a page of the server's listing (at most 1000) at a time. */
  private async _list(): Promise<{ root: string; runs: IRunSummary[]; more: boolean }> {
    const runs: IRunSummary[] = [];
    let root = '';
    let after: string | null = null;
    do {
      const from = after === null ? '' : `&after=${encodeURIComponent(after)}`;
      const page = await this._transport(`runs?limit=${this._wanted - runs.length}${from}`);
      root = page.root ?? '';
      runs.push(...(page.runs as IRunSummary[]));
      after = page.next ?? null;
    } while (after !== null && runs.length < this._wanted);
    return { root, runs, more: after !== null };
  }

  private async _readEvents(view: IRunView): Promise<void> {
    const name = view.summary.name;
    this._behind.delete(name);
    for (let page = 0; page < PAGES_PER_REFRESH; page++) {
      const reply = await this._transport(`${runPath(name, 'events')}?offset=${view.offset}`);
      foldEvents(view, reply.events);
      view.offset = reply.offset;
      if (!reply.more) {
        return;
      }
    }
    this._behind.add(name); // more pages wait: read on at the next refresh
  }

  private _transport: Transport;
  private _views = new Map<string, IRunView>();
  private _names: string[] = [];
  private _root = '';
  private _wanted = RUNS_PAGE;
  private _more = false;
  private _error: string | null = null;
  private _behind = new Set<string>();
  private _disposed = false;
  private _timer: ReturnType<typeof setTimeout> | undefined;
  private _changed = new Signal<RunsModel, void>(this);
}
