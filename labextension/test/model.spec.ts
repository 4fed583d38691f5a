import { bounds, downsample, linePath, ticks } from '../src/chart';
import {
  activeRun,
  emptyView,
  eta,
  foldEvents,
  formatDuration,
  formatLoss,
  IRunEvent,
  IRunSummary,
  latestProbes,
  pollDelay,
  progress,
  RunsModel,
  RUNS_PAGE,
  shortPath,
  Transport
} from '../src/model';

/** A fake server at the HTTP boundary: a run store held in memory, events as JSON lines. */
class FakeServer {
  runs = new Map<string, { summary: IRunSummary; lines: string[] }>();
  requests: string[] = [];
  stops: string[] = [];

  add(summary: IRunSummary, events: IRunEvent[] = []): void {
    this.runs.set(summary.name, { summary, lines: events.map(e => JSON.stringify(e) + '\n') });
  }

  append(name: string, ...events: IRunEvent[]): void {
    const run = this.runs.get(name)!;
    run.lines.push(...events.map(e => JSON.stringify(e) + '\n'));
  }

  transport: Transport = async (path, init) => {
    this.requests.push(`${init?.method ?? 'GET'} ${path}`);
    const listing = path.match(/^runs\?limit=(\d+)(?:&after=([^&]+))?$/);
    if (listing) {
      // newest first, as the server pages them: up to `limit` runs after the run named `after`
      const names = [...this.runs.keys()];
      const start = listing[2] ? names.indexOf(decodeURIComponent(listing[2])) + 1 : 0;
      const shown = names.slice(start, start + Math.min(Number(listing[1]), 1000));
      const more = start + shown.length < names.length;
      return {
        root: '/store',
        runs: shown.map(name => ({ ...this.runs.get(name)!.summary })),
        next: more ? shown[shown.length - 1] : null
      };
    }
    const match = path.match(/^runs\/([^/?]+)(?:\/(events|stop))?(?:\?offset=(\d+))?$/);
    const run = match && this.runs.get(decodeURIComponent(match[1]));
    if (!match || !run) {
      throw new Error(`404 ${path}`);
    }
    if (match[2] === 'stop') {
      this.stops.push(run.summary.name);
      return { name: run.summary.name, stop_requested: true };
    }
    if (match[2] === 'events') {
      const text = run.lines.join('');
      const offset = Number(match[3]);
      const rest = text.slice(offset);
      return { events: rest.split('\n').filter(Boolean).map(line => JSON.parse(line)), offset: text.length };
    }
    return { ...run.summary, config: { r: 8 } };
  };
}

const log = (step: number, loss: number, extra: Partial<IRunEvent> = {}): IRunEvent => ({
  type: 'log',
  time: step,
  step,
  total_steps: 100,
  loss,
  eta: 100 - step,
  ...extra
});

describe('foldEvents', () => {
  it('collects training loss, evaluation loss, probes and the last log', () => {
    const view = emptyView({ name: 'a', status: 'running' });
    foldEvents(view, [
      { type: 'status', status: 'running' },
      log(1, 2.5),
      log(2, 2.0),
      { type: 'eval', step: 2, eval_loss: 2.2 },
      { type: 'probe', step: 2, prompt: 'p', base: 'b', adapter: 'x' },
      { type: 'checkpoint', step: 2, path: '/c' }
    ]);
    expect(view.loss).toEqual([
      [1, 2.5],
      [2, 2.0]
    ]);
    expect(view.evalLoss).toEqual([[2, 2.2]]);
    expect(view.probes).toHaveLength(1);
    expect(view.lastLog?.step).toBe(2);
  });

  it('skips log lines without a finite loss but keeps their progress', () => {
    const view = emptyView({ name: 'a', status: 'running' });
    foldEvents(view, [log(1, 2.5), { type: 'log', step: 3, total_steps: 100, loss: null } as any]);
    expect(view.loss).toEqual([[1, 2.5]]);
    expect(view.lastLog?.step).toBe(3);
  });
});

describe('progress and eta', () => {
  it('takes the furthest step known and the total from run.json or the log', () => {
    const view = emptyView({ name: 'a', status: 'running', step: 5, total_steps: 0 });
    expect(progress(view)).toEqual({ step: 5, total: 0, fraction: null });
    foldEvents(view, [log(10, 1)]);
    expect(progress(view)).toEqual({ step: 10, total: 100, fraction: 0.1 });
    view.summary.total_steps = 8;
    expect(progress(view).fraction).toBe(1);
  });

  it('gives an ETA only while the run is active', () => {
    const view = emptyView({ name: 'a', status: 'running' });
    expect(eta(view)).toBeNull();
    foldEvents(view, [log(40, 1)]);
    expect(eta(view)).toBe(60);
    view.summary.status = 'completed';
    expect(eta(view)).toBeNull();
  });
});

describe('formatting', () => {
  it('formats durations', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(42.4)).toBe('42s');
    expect(formatDuration(65)).toBe('1m 05s');
    expect(formatDuration(3 * 3600 + 120)).toBe('3h 02m');
  });

  it('shortens long store paths to their last two folders', () => {
    expect(shortPath('/home/me/lora_runs')).toBe('/home/me/lora_runs');
    expect(shortPath('/tmp/pytest-of-root/pytest-13/some_long_test_name/lab-root/lora_runs')).toBe(
      '…/lab-root/lora_runs'
    );
  });

  it('formats losses', () => {
    expect(formatLoss(1.23456)).toBe('1.23');
    expect(formatLoss(0.000123456)).toBe('0.000123');
    expect(formatLoss(1234.5)).toBe('1235');
    expect(formatLoss(undefined)).toBe('–');
    expect(formatLoss(NaN)).toBe('–');
  });
});

describe('run selection', () => {
  it('follows the most recently updated active run', () => {
    const views = [
      emptyView({ name: 'done', status: 'completed', updated: 30 }),
      emptyView({ name: 'old', status: 'running', updated: 10 }),
      emptyView({ name: 'new', status: 'paused', updated: 20 })
    ];
    expect(activeRun(views)?.summary.name).toBe('new');
    expect(activeRun(views.slice(0, 1))).toBeNull();
    expect(pollDelay(views)).toBeLessThan(pollDelay(views.slice(0, 1)));
  });

  it('keeps the newest answer of each probe prompt', () => {
    const view = emptyView({ name: 'a', status: 'running' });
    foldEvents(view, [
      { type: 'probe', step: 1, prompt: 'p', base: 'b', adapter: 'old' },
      { type: 'probe', step: 1, prompt: 'q', base: 'b', adapter: 'q1' },
      { type: 'probe', step: 2, prompt: 'p', base: 'b', adapter: 'new' }
    ]);
    expect(latestProbes(view).map(p => [p.prompt, p.adapter])).toEqual([
      ['p', 'new'],
      ['q', 'q1']
    ]);
  });
});

describe('RunsModel', () => {
  it('reads each run’s events incrementally by offset', async () => {
    const server = new FakeServer();
    server.add({ name: 'r1', status: 'running', updated: 1, total_steps: 100 }, [log(1, 3)]);
    const model = new RunsModel(server.transport);
    let changes = 0;
    model.changed.connect(() => changes++);

    await model.refresh();
    expect(model.root).toBe('/store');
    expect(model.runs.map(v => v.summary.name)).toEqual(['r1']);
    expect(model.get('r1')!.loss).toEqual([[1, 3]]);
    const firstOffset = model.get('r1')!.offset;
    expect(firstOffset).toBeGreaterThan(0);

    server.append('r1', log(2, 2.5), log(3, 2));
    await model.refresh();
    expect(model.get('r1')!.loss.map(p => p[0])).toEqual([1, 2, 3]);
    expect(server.requests).toContain(`GET runs/r1/events?offset=${firstOffset}`);
    expect(changes).toBe(2);
  });

  it('does not re-read a finished run that has not changed', async () => {
    const server = new FakeServer();
    server.add({ name: 'done', status: 'completed', updated: 5 }, [log(1, 3)]);
    const model = new RunsModel(server.transport);
    await model.refresh();
    await model.refresh();
    expect(server.requests.filter(r => r.includes('events'))).toHaveLength(1);

    server.runs.get('done')!.summary.updated = 6;
    await model.refresh();
    expect(server.requests.filter(r => r.includes('events'))).toHaveLength(2);
    expect(model.get('done')!.loss).toHaveLength(1);
  });

  it('drops runs that left the store and starts over for a run made anew', async () => {
    const server = new FakeServer();
    server.add({ name: 'a', status: 'completed', created: 1, updated: 1 }, [log(1, 3), log(2, 2)]);
    server.add({ name: 'b', status: 'completed', created: 1, updated: 1 });
    const model = new RunsModel(server.transport);
    await model.refresh();
    server.runs.delete('b');
    server.add({ name: 'a', status: 'running', created: 2, updated: 2 }, [log(1, 9)]);
    await model.refresh();
    expect(model.runs.map(v => v.summary.name)).toEqual(['a']);
    expect(model.get('b')).toBeUndefined();
    expect(model.get('a')!.loss).toEqual([[1, 9]]);
  });

  it('keeps the runs and reports the error when the server fails', async () => {
    const server = new FakeServer();
    server.add({ name: 'a', status: 'completed', updated: 1 });
    let fail = false;
    const model = new RunsModel(async (path, init) => {
      if (fail) {
        throw new Error('Forbidden');
      }
      return server.transport(path, init);
    });
    await model.refresh();
    fail = true;
    await model.refresh();
    expect(model.error).toBe('Forbidden');
    expect(model.runs).toHaveLength(1);
    fail = false;
    await model.refresh();
    expect(model.error).toBeNull();
  });

  it('posts a stop request and shows the run as stopping until it ends', async () => {
    const server = new FakeServer();
    server.add({ name: 'my run', status: 'running', updated: 1 });
    const model = new RunsModel(server.transport);
    await model.refresh();
    await model.stop('my run');
    expect(server.requests).toContain('POST runs/my%20run/stop');
    expect(server.stops).toEqual(['my run']);
    expect(model.get('my run')!.stopping).toBe(true);

    server.runs.get('my run')!.summary.status = 'stopped';
    await model.refresh();
    expect(model.get('my run')!.stopping).toBe(false);
  });

  it('lists the newest runs a page at a time and older ones when asked', async () => {
    const server = new FakeServer();
    for (let n = 1099; n >= 0; n--) {
      server.add({ name: `run-${n}`, status: 'completed', updated: n });
    }
    const model = new RunsModel(server.transport);
    await model.refresh();
    expect(model.runs).toHaveLength(RUNS_PAGE);

    expect(model.runs[0].summary.name).toBe('run-1099');
    expect(model.more).toBe(true);

    await model.showMore();
    expect(model.runs).toHaveLength(2 * RUNS_PAGE);
    expect(server.requests).toContain('GET runs?limit=400');
    for (let click = 0; click < 4; click++) {
      await model.showMore(); // past the server's 1000 a reply: a second page after the 1000th run
    }
    expect(model.runs.map(v => v.summary.name)).toEqual([...server.runs.keys()]);
    expect(model.more).toBe(false);
    expect(server.requests).toContain('GET runs?limit=200&after=run-100');
  });

  it('clears the stopping mark when the stop request fails', async () => {
    const model = new RunsModel(async path => {
      if (path.startsWith('runs?')) {
        return { root: '', runs: [{ name: 'a', status: 'running' }] };
      }
      if (path.endsWith('/stop')) {
        throw new Error('run a is completed, not running');
      }
      return { events: [], offset: 0 };
    });
    await model.refresh();
    await expect(model.stop('a')).rejects.toThrow('not running');
    expect(model.get('a')!.stopping).toBe(false);
    expect(model.error).toContain('not running');
  });
});

describe('chart geometry', () => {
  it('downsamples to bucket means and keeps the last point', () => {
    const points = Array.from({ length: 1000 }, (_, i) => [i, i % 2] as [number, number]);
    const out = downsample(points, 100);
    expect(out).toHaveLength(100);
    expect(out[0]).toEqual([4.5, 0.5]);
    expect(out[99]).toEqual([999, 1]);
    expect(downsample(points.slice(0, 5), 100)).toHaveLength(5);
  });

  it('maps points into the box, higher loss higher up', () => {
    const b = bounds([
      [
        [0, 1],
        [10, 3]
      ]
    ])!;
    const box = { x: 0, y: 0, width: 100, height: 50 };
    expect(linePath([[0, 1], [10, 3]], b, box)).toBe('M0 50 L100 0');
  });

  it('gives a flat or single-point series a range', () => {
    expect(bounds([[[5, 2]]])).toEqual({ minX: 5, maxX: 6, minY: 1.5, maxY: 2.5 });
    expect(bounds([[], []])).toBeNull();
  });

  it('chooses round ticks', () => {
    expect(ticks(0, 1000, 5)).toEqual([0, 200, 400, 600, 800, 1000]);
    expect(ticks(1.73, 2.61, 4)).toEqual([1.8, 2, 2.2, 2.4, 2.6]);
  });
});
