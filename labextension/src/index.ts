import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, showErrorMessage } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { IStatusBar } from '@jupyterlab/statusbar';

import { requestAPI } from './api';
import { diffCell } from './compare';
import { RunDetail } from './detail';
import { loraIcon } from './icon';
import { activeRun, RunsModel } from './model';
import { RunsSidebar } from './sidebar';
import { RunStatusItem } from './statusbar';

const COMMANDS = {
  newNotebook: 'lora-magic:new-notebook',
  openRun: 'lora-magic:open-run',
  stopRun: 'lora-magic:stop-run',
  compareRuns: 'lora-magic:compare-runs',
  showRuns: 'lora-magic:show-runs'
};

/** A free name for the new notebook in `folder`: lora-finetune.ipynb, lora-finetune-1.ipynb, … */
async function freeNotebookPath(app: JupyterFrontEnd, folder: string): Promise<string> {
  for (let i = 0; ; i++) {
    const file = `lora-finetune${i ? `-${i}` : ''}.ipynb`;
    const path = folder ? `${folder}/${file}` : file;
    try {
      await app.serviceManager.contents.get(path, { content: false });
    } catch {
      return path;
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'lora_magic:plugin',
  description: 'LoRA runs sidebar, status bar item and a notebook template in the launcher.',
  autoStart: true,
  optional: [ILauncher, ICommandPalette, IStatusBar, ILayoutRestorer, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null,
    browser: IDefaultFileBrowser | null
  ) => {
    const model = new RunsModel(requestAPI);
    const details = new Map<string, MainAreaWidget<RunDetail>>();

    const sidebar = new RunsSidebar(model, {
      open: name => void app.commands.execute(COMMANDS.openRun, { name }),
      stop: name => void app.commands.execute(COMMANDS.stopRun, { name }),
      compare: names => void app.commands.execute(COMMANDS.compareRuns, { names: [...names] })
    });
    sidebar.id = 'lora-magic-runs';
    sidebar.title.icon = loraIcon;
    sidebar.title.caption = 'LoRA runs';
    app.shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, 'lora-magic-runs');

    app.commands.addCommand(COMMANDS.showRuns, {
      label: 'Show LoRA runs',
      icon: loraIcon,
      execute: () => app.shell.activateById(sidebar.id)
    });

    app.commands.addCommand(COMMANDS.openRun, {
      label: args => `Open LoRA run ${args.name ?? ''}`,
      execute: args => {
        const name = String(args.name);
        let widget = details.get(name);
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new RunDetail(model, name) });
          widget.id = `lora-magic-run-view-${name}`;
          widget.title.label = `LoRA: ${name}`;
          widget.title.icon = loraIcon;
          details.set(name, widget);
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
      }
    });

    app.commands.addCommand(COMMANDS.stopRun, {
      label: args => `Stop LoRA run ${args.name ?? ''}`,
      execute: async args => {
        try {
          await model.stop(String(args.name));
        } catch (error) {
          await showErrorMessage('Could not stop the run', String(error));
        }
        await model.refresh();
      }
    });

    app.commands.addCommand(COMMANDS.compareRuns, {
      label: 'Compare LoRA runs in the notebook',
      execute: async args => {
        // The notebook commands act on the notebook used last, and bring it to the front.
        const notebooks = Array.from(app.shell.widgets('main')).filter(w => w.hasClass('jp-NotebookPanel'));
        if (!notebooks.length) {
          await showErrorMessage(
            'No notebook to compare the runs in',
            'Open a notebook: a cell that shows the selected runs side by side is added to it and run.'
          );
          return;
        }
        await app.commands.execute('notebook:insert-cell-below');
        await app.commands.execute('notebook:replace-selection', { text: diffCell(args.names as string[]) });
        await app.commands.execute('notebook:run-cell');
      }
    });

    app.commands.addCommand(COMMANDS.newNotebook, {
      label: 'New LoRA fine-tuning notebook',
      caption: 'A notebook with the steps of a LoRA fine-tuning run, ready to edit and run',
      icon: loraIcon,
      execute: async () => {
        const template = await requestAPI('notebook-template');
        const path = await freeNotebookPath(app, browser?.model.path ?? '');
        await app.serviceManager.contents.save(path, { type: 'notebook', format: 'json', content: template });
        return app.commands.execute('docmanager:open', { path, factory: 'Notebook' });
      }
    });

    launcher?.add({ command: COMMANDS.newNotebook, category: 'Notebook', rank: 50 });
    palette?.addItem({ command: COMMANDS.newNotebook, category: 'LoRA' });
    palette?.addItem({ command: COMMANDS.showRuns, category: 'LoRA' });

    if (statusBar) {
      const item = new RunStatusItem(model, () => app.shell.activateById(sidebar.id));
      statusBar.registerStatusItem('lora_magic:run-status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => activeRun(model.runs) !== null,
        activeStateChanged: model.changed
      });
    }

    model.start();
  }
};

export default plugin;
