/**
 * The kernel status JupyterLab shows must stay true while a cell runs.
 *
 * JupyterLab sets the kernel status from every IOPub `status` message except those whose
 * request type is in the page config's `untracked_message_types` (jupyter_server's list,
 * meant to hold every message sent on a channel other than shell). The list lacks the
 * kernel-subshell requests of the control channel. JupyterLab sends one
 * (`create_subshell_request`) when a kernel first opens a comm of a new target, e.g. the
 * first widget an awaiting `%%agent` cell displays: its busy/idle pair then turns the
 * status to "Idle" while the cell still runs (the toolbar says busy).
 */
import { PageConfig } from '@jupyterlab/coreutils';

/** The control-channel requests of kernel subshells (Jupyter messaging 5.5). */
export const SUBSHELL_REQUESTS = [
  'create_subshell_request',
  'delete_subshell_request',
  'list_subshell_request'
] as const;

const OPTION = 'untracked_message_types';

/** Add the subshell requests to the status-ignored types (idempotent). */
export function ignoreSubshellStatus(): void {
  let untracked: string[] = [];
  try {
    const parsed: unknown = JSON.parse(PageConfig.getOption(OPTION) || '[]');
    if (Array.isArray(parsed)) {
      untracked = parsed.filter((item): item is string => typeof item === 'string');
    }
  } catch {
    untracked = [];
  }
  const missing = SUBSHELL_REQUESTS.filter(type => !untracked.includes(type));
  if (missing.length > 0) {
    PageConfig.setOption(OPTION, JSON.stringify([...untracked, ...missing]));
  }
}
