/**
 * A widget view whose kernel is gone is no longer live: say so.
 *
 * A widget view keeps its last state after its kernel shut down, died or restarted (the
 * frontend keeps the models until the page reloads), so a RuntimeMonitor went on saying
 * "1 running, 2.3 s" with buttons that looked active. When a notebook's kernel goes,
 * every agentrt view in it (`.agentrt-live`) is marked `.agentrt-stale`: dimmed, its
 * buttons inert, under a line that says why (style/index.css). Views made by the next
 * kernel are not marked.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel } from '@jupyterlab/services';

export const LIVE_CLASS = 'agentrt-live';
export const STALE_CLASS = 'agentrt-stale';

/** Kernel states after which the views it made no longer follow anything. */
const GONE: ReadonlySet<Kernel.Status> = new Set<Kernel.Status>([
  'dead',
  'restarting',
  'autorestarting',
  'terminating'
]);

/** Mark the live views of `panel` stale. */
export function markStale(panel: NotebookPanel): void {
  for (const view of panel.node.querySelectorAll(`.${LIVE_CLASS}`)) {
    view.classList.add(STALE_CLASS);
  }
}

/** Follow every notebook's kernel; mark its views stale when the kernel goes. */
export function watchKernels(tracker: INotebookTracker): void {
  tracker.widgetAdded.connect((_, panel) => watchPanel(panel));
  tracker.forEach(watchPanel);
}

function watchPanel(panel: NotebookPanel): void {
  const context = panel.sessionContext;
  const gone = () => {
    if (!panel.isDisposed) {
      markStale(panel);
    }
  };
  context.statusChanged.connect((_, status) => {
    if (GONE.has(status)) {
      gone();
    }
  }, panel);
  context.connectionStatusChanged.connect((_, status) => {
    if (status === 'disconnected') {
      gone();
    }
  }, panel);
  context.kernelChanged.connect((_: ISessionContext, change) => {
    if (change.oldValue !== null) {
      gone();
    }
  }, panel);
}
