import { diffCell, Selection } from '../src/compare';

describe('Selection', () => {
  it('keeps the runs in the order they were ticked, once each', () => {
    const selection = new Selection();
    selection.toggle('b', true);
    selection.toggle('a', true);
    selection.toggle('b', true);
    expect(selection.names).toEqual(['a', 'b']);
    selection.toggle('a', false);
    selection.toggle('c', true);
    expect(selection.names).toEqual(['b', 'c']);
  });

  it('forgets runs that left the store', () => {
    const selection = new Selection();
    ['a', 'b', 'c'].forEach(name => selection.toggle(name, true));
    selection.keep(new Set(['a', 'c', 'd']));
    expect(selection.names).toEqual(['a', 'c']);
  });
});

describe('diffCell', () => {
  it('compares the runs with lm.diff, in the order given', () => {
    expect(diffCell(['r8-run', 'r_16'])).toBe('import lora_magic as lm\n\nlm.diff("r8-run", "r_16")');
  });
});
