/**
 * JupyterLab side of agentrt-jupyter: what a kernel widget cannot do.
 * One plugin per feature; they share the current kernel's agents via IAgentsModel.
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { ignoreSubshellStatus } from './kernelstatus';
import { watchKernels } from './staleviews';
import { AgentsModel, IAgentsModel } from './model';
// activate() adds the panel and the status item at once: these cannot load lazily.
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { AgentsPanel, sendCancel } from './sidebar';
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { AgentsStatus } from './statusbar';

export { IAgentsModel } from './model';

const CANCEL_ALL = 'agentrt-jupyter:cancel-all';
const OPEN_PANEL = 'agentrt-jupyter:open-panel';
const PANEL_ID = 'agentrt-jupyter-agents';
/** The JSON schema of the commands' arguments: they take none. */
const NO_ARGS = { type: 'object', properties: {} } as const;

const boltIcon = new LabIcon({
  name: 'agentrt-jupyter:bolt',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<path class="jp-icon3" fill="#616161" d="M13 2 4 14h6l-1 8 9-12h-6l1-8z"/></svg>'
});

/** The kernel status stays "Busy" while a cell runs (see kernelstatus.ts). */
const kernelStatusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agentrt-jupyter:kernel-status',
  description: "Keeps the kernel status true when JupyterLab's comms start a subshell.",
  autoStart: true,
  activate: (): void => ignoreSubshellStatus()
};

/** Views whose kernel is gone say so (see staleviews.ts). */
const staleViewsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agentrt-jupyter:stale-views',
  description: 'Marks the agentrt widget views of a notebook whose kernel has gone.',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (_: JupyterFrontEnd, tracker: INotebookTracker): void => watchKernels(tracker)
};

/** The agents of the current notebook's kernel, for the other plugins. */
const modelPlugin: JupyterFrontEndPlugin<IAgentsModel> = {
  id: 'agentrt-jupyter:model',
  description: "Follows the current notebook's kernel and talks to its agentrt runtime.",
  autoStart: true,
  requires: [INotebookTracker],
  provides: IAgentsModel,
  activate: (_: JupyterFrontEnd, tracker: INotebookTracker): IAgentsModel =>
    new AgentsModel(tracker)
};

/**
 * "⚡ N agents streaming · T tokens" in the status bar, hidden without a runtime.
 * Notebook 7 has no status bar: there the sidebar and the commands remain.
 */
const statusBarPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agentrt-jupyter:status-bar',
  description: 'Shows the streaming agents and tokens of the current kernel.',
  autoStart: true,
  requires: [IAgentsModel],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, model: IAgentsModel, statusBar: IStatusBar | null): void => {
    if (statusBar === null) {
      return;
    }
    const item = new AgentsStatus(model, () => {
      void app.commands.execute(OPEN_PANEL);
    });
    statusBar.registerStatusItem('agentrt-jupyter:status', {
      item,
      align: 'left',
      rank: 100,
      isActive: () => model.state === 'ready',
      activeStateChanged: model.changed
    });
  }
};

/** Accel+Shift+. : cancel every running turn of the current kernel's runtime. */
const cancelAllPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agentrt-jupyter:cancel-all',
  description: "Cancels every running agent turn of the current notebook's kernel.",
  autoStart: true,
  requires: [IAgentsModel],
  optional: [ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    model: IAgentsModel,
    palette: ICommandPalette | null
  ): void => {
    app.commands.addCommand(CANCEL_ALL, {
      label: 'Agents: Cancel all running turns',
      caption: "Cancel every running agent turn in the current notebook's kernel",
      describedBy: { args: NO_ARGS },
      icon: boltIcon,
      isEnabled: () => model.state === 'ready',
      execute: () => sendCancel(model, { kind: 'cancel_all' }, 'all turns')
    });
    model.changed.connect(() => app.commands.notifyCommandChanged(CANCEL_ALL));
    // JupyterLab binds Accel+Shift+. to "next tab bar" on the body: a more specific
    // selector wins in notebooks and in the Agents panel.
    for (const selector of ['.jp-Notebook', '.jp-agentrt-panel']) {
      app.commands.addKeyBinding({ command: CANCEL_ALL, keys: ['Accel Shift .'], selector });
    }
    app.contextMenu.addItem({ command: CANCEL_ALL, selector: '.jp-Notebook', rank: 100 });
    palette?.addItem({ command: CANCEL_ALL, category: 'Agents' });
  }
};

/** The "Agents" panel in the left sidebar. */
const sidebarPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agentrt-jupyter:sidebar',
  description: "Lists the current kernel's agents, each with a Cancel button.",
  autoStart: true,
  requires: [IAgentsModel],
  optional: [ILabShell, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    model: IAgentsModel,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ): void => {
    const panel = new AgentsPanel(model);
    panel.id = PANEL_ID;
    panel.title.icon = boltIcon;
    panel.title.caption = 'Agents';
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, PANEL_ID);
    app.commands.addCommand(OPEN_PANEL, {
      label: 'Agents: Show the Agents panel',
      describedBy: { args: NO_ARGS },
      execute: () => {
        if (labShell !== null && labShell.leftCollapsed === false && panel.isVisible) {
          return;
        }
        app.shell.activateById(PANEL_ID);
      }
    });
    palette?.addItem({ command: OPEN_PANEL, category: 'Agents' });
  }
};

const plugins: JupyterFrontEndPlugin<unknown>[] = [
  kernelStatusPlugin,
  staleViewsPlugin,
  modelPlugin,
  statusBarPlugin,
  cancelAllPlugin,
  sidebarPlugin
];

export default plugins;
