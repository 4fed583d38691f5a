/** Comparing runs: the sidebar's selection and the notebook cell that shows the runs side by side. */

/** The runs ticked in the sidebar, in the order they were ticked (the diff's column order). */
export class Selection {
  get names(): readonly string[] {
    return this._names;
  }

  toggle(name: string, selected: boolean): void {
    this._names = this._names.filter(n => n !== name);
    if (selected) {
      this._names.push(name);
    }
  }

  /** Forget runs that are no longer in the store. */
  keep(present: ReadonlySet<string>): void {
    this._names = this._names.filter(n => present.has(n));
  }

  private _names: string[] = [];
}

/** The code of the cell that compares `names`: `lm.diff` works whether or not the magics are loaded. */
export function diffCell(names: readonly string[]): string {
  return `import lora_magic as lm\n\nlm.diff(${names.map(n => JSON.stringify(n)).join(', ')})`;
}
