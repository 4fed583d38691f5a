import { emptyView, foldEvents, formatValue, IRunEvent, PAGES_PER_REFRESH, RunsModel, Transport } from '../src/model';
import { ACTIVE_STATUSES, STATUSES } from '../src/vocabulary';

const log = (step: number, loss: number): IRunEvent => ({ type: 'log', step, total_steps: 12, loss });

/** A fake server at the HTTP boundary whose events come in pages of `limit`, as the real one's. */
function pagedServer(events: IRunEvent[], limit: number): { transport: Transport; requests: string[] } {
  const requests: string[] = [];
  const lines = events.map(e => JSON.stringify(e) + '\n');
  const transport: Transport = async path => {
    requests.push(path);
    if (path.startsWith('runs?')) {
      return { root: '/store', runs: [{ name: 'long', status: 'completed', updated: 1 }] };
    }
    const offset = Number(path.match(/offset=(\d+)/)![1]);
    const starts = lines.map((_, i) => lines.slice(0, i).join('').length);
    const first = starts.indexOf(offset);
    const page = lines.slice(first, first + limit);
    return {
      events: page.map(line => JSON.parse(line)),
      offset: offset + page.join('').length,
      more: page.length === limit
    };
  };
  return { transport, requests };
}

describe('a resumed run', () => {
  it('shows one curve: what was logged after the checkpoint is superseded', () => {
    const view = emptyView({ name: 'r', status: 'running' });
    const before = [1, 2, 3, 4, 5, 6, 7, 8].map(step => log(step, 10 - step));
    foldEvents(view, [
      { type: 'status', status: 'running', step: 0 },
      ...before,
      { type: 'eval', step: 4, eval_loss: 6 },
      { type: 'eval', step: 8, eval_loss: 3 },
      { type: 'probe', step: 8, prompt: 'p', base: 'b', adapter: 'old' },
      { type: 'status', status: 'running', step: 4, resumed_from: 4 },
      { type: 'eval', step: 4, eval_loss: 6 },
      ...[5, 6, 7, 8, 9].map(step => log(step, 20 - step))
    ]);
    expect(view.loss.map(([step]) => step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(view.loss[4]).toEqual([5, 15]); // the step as trained again
    expect(view.evalLoss).toEqual([[4, 6]]);
    expect(view.probes).toEqual([]);
    expect(view.lastLog!.step).toBe(9);
  });
});

describe('paged events', () => {
  it('reads page after page until the server has no more', async () => {
    const events = Array.from({ length: 25 }, (_, i) => log(i + 1, 1));
    const server = pagedServer(events, 10);
    const model = new RunsModel(server.transport);
    await model.refresh();
    expect(model.get('long')!.loss).toHaveLength(25);
    expect(server.requests.filter(r => r.includes('events'))).toHaveLength(3);
  });

  it('catches up a very long history over several refreshes', async () => {
    const events = Array.from({ length: PAGES_PER_REFRESH * 2 + 5 }, (_, i) => log(i + 1, 1));
    const server = pagedServer(events, 1);
    const model = new RunsModel(server.transport);
    await model.refresh();
    expect(model.get('long')!.loss).toHaveLength(PAGES_PER_REFRESH);
    await model.refresh();
    await model.refresh();
    expect(model.get('long')!.loss.map(([step]) => step)).toEqual(events.map(e => e.step));
  });
});

describe('values on the run page', () => {
  it('give whole numbers thousands separators', () => {
    expect(formatValue(2442240)).toBe('2,442,240');
    expect(formatValue(8)).toBe('8');
    expect(formatValue(0.000123456)).toBe('0.0001235');
    expect(formatValue(null)).toBe('–');
    expect(formatValue(['q_proj', 'v_proj'])).toBe('["q_proj","v_proj"]');
  });
});

describe('the status vocabulary', () => {
  it('is the engine’s, generated from lora_magic/events.py', () => {
    expect(ACTIVE_STATUSES).toEqual(['running', 'paused']);
    expect(STATUSES).toContain('unreadable');
    expect(STATUSES).toContain('interrupted');
  });
});
